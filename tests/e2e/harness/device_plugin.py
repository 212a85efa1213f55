"""A stand-in for the NVIDIA device plugin on KWOK nodes: it gives each pod that requests `nvidia.com/gpu` the
devices it asked for, among those of its node no other live pod was given, and, for kvsched's GPU holder pods,
writes what `kvsched gpu-holder` writes once the device plugin has handed the container its GPU.

What the real stack does, and what is simulated here (tests/e2e/README.md says the same):
- kube-scheduler counts `nvidia.com/gpu` requests against the node's allocatable (real, unchanged), and the
  kubelet asks the device plugin to Allocate devices for the pod's containers when it starts them; the plugin
  hands out devices no running container holds, and the same ones again when a container restarts. Here: once a
  pod is bound to a node, `allocate` picks the lowest free device indices of that node and records them on the
  pod as ALLOCATION_ANNOTATION (`0,1`), once (a pod keeps its devices until it is deleted or finishes).
- a holder pod's container reads its GPU's UUID through NVML and annotates its own pod. Here: the stand-in
  writes `kvsched.io/gpu-uuid` = `fake_uuid(node, device)`, a stable UUID per node and device, in the same patch,
  as the holder pod's ServiceAccount (impersonated), the account `kvsched gpu-holder` writes it with, so that the
  chart's admission policy sees the request it would see; as the admin when that account may not patch pods (a
  test's holder pod without the chart's Role for it).
- Devices are freed when the pod is deleted or reaches Succeeded/Failed (the kubelet stops its containers).
The allocation annotation is e2e-only: tests compare it with the UUIDs kvsched's bind writes on managed pods.
Called by: harness/cluster.py (`ControlPlane.start` runs one for the session), tests/e2e/test_gpu_holders.py.
"""
from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from kubernetes import client, watch
from kubernetes.client.exceptions import ApiException

from kvsched.api.names import GPU_RESOURCE, GPU_UUID_ANNOTATION, HOLDER_LABEL
from kvsched.api.readers import read_pod

ALLOCATION_ANNOTATION = "e2e.kvsched.io/allocated-gpus"  # device indices the stand-in gave the pod, "0,1"
_UUID_NAMESPACE = uuid.UUID("6a3c1f0e-5b7d-4e21-9c2a-0d4e8f1b7a63")

log = logging.getLogger(__name__)


def fake_uuid(node: str, device: int) -> str:
    """The UUID the stand-in reports for `device` of `node`: `GPU-` and a UUID stable per (node, device)."""
    return f"GPU-{uuid.uuid5(_UUID_NAMESPACE, f'{node}/{device}')}"


def parse_devices(text: str | None) -> tuple[int, ...]:
    """Device indices from ALLOCATION_ANNOTATION ("" or None: none)."""
    if not text:
        return ()
    return tuple(int(part) for part in text.split(",") if part.strip().isdigit())


@dataclass(frozen=True)
class GpuPod:
    """A bound pod as the stand-in sees it."""

    uid: str
    namespace: str
    name: str
    node: str
    request: int
    devices: tuple[int, ...]  # already allocated (from its annotation)
    holder: bool
    live: bool                # not Succeeded/Failed
    service_account: str = "default"


def gpu_pod(obj: Mapping[str, Any]) -> GpuPod | None:
    """The pod in API JSON shape as a GpuPod, or None when it is unbound or requests no GPU."""
    pod = read_pod(obj)
    if pod.node is None or pod.gpu_request <= 0:
        return None
    account = (obj.get("spec") or {}).get("serviceAccountName") or "default"
    return GpuPod(pod.uid, pod.namespace, pod.name, pod.node, pod.gpu_request,
                  parse_devices(pod.annotations.get(ALLOCATION_ANNOTATION)), pod.labels.get(HOLDER_LABEL) == "true",
                  not pod.terminal, str(account))


def allocate(pod: GpuPod, others: Iterable[GpuPod], node_gpus: int) -> tuple[int, ...] | None:
    """The lowest `pod.request` device indices of its node that no other live pod holds, or None when fewer are
    free (the kubelet would refuse to start the pod: UnexpectedAdmissionError). O(pods + node_gpus)."""
    taken = {d for p in others if p.live and p.uid != pod.uid and p.node == pod.node for d in p.devices}
    free = [d for d in range(node_gpus) if d not in taken]
    if len(free) < pod.request:
        return None
    return tuple(free[:pod.request])


