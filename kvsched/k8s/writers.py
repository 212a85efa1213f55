"""The controller's writes to the API server, one function each, plain dicts in, the updated object out.

- ModelServing status through the status subresource (JSON merge patch: slots and conditions are replaced whole);
- Deployment template/strategy (strategic merge patch: containers and env merge by name);
- ModelServing create (with the ownerReference the decision built), spec patch, delete;
- GPU holder pods (kvsched.controller.holders): create, delete (with the uid as a precondition);
- kvsched's PodDisruptionBudgets (kvsched.controller.pdb): create, merge patch, delete (with the uid as a precondition);
- Eviction (policy/v1, so PodDisruptionBudgets hold: 429 means "not now");
- Events (core/v1, what `kubectl describe` shows), reported by `kvsched-controller`.
Called by: kvsched.runtime.loop through `ApiWriter`.
"""

from __future__ import annotations

import uuid
from typing import Any, Callable, Mapping

from kubernetes import client

from kvsched.api.names import GROUP, PLURAL, VERSION
from kvsched.api.objects import ObjectKey
from kvsched.api.records import Event, EvictionRefused, HolderChange, OwnedChange, PdbChange, utc_now
from kvsched.k8s.rest import MERGE_PATCH, STRATEGIC_MERGE_PATCH, ApiError, call

COMPONENT = "kvsched-controller"


def _ms_path(key: ObjectKey) -> str:
    return f"/apis/{GROUP}/{VERSION}/namespaces/{key.namespace}/{PLURAL}/{key.name}"


