"""Make-before-break moves (kvsched.controller.surge): which moves surge their Deployment, how a surge in force
is finished or undone from what the API shows (so a new leader after a crash does it), and a simulated cluster
in which a cordoned node's replicas move without a model losing a Ready replica."""
from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from hack.cluster import EXAMPLE, example_deployments, example_nodes
from kvsched.api.names import (
    MAKE_BEFORE_BREAK_ANNOTATION,
    MODEL_LABEL,
    POD_DELETION_COST_ANNOTATION,
    SURGE_ANNOTATION,
    SURGE_DELETION_COST,
)
from kvsched.api.objects import World
from kvsched.controller import DecisionConfig
from kvsched.controller.surge import SurgeRecord, planned_replicas, read_surge
from kvsched.units import timestamp_s

from .fake import LATER, NO_HOLDERS, bind_planned, deployment, node, pod, run, settle
from .sim import SimCluster

NOW_S = timestamp_s(LATER) or 0.0


def one_model_on_cordoned_node(free_mib: int = 81920, annotations: dict[str, str] | None = None,
                               replicas: int = 1) -> World:
    """Model `m` (16Gi, `replicas`) placed and Ready on node "old", which is then cordoned; node "new" joins."""
    dep = deployment("m", replicas=replicas)
    if annotations:
        dep = dataclasses.replace(dep, annotations={**dep.annotations, **annotations})
    world, _ = settle(World(nodes=(node("old", gpus=replicas),), deployments=(dep,)))
    world, _ = settle(bind_planned(world))
    nodes = (dataclasses.replace(world.nodes[0], unschedulable=True), node("new", gpus=replicas, memory_mib=free_mib))
    return dataclasses.replace(world, nodes=nodes)


@pytest.mark.parametrize("config, annotations, free_mib, surges", [
    pytest.param(NO_HOLDERS, None, 81920, True, id="room on the target: the replacement starts first"),
    pytest.param(dataclasses.replace(NO_HOLDERS, make_before_break=False), None, 81920, False,
                 id="make-before-break off: evict first"),
    pytest.param(NO_HOLDERS, {MAKE_BEFORE_BREAK_ANNOTATION: "false"}, 81920, False,
                 id="an autoscaler owns the replicas (annotated false): evict first"),
    pytest.param(NO_HOLDERS, {MAKE_BEFORE_BREAK_ANNOTATION: "False"}, 81920, False,
                 id="annotation case-insensitive"),
])
def test_a_move_surges_only_where_allowed(config: DecisionConfig, annotations: dict[str, str] | None,
                                          free_mib: int, surges: bool) -> None:
    world = one_model_on_cordoned_node(free_mib, annotations)
    decision = run(world, config, now=LATER)
    assert len(decision.steps) == 1
    if surges:
        assert decision.evictions == () and len(decision.surges) == 1
        surge = decision.surges[0]
        assert surge.step.pod.node == "old" and surge.step.target.node == "new"
        assert surge.replicas == 1
        assert read_surge(dataclasses.replace(world.deployments[0],
                                              annotations={SURGE_ANNOTATION: surge.record})) == \
            SurgeRecord(1, surge.step.pod.name, NOW_S)
    else:
        assert decision.surges == () and len(decision.evictions) == 1


def test_a_pod_whose_surge_was_undone_is_evicted_first_next_time() -> None:
    world = one_model_on_cordoned_node()
    old = world.pods[0]
    tried = dataclasses.replace(old, annotations={**old.annotations, POD_DELETION_COST_ANNOTATION: SURGE_DELETION_COST})
    decision = run(dataclasses.replace(world, pods=(tried,)), now=LATER)
    assert decision.surges == () and [e.pod.name for e in decision.evictions] == [old.name]


def surging_world(ready: bool, since_s: float = NOW_S - 10, replicas: int | None = None,
                  old_present: bool = True) -> tuple[World, str]:
    """A surge in force as a crashed leader left it: m's Deployment at 2 replicas with the record "1/<old>/since",
    the old pod on the cordoned node, its replacement bound on "new" (Ready or not)."""
    world = one_model_on_cordoned_node()
    old = world.pods[0]
    old = dataclasses.replace(old, annotations={**old.annotations,
                                                POD_DELETION_COST_ANNOTATION: SURGE_DELETION_COST})
    record = SurgeRecord(1, old.name, since_s).value()
    dep = dataclasses.replace(world.deployments[0], replicas=2 if replicas is None else replicas,
                              annotations={**world.deployments[0].annotations, SURGE_ANNOTATION: record})
    new = dataclasses.replace(pod("m-new", "m", "new", 0, ready=ready), created="z", bound_at="2026-11-28T06:59:00Z")
    pods = ((old,) if old_present else ()) + (new,)
    return dataclasses.replace(world, deployments=(dep,), pods=pods), old.name


def scale_back(decision: Any) -> list[dict[str, Any]]:
    return [dict(p.patch) for p in decision.deployment_patches if "metadata" in p.patch]


