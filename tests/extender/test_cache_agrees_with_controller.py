"""One reader per object: the extender's cache and the controller's inventory read the same Node the same way
(GPU count allocatable first, per-GPU memory from either label, MiB as a number with a fraction), and take the
same planned slots out of the same ModelServing status."""
from __future__ import annotations

from typing import Any

import pytest

from kvsched.api.names import GPU_MEMORY_LABEL, GPU_MEMORY_MIB_LABEL, GPU_RESOURCE
from kvsched.api.readers import read_model_serving, read_node
from kvsched.controller import DecisionConfig
from kvsched.controller.inventory import build_inventory
from kvsched.controller.status import planned_slots
from kvsched.extender.cache import Cache

Obj = dict[str, Any]


def gpu_node(labels: dict[str, str], capacity: str | None, allocatable: str | None) -> Obj:
    status: Obj = {"conditions": [{"type": "Ready", "status": "True"}]}
    if capacity is not None:
        status["capacity"] = {GPU_RESOURCE: capacity, "cpu": "64"}
    if allocatable is not None:
        status["allocatable"] = {GPU_RESOURCE: allocatable, "cpu": "63"}
    return {"kind": "Node", "metadata": {"name": "n1", "uid": "uid-n1", "labels": labels}, "status": status}


# (labels, capacity, allocatable, GPUs both read, GiB per GPU both read)
NODES = [
    pytest.param({GPU_MEMORY_MIB_LABEL: "81920"}, "8", "6", 6, 80.0,
                 id="allocatable below capacity: the device plugin's healthy GPUs"),
    pytest.param({GPU_MEMORY_MIB_LABEL: "81920"}, "4", None, 4, 80.0, id="capacity only"),
    pytest.param({GPU_MEMORY_MIB_LABEL: "81920"}, None, "2", 2, 80.0, id="allocatable only"),
    pytest.param({GPU_MEMORY_MIB_LABEL: "81559.5"}, "2", "2", 2, 81559.5 / 1024,
                 id="MiB with a fraction (as GPU Feature Discovery may report it)"),
    pytest.param({GPU_MEMORY_MIB_LABEL: " 40960 "}, "1", "1", 1, 40.0, id="plain MiB with spaces"),
    pytest.param({GPU_MEMORY_MIB_LABEL: "81920", GPU_MEMORY_LABEL: "40Gi"}, "2", "2", 2, 40.0,
                 id="kvsched label wins over the MiB one"),
    pytest.param({GPU_MEMORY_LABEL: "81559.5Mi"}, "1", "1", 1, 81559.5 / 1024,
                 id="kvsched label: a quantity with a fraction"),
]


@pytest.mark.parametrize("labels, capacity, allocatable, gpus, memory_gib", NODES)
def test_the_cache_and_the_inventory_read_a_node_alike(labels: dict[str, str], capacity: str | None,
                                                        allocatable: str | None, gpus: int,
                                                        memory_gib: float) -> None:
    obj = gpu_node(labels, capacity, allocatable)
    cache = Cache()
    cache.on_node("ADDED", obj)
    seen = cache.node("n1")
    assert seen is not None
    inventory = build_inventory([read_node(obj)], [], DecisionConfig())
    assert not inventory.problems
    (pool,) = inventory.pool
    assert (seen.gpus, seen.gpu_memory_gib) == (pool.gpus, pool.memory_gib) == (gpus, pytest.approx(memory_gib))


# (labels, capacity, allocatable): the inventory leaves the node out with a problem, the cache reads 0 GPUs or
# unknown memory (never raises)
BAD_NODES = [
    pytest.param({GPU_MEMORY_MIB_LABEL: "81920"}, "8", "x", id="allocatable not a whole number"),
    pytest.param({GPU_MEMORY_MIB_LABEL: "81920"}, "8", "1.5", id="allocatable with a fraction"),
    pytest.param({GPU_MEMORY_MIB_LABEL: "lots"}, "1", "1", id="MiB label not a number"),
    pytest.param({GPU_MEMORY_MIB_LABEL: "-1"}, "1", "1", id="MiB label negative"),
    pytest.param({GPU_MEMORY_LABEL: "lots"}, "1", "1", id="kvsched label not a quantity"),
]


@pytest.mark.parametrize("labels, capacity, allocatable", BAD_NODES)
def test_a_bad_value_takes_the_node_out_of_both(labels: dict[str, str], capacity: str,
                                                allocatable: str) -> None:
    obj = gpu_node(labels, capacity, allocatable)
    cache = Cache()
    cache.on_node("ADDED", obj)
    seen = cache.node("n1")
    assert seen is not None and (seen.gpus == 0 or seen.gpu_memory_gib is None)
    inventory = build_inventory([read_node(obj)], [], DecisionConfig())
    assert inventory.pool == () and inventory.gpus == () and len(inventory.problems) == 1


@pytest.mark.parametrize("slots, read", [
    pytest.param([{"node": "a", "gpu": 1, "memoryFraction": 0.5}], [("a", 1, 0.5)], id="one slot"),
    pytest.param([], [], id="no slots"),
    pytest.param([{"node": "a"}, {"node": "a", "gpu": -1}, {"node": 3, "gpu": 0}, "junk", {"node": "b", "gpu": True},
                  {"node": "b", "gpu": 2, "memoryFraction": "x"}, {"node": "c", "gpu": 0}], [("c", 0, 0.0)],
                 id="malformed entries are skipped by both"),
])
def test_the_cache_and_the_controller_read_status_slots_alike(slots: list[Any],
                                                             read: list[tuple[str, int, float]]) -> None:
    obj = {"metadata": {"name": "m", "namespace": "ml"}, "spec": {"modelSize": "16Gi"}, "status": {"slots": slots}}
    cache = Cache()
    cache.on_model("ADDED", obj)
    plan = cache.model("ml/m")
    assert plan is not None
    by_cache = sorted((s.node, s.gpu, s.memory_fraction) for ss in plan.slots_by_node.values() for s in ss)
    good, _ = planned_slots(read_model_serving(obj).status)
    assert by_cache == sorted((s.node, s.gpu, s.memory_fraction) for s in good) == read