class ApiWriter:
    """Carries out a Decision's writes with one ApiClient. Raises ApiError on failures the caller retries.

    `fence`: seconds this process may still write (kvsched.k8s.leader.LeaseElector.write_time_left; None: leader
    election off). Every call first checks it, refusing with ApiError(0, "NotLeading") when it has run out, and
    is bounded by it (connect and read), so no write leaves this process after the renew deadline."""

    def __init__(self, api: client.ApiClient, identity: str = COMPONENT,
                 fence: Callable[[], float] | None = None) -> None:
        self.api = api
        self.identity = identity
        self.fence = fence

    def _call(self, method: str, path: str, body: Any = None, **kwargs: Any) -> dict[str, Any]:
        """`rest.call` within the fence (see the class docstring). Raises ApiError."""
        if self.fence is not None:
            left = self.fence()
            if left <= 0:
                raise ApiError(0, "NotLeading", f"{method} {path} not sent: past the leader's renew deadline")
            kwargs["timeout_s"] = min(left, kwargs.get("timeout_s") or left)
        return call(self.api, method, path, body, **kwargs)

    def write_status(self, key: ObjectKey, status: Mapping[str, Any]) -> dict[str, Any]:
        return self._call("PATCH", _ms_path(key) + "/status", {"status": dict(status)}, content_type=MERGE_PATCH)

    def patch_deployment(self, key: ObjectKey, patch: Mapping[str, Any]) -> dict[str, Any]:
        return self._call("PATCH", f"/apis/apps/v1/namespaces/{key.namespace}/deployments/{key.name}",
                    dict(patch), content_type=STRATEGIC_MERGE_PATCH)

    def owned_change(self, change: OwnedChange) -> dict[str, Any]:
        """Create, patch or delete an owned ModelServing; a create that finds it exists, or a delete that finds
        it gone, is not an error (another writer got there first)."""
        try:
            if change.action == "create":
                path = f"/apis/{GROUP}/{VERSION}/namespaces/{change.key.namespace}/{PLURAL}"
                return self._call("POST", path, dict(change.body))
            if change.action == "patch":
                return self._call("PATCH", _ms_path(change.key), dict(change.body), content_type=MERGE_PATCH)
            self._call("DELETE", _ms_path(change.key))
            return {}
        except ApiError as e:
            if (change.action == "create" and e.status == 409) or (change.action == "delete" and e.status == 404):
                return {}
            raise

    def annotate_pod(self, pod: ObjectKey, annotations: Mapping[str, str]) -> dict[str, Any]:
        """Merge `annotations` into a pod's metadata (a pod already gone is fine: nothing to retry)."""
        try:
            return self._call("PATCH", f"/api/v1/namespaces/{pod.namespace}/pods/{pod.name}",
                        {"metadata": {"annotations": dict(annotations)}}, content_type=MERGE_PATCH)
        except ApiError as e:
            if e.status == 404:
                return {}
            raise

    def holder_change(self, change: HolderChange) -> dict[str, Any]:
        """Create or delete a GPU holder pod. A delete that finds it gone is done. A create that finds one of that
        name (409) is done unless that pod is Succeeded/Failed (the kubelet refused it, e.g. its GPU went to
        another pod first; the watches never show such pods): it is deleted, and the next round creates it anew."""
        path = f"/api/v1/namespaces/{change.key.namespace}/pods"
        try:
            if change.action == "create":
                return self._call("POST", path, dict(change.body or {}))
            body = {"apiVersion": "v1", "kind": "DeleteOptions", "preconditions": {"uid": change.uid}} \
                if change.uid else None
            self._call("DELETE", f"{path}/{change.key.name}", body)
            return {}
        except ApiError as e:
            if change.action == "delete" and e.status in (404, 409):
                return {}  # gone, or another pod of that name now (409: the uid precondition failed)
            if change.action != "create" or e.status != 409:
                raise
        existing = self._call("GET", f"{path}/{change.key.name}")
        if (existing.get("status") or {}).get("phase") in ("Succeeded", "Failed"):
            uid = (existing.get("metadata") or {}).get("uid")
            self._call("DELETE", f"{path}/{change.key.name}",
                 {"apiVersion": "v1", "kind": "DeleteOptions", "preconditions": {"uid": uid}})
            raise ApiError(409, "AlreadyExists", f"holder pod {change.key} had finished; deleted, to be recreated")
        return existing

    def pdb_change(self, change: PdbChange) -> dict[str, Any]:
        """Create, patch or delete one of kvsched's PodDisruptionBudgets. A delete that finds it gone, or another
        object of that name now (409: the uid precondition failed), is done; a create that finds one of that name
        (409) is done too: the watch shows whose it is, and the next decision patches it or leaves it alone."""
        path = f"/apis/policy/v1/namespaces/{change.key.namespace}/poddisruptionbudgets"
        try:
            if change.action == "create":
                return self._call("POST", path, dict(change.body or {}))
            if change.action == "patch":
                return self._call("PATCH", f"{path}/{change.key.name}", dict(change.body or {}),
                                  content_type=MERGE_PATCH)
            body = {"apiVersion": "v1", "kind": "DeleteOptions", "preconditions": {"uid": change.uid}} \
                if change.uid else None
            self._call("DELETE", f"{path}/{change.key.name}", body)
            return {}
        except ApiError as e:
            if (change.action == "delete" and e.status in (404, 409)) or \
                    (change.action == "create" and e.status == 409):
                return {}
            raise

    def evict(self, pod: ObjectKey) -> None:
        """Evict a pod through policy/v1. A pod already gone is fine; a refusal raises EvictionRefused."""
        body = {"apiVersion": "policy/v1", "kind": "Eviction",
                "metadata": {"name": pod.name, "namespace": pod.namespace}}
        try:
            self._call("POST", f"/api/v1/namespaces/{pod.namespace}/pods/{pod.name}/eviction", body)
        except ApiError as e:
            if e.status == 404:
                return
            if e.status == 429:
                raise EvictionRefused("EvictionBlocked", e.message) from None
            raise EvictionRefused("EvictionFailed", f"HTTP {e.status} {e.reason}: {e.message}") from None

    def event(self, event: Event) -> None:
        """Create a core/v1 Event about `event.target` (Nodes' events go to the `default` namespace)."""
        namespace = event.target.namespace or "default"
        now = utc_now()
        involved = {"kind": event.target.kind, "apiVersion": event.target.api_version,
                    "namespace": event.target.namespace, "name": event.target.name, "uid": event.target.uid}
        body: dict[str, Any] = {
            "apiVersion": "v1", "kind": "Event",
            "metadata": {"name": f"{event.target.name}.{uuid.uuid4().hex[:16]}", "namespace": namespace},
            "involvedObject": {k: v for k, v in involved.items() if v},
            "reason": event.reason, "message": event.message[:1024], "type": event.type,
            "source": {"component": COMPONENT}, "reportingComponent": COMPONENT,
            "reportingInstance": self.identity, "firstTimestamp": now, "lastTimestamp": now, "count": 1,
        }
        self._call("POST", f"/api/v1/namespaces/{namespace}/events", body)