class DevicePluginStandIn:
    """Watches every pod and allocates as described in the module docstring; `start()`, then `stop()`."""

    def __init__(self, api: client.ApiClient) -> None:
        self.core = client.CoreV1Api(api)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="device-plugin-standin", daemon=True)
        self._pods: dict[str, GpuPod] = {}
        self._as: dict[str, client.CoreV1Api] = {}  # username -> a client impersonating it
        self.allocations = 0  # pods given devices so far (for tests and logs)

    def start(self) -> DevicePluginStandIn:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5.0)
        for api in self._as.values():
            api.api_client.close()

    def _client_as(self, user: str) -> client.CoreV1Api:
        if user not in self._as:
            self._as[user] = client.CoreV1Api(client.ApiClient(
                self.core.api_client.configuration, header_name="Impersonate-User", header_value=user))
        return self._as[user]

    def _annotate(self, pod: GpuPod, annotations: dict[str, str]) -> None:
        """Patch `annotations` onto the pod: a holder's as its ServiceAccount (the admin's when RBAC refuses it)."""
        body = {"metadata": {"uid": pod.uid, "annotations": annotations}}
        if pod.holder:
            user = f"system:serviceaccount:{pod.namespace}:{pod.service_account}"
            try:
                self._client_as(user).patch_namespaced_pod(pod.name, pod.namespace, body)
                return
            except ApiException as e:
                if e.status != 403 or "cannot patch resource" not in str(e.body):
                    raise
        self.core.patch_namespaced_pod(pod.name, pod.namespace, body)

    def _node_gpus(self, node: str) -> int:
        status = self.core.read_node(node).status
        value = (status.allocatable or {}).get(GPU_RESOURCE) or (status.capacity or {}).get(GPU_RESOURCE) or "0"
        return int(str(value))

    def _handle(self, event_type: str, obj: Mapping[str, Any]) -> None:
        pod = gpu_pod(obj)
        uid = str((obj.get("metadata") or {}).get("uid", ""))
        if event_type == "DELETED" or pod is None or not pod.live:
            self._pods.pop(uid, None)
            return
        self._pods[uid] = pod
        if pod.devices:
            return
        devices = allocate(pod, self._pods.values(), self._node_gpus(pod.node))
        if devices is None:
            log.warning("no free GPU on %s for pod %s/%s (%d wanted)", pod.node, pod.namespace, pod.name,
                        pod.request)
            return
        annotations = {ALLOCATION_ANNOTATION: ",".join(map(str, devices))}
        if pod.holder:
            annotations[GPU_UUID_ANNOTATION] = fake_uuid(pod.node, devices[0])
        try:
            self._annotate(pod, annotations)
        except ApiException as e:
            log.warning("annotating pod %s/%s failed: %s", pod.namespace, pod.name, e.reason)
            return
        self._pods[uid] = GpuPod(pod.uid, pod.namespace, pod.name, pod.node, pod.request, devices, pod.holder,
                                 pod.live, pod.service_account)
        self.allocations += 1

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                listed = self.core.api_client.sanitize_for_serialization(self.core.list_pod_for_all_namespaces())
                self._pods = {}
                for obj in listed.get("items") or []:
                    self._handle("ADDED", obj)
                version = (listed.get("metadata") or {}).get("resourceVersion")
                stream = watch.Watch().stream(self.core.list_pod_for_all_namespaces, resource_version=version,
                                              timeout_seconds=30, deserialize=False)
                for event in stream:
                    if self._stop.is_set():
                        return
                    obj = event.get("raw_object") or event.get("object") or {}
                    if event.get("type") == "ERROR":  # 410 Gone: list again
                        break
                    if event.get("type") in ("ADDED", "MODIFIED", "DELETED"):
                        self._handle(str(event["type"]), obj)
            except Exception as e:  # a watch that broke (410, the apiserver restarting): list again
                if not self._stop.is_set():
                    log.info("device plugin stand-in: watch ended (%s); listing again", e)
                    self._stop.wait(0.5)
