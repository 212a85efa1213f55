"""Bind a pod to a node the way kvsched's extender must: annotate, then create the Binding, undo on failure.

`PodBinder.bind(namespace, name, uid, node, annotations)`:
1. when `annotations` is given, merge-patch them onto the pod, with the pod's uid in the patch as a precondition
   (a pod deleted and recreated under the same name is a different pod and the patch fails);
2. create the `pods/binding` subresource (the Binding carries the uid too);
3. when step 2 fails, patch the annotations away again (best effort, logged), and raise BindError.
A Binding refused with 409 because the pod is already on `node` (a retried bind whose first try succeeded) is a
success. When step 2's outcome is unknown (no reply: a timeout or a dropped connection; or a 5xx, which the
apiserver also answers for a write it may have made), the pod is read back: bound to `node` is a success, not
bound is a failure as above, and when the read fails too the outcome stays unknown: nothing is rolled back (the
pod may run on that GPU) and BindOutcomeUnknown is raised, so the extender keeps its reservation until the watch
says what happened (kvsched.api.records). Raises BindError with a sentence for the scheduler's event. Called by: kvsched.extender.app.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from kvsched.api.records import BindOutcomeUnknown

log = logging.getLogger(__name__)


class BindError(RuntimeError):
    """A bind step failed; str() is fit for the pod's FailedScheduling event."""


def _api_message(e: ApiException) -> str:
    try:
        body = json.loads(e.body or "")
        return f"{e.status} {body.get('reason', '')}: {body.get('message', '')}".strip()
    except (ValueError, AttributeError):
        return f"{e.status} {e.reason}"


def _drain(raw: Any) -> None:
    """Read a raw response to its end: urllib3 returns the connection to the pool only then (an unread one
    costs a new TLS handshake on the next call)."""
    raw.data  # noqa: B018 (reading is the point)


class PodBinder:
    """Writes through CoreV1Api; `timeout_s` is the (connect, read) timeout of each call."""

    def __init__(self, api: client.ApiClient, timeout_s: tuple[float, float] = (5.0, 10.0)) -> None:
        self.core = client.CoreV1Api(api)
        self.timeout_s = timeout_s

    def bind(self, namespace: str, name: str, uid: str, node: str, annotations: dict[str, str] | None) -> None:
        pod = f"{namespace}/{name}"
        if annotations:
            patch: dict[str, Any] = {"metadata": {"annotations": annotations}}
            if uid:
                patch["metadata"]["uid"] = uid
            try:
                _drain(self.core.patch_namespaced_pod(name, namespace, patch, _request_timeout=self.timeout_s,
                                                      _preload_content=False))
            except ApiException as e:
                raise BindError(f"could not annotate pod {pod}: {_api_message(e)}") from None
            except Exception as e:  # connection errors: the scheduler retries the pod
                raise BindError(f"could not annotate pod {pod}: {type(e).__name__}: {e}") from None
        try:
            self._create_binding(namespace, name, uid, node)
        except BindError:
            if annotations:
                self._remove_annotations(namespace, name, uid, list(annotations))
            raise

    def _create_binding(self, namespace: str, name: str, uid: str, node: str) -> None:
        body = client.V1Binding(
            metadata=client.V1ObjectMeta(name=name, namespace=namespace, uid=uid or None),
            target=client.V1ObjectReference(api_version="v1", kind="Node", name=node),
        )
        try:
            # The generated client cannot deserialize the Status the apiserver answers; read it raw.
            _drain(self.core.create_namespaced_binding(namespace, body, _request_timeout=self.timeout_s,
                                                       _preload_content=False))
        except ApiException as e:
            if e.status in (409,) or e.status >= 500:
                bound = self._bound_to(namespace, name, node)
                if bound:
                    return
                if bound is None and e.status >= 500:
                    raise BindOutcomeUnknown(f"binding pod {namespace}/{name} to {node}: {_api_message(e)}, and the "
                                             "pod could not be read back; kept as bound until the watch says") \
                        from None
            raise BindError(f"could not bind pod {namespace}/{name} to {node}: {_api_message(e)}") from None
        except Exception as e:  # no reply: the Binding may have been made
            bound = self._bound_to(namespace, name, node)
            if bound:
                log.info("pod %s/%s: the Binding to %s got no reply (%s) but was made", namespace, name, node,
                         type(e).__name__)
                return
            if bound is None:
                raise BindOutcomeUnknown(f"binding pod {namespace}/{name} to {node}: {type(e).__name__}: {e}, and "
                                         "the pod could not be read back; kept as bound until the watch says") \
                    from None
            raise BindError(f"could not bind pod {namespace}/{name} to {node}: {type(e).__name__}: {e}") from None

    def _bound_to(self, namespace: str, name: str, node: str) -> bool | None:
        """Whether the pod is bound to `node` now, read from the apiserver; None when it cannot be read (unknown).
        A pod that is gone (404) is not bound."""
        try:
            raw: Any = self.core.read_namespaced_pod(name, namespace, _request_timeout=self.timeout_s,
                                                     _preload_content=False)
            return bool(json.loads(raw.data).get("spec", {}).get("nodeName") == node)
        except ApiException as e:
            return False if e.status == 404 else None
        except Exception:
            return None

    def _remove_annotations(self, namespace: str, name: str, uid: str, keys: list[str]) -> None:
        patch: dict[str, Any] = {"metadata": {"annotations": dict.fromkeys(keys)}}
        if uid:
            patch["metadata"]["uid"] = uid
        try:
            _drain(self.core.patch_namespaced_pod(name, namespace, patch, _request_timeout=self.timeout_s,
                                                  _preload_content=False))
        except Exception as e:  # the pod may be gone; a stale annotation on an unbound pod holds nothing
            log.warning("pod %s/%s: could not remove annotations %s after a failed bind: %s", namespace, name,
                        keys, e)
