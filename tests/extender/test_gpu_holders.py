"""The extender with GPU holders on: a planned slot is usable only once its GPU's holder pod (kvsched's namespace,
label `kvsched.io/gpu-holder`) has reported a UUID, and bind writes that UUID as the pod's device."""
from __future__ import annotations

from typing import Any

from fastapi.testclient import TestClient

from kvsched.api.names import (
    GPU_ANNOTATION,
    GPU_UUID_ANNOTATION,
    HOLDER_GPU_ANNOTATION,
    HOLDER_LABEL,
    HOLDER_NODE_ANNOTATION,
    MEMORY_FRACTION_ANNOTATION,
    VISIBLE_DEVICES_ANNOTATION,
)
from kvsched.extender.app import create_app
from kvsched.extender.cache import Cache
from kvsched.metrics import Metrics
from kvsched.settings import ExtenderSettings

from .world import FakeBinder, args, binding, model, node, pod

Obj = dict[str, Any]
HOLDERS_NS = "kvsched-system"


def holder(node_name: str, gpu: int, uuid: str | None, *, namespace: str = HOLDERS_NS, bound: bool = True,
           terminating: bool = False, name: str | None = None) -> Obj:
    obj = pod(name or f"holder-{node_name}-{gpu}", node_name=node_name if bound else "", namespace=namespace,
              terminating=terminating)
    obj["metadata"]["labels"][HOLDER_LABEL] = "true"
    notes = obj["metadata"]["annotations"]
    notes.update({HOLDER_NODE_ANNOTATION: node_name, HOLDER_GPU_ANNOTATION: str(gpu)})
    if uuid is not None:
        notes[GPU_UUID_ANNOTATION] = uuid
    obj["spec"]["containers"][0]["resources"] = {"requests": {"nvidia.com/gpu": "1"}}
    return obj


def cache_with(holders: list[Obj]) -> Cache:
    cache = Cache(gpu_holders=True, holder_namespace=HOLDERS_NS)
    cache.on_node("ADDED", node("n1", gpus=2))
    cache.on_model("ADDED", model("llama", "16Gi", [("n1", 0), ("n1", 1)]))
    for h in holders:
        cache.on_pod("ADDED", h)
    cache.sync_checks = [lambda: True]
    return cache


def test_slots_wait_for_a_reported_uuid() -> None:
    p = pod("llama-0", "llama")
    cases = [
        ([], False),
        ([holder("n1", 0, None)], False),                               # created, not allocated yet
        ([holder("n1", 0, "GPU-a", bound=False)], False),               # pending: reports nothing yet
        ([holder("n1", 0, "GPU-a", terminating=True)], False),          # going away
        ([holder("n1", 0, "GPU-a", namespace="elsewhere")], False),     # not kvsched's namespace
        ([holder("n1", 1, "GPU-b")], True),
    ]
    for holders, passes in cases:
        cache = cache_with(holders)
        cache.on_pod("ADDED", p)
        decision = cache.filter(cache.bind_target("ml", "llama-0", "uid-llama-0").ref, ["n1"])  # type: ignore[union-attr]
        assert (decision.passed == ["n1"]) == passes, (holders, decision)
        if not passes:
            assert "no GPU holder pod that reported its UUID" in decision.failed["n1"]


def test_bind_writes_the_holders_uuid_and_waits_for_it() -> None:
    p = pod("llama-0", "llama")
    cache = cache_with([holder("n1", 1, "GPU-1111")])
    cache.on_pod("ADDED", p)
    binder = FakeBinder()
    client = TestClient(create_app(ExtenderSettings(), cache, binder, Metrics()))
    assert client.post("/filter", json=args(p, names=["n1"])).json()["NodeNames"] == ["n1"]
    assert client.post("/bind", json=binding(p, "n1")).json() == {"Error": ""}
    assert binder.calls == [("ml", "llama-0", "uid-llama-0", "n1", {
        GPU_ANNOTATION: "1", VISIBLE_DEVICES_ANNOTATION: "GPU-1111", MEMORY_FRACTION_ANNOTATION: "0.500"})]
    # A second pod of the model: GPU 0 has no holder yet, so nothing is free until it reports.
    q = pod("llama-1", "llama")
    cache.on_pod("ADDED", q)
    cache.on_pod("MODIFIED", pod("llama-0", "llama", "n1", 1))
    assert client.post("/bind", json=binding(q, "n1")).json()["Error"] != ""
    cache.on_pod("ADDED", holder("n1", 0, "GPU-0000"))
    assert client.post("/bind", json=binding(q, "n1")).json() == {"Error": ""}
    assert binder.calls[-1][4][VISIBLE_DEVICES_ANNOTATION] == "GPU-0000"


def test_a_deleted_holder_takes_its_uuid_along() -> None:
    h = holder("n1", 0, "GPU-0000")
    cache = cache_with([h])
    assert cache.device_of("n1", 0) == "GPU-0000"
    cache.on_pod("DELETED", h)
    assert cache.device_of("n1", 0) is None
    assert Cache().device_of("n1", 0) == "0"  # holders off: the index
