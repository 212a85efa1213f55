"""The cache's readers of API objects (bad values read as unknown, never raise) and its holder bookkeeping as
watch events arrive (reservation -> annotated pod -> deleted)."""
from __future__ import annotations

from typing import Any

import pytest

from kvsched.extender.cache import Cache, model_plan, node_gpus, pod_info
from kvsched.extender.slots import PlannedSlot, PodRef

from .world import model, node, pod, world


@pytest.mark.parametrize("labels, capacity, gpus, memory", [
    pytest.param({"nvidia.com/gpu.memory": "81920"}, {"nvidia.com/gpu": "8"}, 8, 80.0, id="GFD MiB label"),
    pytest.param({"nvidia.com/gpu.memory": "81920", "kvsched.io/gpu-memory": "40Gi"}, {"nvidia.com/gpu": "2"},
                 2, 40.0, id="kvsched label wins"),
    pytest.param({}, {}, 0, None, id="no GPUs, no label"),
    pytest.param({"kvsched.io/gpu-memory": "lots"}, {"nvidia.com/gpu": "x"}, 0, None, id="unparsable values"),
])
def test_node_gpus(labels: dict[str, str], capacity: dict[str, str], gpus: int, memory: float | None) -> None:
    parsed = node_gpus({"metadata": {"name": "n", "labels": labels}, "status": {"capacity": capacity}})
    assert (parsed.gpus, parsed.gpu_memory_gib) == (gpus, memory)


@pytest.mark.parametrize("status, size, slots", [
    pytest.param({"slots": [{"node": "a", "gpu": 1, "memoryFraction": 0.5}]}, "16Gi",
                 {"a": (PlannedSlot("a", 1, 0.5),)}, id="one slot"),
    pytest.param({}, "16Gi", {}, id="no status yet"),
    pytest.param({"slots": [{"node": "a"}, {"node": "a", "gpu": -1}, {"node": 3, "gpu": 0}, "junk",
                            {"node": "b", "gpu": True}, {"node": "b", "gpu": 2, "memoryFraction": "x"},
                            {"node": "c", "gpu": 0}]}, "16Gi", {"c": (PlannedSlot("c", 0, 0.0),)},
                 id="malformed slots are skipped"),
])
def test_model_plan(status: dict[str, Any], size: str, slots: dict[str, Any]) -> None:
    plan = model_plan({"metadata": {"name": "m", "namespace": "ml"}, "spec": {"modelSize": size}, "status": status})
    assert plan.key == "ml/m" and plan.size_gib == 16.0 and dict(plan.slots_by_node) == slots


def test_model_with_a_bad_size_has_unknown_size() -> None:
    assert model_plan({"metadata": {"name": "m", "namespace": "ml"}, "spec": {"modelSize": "big"}}).size_gib is None


@pytest.mark.parametrize("annotation, gpu", [("3", 3), ("", None), ("-1", None), ("gpu0", None)])
def test_pod_gpu_annotation(annotation: str, gpu: int | None) -> None:
    obj = pod("p", "llama", "n1")
    obj["metadata"]["annotations"]["kvsched.io/gpu"] = annotation
    assert pod_info(obj).gpu == gpu


def test_reservation_then_watch_then_delete() -> None:
    cache = world([node("n1")], [model("llama", "16Gi", [("n1", 0)])])
    ref = PodRef("ml", "p", "uid-p", "ml/llama")
    assert cache.reserve(ref, "n1") == PlannedSlot("n1", 0, 0.5)
    assert [h.reserved for h in cache.holders("n1", 0)] == [True]
    cache.on_pod("MODIFIED", pod("p", "llama", "", 0))        # annotated, not bound yet: still the reservation
    assert [h.reserved for h in cache.holders("n1", 0)] == [True]
    cache.on_pod("MODIFIED", pod("p", "llama", "n1", 0))      # bound: a plain holder
    assert [h.reserved for h in cache.holders("n1", 0)] == [False]
    assert cache.counts()["reservations"] == 0
    cache.on_pod("MODIFIED", pod("p", "llama", "n1", 0, terminating=True))
    assert [h.terminating for h in cache.holders("n1", 0)] == [True]
    cache.on_pod("DELETED", pod("p", "llama", "n1", 0))
    assert list(cache.holders("n1", 0)) == [] and cache.counts()["pods"] == 0


def test_models_and_nodes_follow_their_watch() -> None:
    cache = Cache()
    cache.on_model("ADDED", model("llama", "16Gi", [("n1", 0)]))
    cache.on_model("MODIFIED", model("llama", "16Gi", [("n2", 1)]))
    plan = cache.model("ml/llama")
    assert plan is not None and list(plan.slots_by_node) == ["n2"]
    cache.on_model("DELETED", model("llama", "16Gi", []))
    assert cache.model("ml/llama") is None
    cache.on_node("ADDED", node("n1"))
    cache.on_node("DELETED", node("n1"))
    assert cache.node("n1") is None
    assert not cache.ready()  # no informer attached
