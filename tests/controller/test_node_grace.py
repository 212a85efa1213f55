"""A node that stops being Ready keeps its GPUs in the plan for a grace period (`node_not_ready_grace_s`): a flap
shorter than that re-plans nothing, evicts nobody and writes nothing; past it the node leaves the plan, and the
decision says when that happens so the loop wakes up then."""
from __future__ import annotations

import dataclasses

import pytest

from kvsched.api.objects import NodeObj, World
from kvsched.api.readers import read_node
from kvsched.controller.inventory import build_inventory
from kvsched.units import timestamp_s

from .fake import NO_HOLDERS, NOW, bind_planned, deployment, node, run, settle

NOW_S = timestamp_s(NOW)
assert NOW_S is not None
GRACE = dataclasses.replace(NO_HOLDERS, node_not_ready_grace_s=300.0)
NO_GRACE = dataclasses.replace(NO_HOLDERS, node_not_ready_grace_s=0.0)


def running_world() -> World:
    """Two 2-GPU nodes and four models of one replica each, planned, bound and Ready everywhere."""
    nodes = (node("a"), node("b"))
    world, _ = settle(World(nodes=nodes, deployments=tuple(deployment(m, size="30Gi") for m in "pqrs")),
                      config=GRACE)
    world = bind_planned(world)
    world, _ = settle(world, config=GRACE)
    return world


def not_ready(world: World, name: str, since: str) -> World:
    nodes = tuple(dataclasses.replace(n, ready=False, not_ready_since=since) if n.name == name else n
                  for n in world.nodes)
    return dataclasses.replace(world, nodes=nodes)


def planned_nodes(world: World) -> set[str]:
    return {s["node"] for ms in world.model_servings for s in ms.status["slots"]}


def test_a_node_not_ready_within_its_grace_period_changes_nothing() -> None:
    world = running_world()
    assert planned_nodes(world) == {"a", "b"}
    flapped = not_ready(world, "b", "2026-11-28T05:59:30Z")  # 30 s ago
    decision = run(flapped, GRACE)
    assert decision.writes == 0 and decision.eviction is None and decision.steps == ()
    assert decision.wake_at_s == NOW_S - 30 + 300


@pytest.mark.parametrize("config, since", [
    pytest.param(GRACE, "2026-11-28T05:54:00Z", id="NotReady 360 s ago, grace 300 s"),
    pytest.param(NO_GRACE, "2026-11-28T05:59:30Z", id="no grace"),
    pytest.param(GRACE, "", id="no transition time: no grace"),
])
def test_a_node_past_its_grace_period_leaves_the_plan(config: object, since: str) -> None:
    world = running_world()
    gone = not_ready(world, "b", since)
    decision = run(gone, config)  # type: ignore[arg-type]
    assert decision.plan is not None and {p.gpu.node for p in decision.plan.placements} == {"a"}
    assert decision.wake_at_s is None


def test_the_grace_period_counts_from_the_ready_conditions_last_transition() -> None:
    obj = {"metadata": {"name": "b"}, "status": {
        "capacity": {"nvidia.com/gpu": "2"},
        "conditions": [{"type": "Ready", "status": "Unknown", "lastTransitionTime": "2026-11-28T05:59:00Z"}]}}
    read = read_node(obj)
    assert (read.ready, read.not_ready_since) == (False, "2026-11-28T05:59:00Z")
    ready = read_node({**obj, "status": {**obj["status"], "conditions": [{"type": "Ready", "status": "True"}]}})
    assert (ready.ready, ready.not_ready_since) == (True, "")


@pytest.mark.parametrize("now_offset_s, usable", [(299.0, True), (300.0, False), (-1.0, True)])
def test_the_inventory_keeps_a_not_ready_node_until_its_grace_ends(now_offset_s: float, usable: bool) -> None:
    flapped = node("b", ready=False, not_ready_since=NOW)
    inventory = build_inventory([flapped], [], GRACE, NOW_S + now_offset_s)
    assert [p.usable for p in inventory.pool] == [usable]
    assert (inventory.grace_ends_s == NOW_S + 300) is usable


def test_a_cordoned_node_in_its_grace_period_is_still_left_out() -> None:
    cordoned: NodeObj = node("b", ready=False, not_ready_since=NOW, unschedulable=True)
    inventory = build_inventory([cordoned], [], GRACE, NOW_S + 10)
    assert [p.usable for p in inventory.pool] == [False] and inventory.gpus == ()
