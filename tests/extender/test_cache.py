"""The cache's readers of API objects (bad values read as unknown, never raise) and its holder bookkeeping as
watch events arrive (reservation -> annotated pod -> deleted)."""
from __future__ import annotations

from typing import Any

import pytest

from kvsched.api.names import GPU_ANNOTATION, GPU_MEMORY_LABEL
from kvsched.extender.cache import Cache, model_plan, node_gpus, pod_info
from kvsched.controller.slots import PlannedSlot, PodRef

from .world import model, node, pod, world


@pytest.mark.parametrize("labels, capacity, gpus, memory", [
    pytest.param({"nvidia.com/gpu.memory": "81920"}, {"nvidia.com/gpu": "8"}, 8, 80.0, id="GFD MiB label"),
    pytest.param({"nvidia.com/gpu.memory": "81920", GPU_MEMORY_LABEL: "40Gi"}, {"nvidia.com/gpu": "2"},
                 2, 40.0, id="kvsched label wins"),
    pytest.param({}, {}, 0, None, id="no GPUs, no label"),
    pytest.param({GPU_MEMORY_LABEL: "lots"}, {"nvidia.com/gpu": "x"}, 0, None, id="unparsable values"),
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
    obj["metadata"]["annotations"][GPU_ANNOTATION] = annotation
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


LLAMA_0 = pod("llama-0", "llama", "n1", 0)
QWEN_0 = pod("qwen-0", "qwen", "n1", 0)


def _reserve_then_release(cache: Cache) -> None:
    ref = PodRef("ml", "llama-r", "uid-llama-r", "ml/llama")
    assert cache.reserve(ref, "n1") == PlannedSlot("n1", 0, 0.5)
    cache.release(ref.uid)


# (events on a cache with node n1 and llama planned on n1 GPU 0, the models remembered as having left n1 GPU 0)
PREVIOUS_CASES = [
    pytest.param([], (), id="nothing has left"),
    pytest.param([lambda c: c.on_pod("ADDED", LLAMA_0)], (), id="a running pod has not left"),
    pytest.param([lambda c: c.on_pod("ADDED", LLAMA_0), lambda c: c.on_pod("DELETED", LLAMA_0)], ("ml/llama",),
                 id="a deleted pod's model"),
    pytest.param([lambda c: c.on_pod("ADDED", LLAMA_0),
                  lambda c: c.on_pod("MODIFIED", pod("llama-0", "llama", "n1", 0, terminating=True))], (),
                 id="a terminating pod still holds the GPU"),
    pytest.param([lambda c: c.on_pod("ADDED", LLAMA_0),
                  lambda c: c.on_pod("MODIFIED", pod("llama-0", "llama", "n1", 0, phase="Succeeded"))],
                 ("ml/llama",), id="a finished pod's model"),
    pytest.param([lambda c: c.on_pod("ADDED", pod("llama-0", "llama", "n1", 0, phase="Failed")),
                  lambda c: c.on_pod("DELETED", pod("llama-0", "llama", "n1", 0, phase="Failed"))], (),
                 id="a pod that never held the GPU"),
    pytest.param([_reserve_then_release], (), id="a failed bind's reservation never ran there"),
    pytest.param([lambda c: c.on_pod("ADDED", pod("web", None, "n1", 0)), lambda c: c.on_pod("DELETED", pod("web"))],
                 (), id="a pod without a model"),
    pytest.param([lambda c: c.on_pod("ADDED", LLAMA_0), lambda c: c.on_pod("ADDED", QWEN_0),
                  lambda c: c.on_pod("DELETED", LLAMA_0), lambda c: c.on_pod("DELETED", QWEN_0),
                  lambda c: c.on_pod("ADDED", LLAMA_0), lambda c: c.on_pod("DELETED", LLAMA_0)],
                 ("ml/qwen", "ml/llama"), id="each model once, the most recent last"),
    pytest.param([lambda c, i=i: (c.on_pod("ADDED", pod(f"m{i}-0", f"m{i}", "n1", 0)),
                                  c.on_pod("DELETED", pod(f"m{i}-0", f"m{i}", "n1", 0))) for i in range(6)],
                 ("ml/m2", "ml/m3", "ml/m4", "ml/m5"), id="at most four models"),
    pytest.param([lambda c: c.on_pod("ADDED", LLAMA_0), lambda c: c.on_pod("DELETED", LLAMA_0),
                  lambda c: c.on_node("DELETED", node("n1")), lambda c: c.on_node("ADDED", node("n1"))], (),
                 id="forgotten with its node"),
]


@pytest.mark.parametrize("events, previous", PREVIOUS_CASES)
def test_previous_models_of_a_gpu(events: list[Any], previous: tuple[str, ...]) -> None:
    cache = world([node("n1")], [model("llama", "16Gi", [("n1", 0)])])
    for event in events:
        event(cache)
    assert tuple(cache.previous_models("n1", 0)) == previous
    assert tuple(cache.previous_models("n1", 1)) == ()