@pytest.mark.parametrize("ready, since_s, replicas, old_present, patch", [
    pytest.param(True, NOW_S - 10, None, True, {"metadata": {"annotations": {SURGE_ANNOTATION: None}},
                                                 "spec": {"replicas": 1}},
                 id="replacement Ready: scale back (the ReplicaSet deletes the marked old pod)"),
    pytest.param(False, NOW_S - 10, None, True, None, id="replacement not Ready yet: wait"),
    pytest.param(False, NOW_S - 601, None, True, {"metadata": {"annotations": {SURGE_ANNOTATION: None}},
                                                  "spec": {"replicas": 1}},
                 id="not Ready past twice the start timeout: undone"),
    pytest.param(False, NOW_S - 10, None, False, {"metadata": {"annotations": {SURGE_ANNOTATION: None}},
                                                  "spec": {"replicas": 1}},
                 id="old pod already gone: scale back"),
    pytest.param(True, NOW_S - 10, 5, True, {"metadata": {"annotations": {SURGE_ANNOTATION: None}}},
                 id="someone else scaled meanwhile: drop the record, keep their count"),
])
def test_a_new_leader_finishes_or_undoes_a_surge_in_force(ready: bool, since_s: float, replicas: int | None,
                                                         old_present: bool, patch: dict[str, Any] | None) -> None:
    world, old = surging_world(ready, since_s, replicas, old_present)
    decision = run(world, now=LATER)
    assert scale_back(decision) == ([patch] if patch else [])
    assert decision.surges == () and decision.evictions == (), "a surge in force is never started again"
    if replicas is None:
        # The plan counts the replicas before the surge: the surge re-plans nothing, the status says 1.
        assert planned_replicas(world.deployments[0]) == 1
        assert all(w.status["replicas"] == 1 for w in decision.statuses)
    if patch is None:
        assert decision.wake_at_s is not None and decision.wake_at_s <= since_s + 600


def test_an_unreadable_surge_record_is_dropped() -> None:
    world, _ = surging_world(True)
    dep = dataclasses.replace(world.deployments[0], annotations={**world.deployments[0].annotations,
                                                                 SURGE_ANNOTATION: "one/two"})
    decision = run(dataclasses.replace(world, deployments=(dep,)), now=LATER)
    assert scale_back(decision) == [{"metadata": {"annotations": {SURGE_ANNOTATION: None}}}]


def ready_by_model(sim: SimCluster) -> dict[str, int]:
    out: dict[str, int] = {}
    for p in sim.live_pods():
        model = (p["metadata"].get("labels") or {}).get(MODEL_LABEL)
        if model and p["spec"].get("nodeName") and sim._ready(p):
            out[model] = out.get(model, 0) + 1
    return out


def test_a_cordoned_nodes_replicas_move_without_losing_a_ready_replica() -> None:
    sim = SimCluster(DecisionConfig(time_budget_s=0.3), namespace="kvsched-demo", ready_after=2, terminate_after=1)
    for n in example_nodes(EXAMPLE):
        sim.add_node(n)
    for d in example_deployments(EXAMPLE):
        sim.add_deployment(d)
    sim.start()
    sim.settle(150)
    wanted = {k.name: int(d["spec"]["replicas"]) for k, d in sim.deployments.items()}
    moving = {p["metadata"]["labels"][MODEL_LABEL] for p in sim.live_pods()
              if p["spec"].get("nodeName") == "a100-node-c" and MODEL_LABEL in p["metadata"].get("labels", {})}
    assert moving
    sim.cordon("a100-node-c")
    evictions = len(sim.evictions)
    surged: set[str] = set()
    for _ in range(200):
        wrote = sim.step()
        surged |= {k.name for k, d in sim.deployments.items()
                   if SURGE_ANNOTATION in (d["metadata"].get("annotations") or {})}
        ready = ready_by_model(sim)
        for model in moving:
            assert ready.get(model, 0) >= wanted[model], (
                f"step {sim.steps}: {model} has {ready.get(model, 0)} Ready of {wanted[model]} during its move")
        if wrote == 0 and not sim._kubelet_pending():
            break
    assert moving <= surged, f"moved without a surge: {moving - surged}"
    # Other pods may restart (share restarts, stop-first cycle steps of the re-plan): none of the cordoned node's.
    assert [e.pod for e in sim.evictions[evictions:] if e.node == "a100-node-c"] == []
    assert not any(p["spec"].get("nodeName") == "a100-node-c" for p in sim.live_pods())
    assert all(SURGE_ANNOTATION not in (d["metadata"].get("annotations") or {}) for d in sim.deployments.values())


def migrating(decision: Any) -> dict[str, Any]:
    (status,) = [w.status for w in decision.statuses]
    return next(c for c in status["conditions"] if c["type"] == "Migrating")


@pytest.mark.parametrize("surge, reason", [
    pytest.param(True, "Surging", id="its only move surging: still Migrating, saying for whom it waits"),
    pytest.param(False, None, id="the record dropped (the surge ended): Stable"),
])
def test_a_model_whose_only_move_surges_stays_migrating(surge: bool, reason: str | None) -> None:
    world, old = surging_world(ready=False)
    if not surge:
        dep = world.deployments[0]
        world = dataclasses.replace(world, deployments=(dataclasses.replace(dep, replicas=1, annotations={
            k: v for k, v in dep.annotations.items() if k != SURGE_ANNOTATION}),))
    decision = run(world, now=LATER)
    condition = migrating(decision)
    if reason is None:
        assert condition["status"] == "False" and condition["reason"] == "Stable"
    else:
        assert decision.steps == (), "the surge's move is no longer a step"
        assert condition["status"] == "True" and condition["reason"] == reason
        assert old in condition["message"]
        assert decision.model_states.get("migrating") == 1
