"""kvsched.k8s.binding.PodBinder against a fake CoreV1Api: the annotate-then-bind order, the undo of a failed
Binding, and what an unanswered Binding means (issue 16: it was treated as failed, so a pod that ran on a GPU lost
its annotations and the extender its reservation)."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import pytest
from kubernetes.client.exceptions import ApiException

from kvsched.api.records import BindOutcomeUnknown
from kvsched.k8s.binding import BindError, PodBinder

NOTES = {"kvsched.io/gpu": "1", "kvsched.io/gpu-memory-fraction": "0.400"}


def api_error(status: int, reason: str = "") -> ApiException:
    e = ApiException(status=status, reason=reason or "Error")
    e.body = json.dumps({"reason": reason, "message": f"status {status}"})
    return e


@dataclass
class Raw:
    data: bytes = b"{}"


@dataclass
class FakeCore:
    """What the apiserver does: `binding` is what the Binding call does ("ok", or an exception to raise after
    making the binding when `made`), `read` what reading the pod back does ("bound", "unbound", or an exception)."""

    binding: object = "ok"
    made: bool = False
    read: object = "bound"
    calls: list[tuple[str, Any]] = field(default_factory=list)

    def patch_namespaced_pod(self, name: str, namespace: str, body: Any, **kw: Any) -> Raw:
        self.calls.append(("patch", body["metadata"]["annotations"]))
        return Raw()

    def create_namespaced_binding(self, namespace: str, body: Any, **kw: Any) -> Raw:
        self.calls.append(("binding", body.target.name))
        if isinstance(self.binding, BaseException):
            raise self.binding
        return Raw()

    def read_namespaced_pod(self, name: str, namespace: str, **kw: Any) -> Raw:
        self.calls.append(("read", name))
        if isinstance(self.read, BaseException):
            raise self.read
        return Raw(json.dumps({"spec": {"nodeName": "n1" if self.read == "bound" else None}}).encode())


def binder(core: FakeCore) -> PodBinder:
    b = PodBinder.__new__(PodBinder)
    b.core = core  # type: ignore[assignment]
    b.timeout_s = (1.0, 1.0)
    return b


def rolled_back(core: FakeCore) -> bool:
    return ("patch", dict.fromkeys(NOTES)) in core.calls


@pytest.mark.parametrize("binding, read, outcome", [
    pytest.param("ok", "bound", "bound", id="answered: bound, no read"),
    pytest.param(TimeoutError("read timed out"), "bound", "bound", id="no reply, pod reads bound: bound"),
    pytest.param(TimeoutError("read timed out"), "unbound", BindError, id="no reply, pod reads unbound: failed"),
    pytest.param(TimeoutError("read timed out"), ConnectionError("refused"), BindOutcomeUnknown,
                 id="no reply, pod unreadable: unknown"),
    pytest.param(api_error(504, "Timeout"), "bound", "bound", id="504 but made: bound"),
    pytest.param(api_error(500, "InternalError"), ConnectionError("refused"), BindOutcomeUnknown,
                 id="500, pod unreadable: unknown"),
    pytest.param(api_error(500, "InternalError"), "unbound", BindError, id="500, pod reads unbound: failed"),
    pytest.param(api_error(409, "Conflict"), "bound", "bound", id="409, already bound there: bound"),
    pytest.param(api_error(409, "Conflict"), "unbound", BindError, id="409 elsewhere: failed"),
    pytest.param(api_error(403, "Forbidden"), "bound", BindError, id="403: failed, no read"),
    pytest.param(TimeoutError("read timed out"), api_error(404, "NotFound"), BindError,
                 id="no reply, pod gone: failed"),
])
def test_a_binding_is_rolled_back_only_when_it_surely_failed(binding: object, read: object,
                                                             outcome: object) -> None:
    core = FakeCore(binding=binding, read=read)
    b = binder(core)
    if outcome == "bound":
        b.bind("ns", "p", "uid-p", "n1", dict(NOTES))
        assert not rolled_back(core)
    else:
        with pytest.raises(outcome) as info:  # type: ignore[call-overload]
            b.bind("ns", "p", "uid-p", "n1", dict(NOTES))
        assert "ns/p" in str(info.value) and "n1" in str(info.value)
        # Unknown: the pod may run on that GPU, so its annotations stay; a sure failure removes them.
        assert rolled_back(core) == (outcome is BindError)
    reads = [c for c in core.calls if c[0] == "read"]
    answered = binding == "ok" or (isinstance(binding, ApiException) and binding.status == 403)
    assert (reads == []) == answered
