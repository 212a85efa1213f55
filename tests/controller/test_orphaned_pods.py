"""Pods of a model kvsched no longer plans (its ModelServing deleted mid-migration, or its size unreadable) follow
one rule in both parts: the extender counts such a pod as filling its GPU, so the controller withholds that GPU from
the packer while the pod holds it, and no migration waits for such a pod to be bound or Ready."""
from __future__ import annotations

import dataclasses

from kvsched.api.objects import World
from kvsched.controller import decide
from kvsched.packer import GpuId, GpuUsage, MigrationStep, Placement, Plan

from .fake import NO_HOLDERS, NOW, bind_planned, deployment, node, pod, run, settle


def orphan_world() -> tuple[World, GpuId]:
    """p and q planned and running on one 2-GPU node; then p's Deployment and ModelServing go, its pod stays."""
    world, _ = settle(World(nodes=(node("n"),), deployments=(deployment("p", size="30Gi"),
                                                            deployment("q", size="30Gi"))))
    world = bind_planned(world)
    world, _ = settle(world)
    p_pod = next(x for x in world.pods if x.labels.get("kvsched.io/model") == "p")
    gone = dataclasses.replace(world, deployments=tuple(d for d in world.deployments if d.name != "p"),
                               model_servings=tuple(m for m in world.model_servings if m.name != "p"))
    assert p_pod.node is not None
    return gone, GpuId(p_pod.node, int(p_pod.annotations["kvsched.io/gpu"]))


def test_the_gpu_an_orphaned_pod_holds_is_planned_for_nobody() -> None:
    world, held = orphan_world()
    world = dataclasses.replace(world, deployments=(*world.deployments, deployment("r", size="30Gi")))
    world, _ = settle(world)
    decision = run(dataclasses.replace(world, pods=(*world.pods, pod("r-new", "r", None, None))))
    assert decision.plan is not None and decision.inventory is not None
    assert held.index in decision.inventory.withheld.get(held.node, ())
    assert all(p.gpu != held for p in decision.plan.placements)
    # r's pending pod can bind where it is planned: the extender's slot rule agrees (the controller nudges it).
    assert [n.pod.name for n in decision.nudges] == ["r-new"]


def test_a_migration_does_not_wait_for_an_orphaned_pod() -> None:
    world, held = orphan_world()
    starting_orphan = pod("p-late", "p", held.node, 1 - held.index, ready=False)
    q_pod = next(x for x in world.pods if x.labels.get("kvsched.io/model") == "q")
    assert q_pod.node is not None
    source = GpuId(q_pod.node, int(q_pod.annotations["kvsched.io/gpu"]))
    target = GpuId("n", 1 - source.index)
    plan = Plan(max_kvpr=0.1, lower_bound=0.1, retunes=0, solve_seconds=0.0,
                placements=(Placement("ns/q", 0, target, 0.5),),
                gpus=tuple(GpuUsage(GpuId("n", i), 80.0, 0.1, 30.0, ()) for i in range(2)),
                steps=(MigrationStep("ns/q", 0, source, target),))
    decision = decide(dataclasses.replace(world, pods=(*world.pods, starting_orphan)), NO_HOLDERS,
                      lambda m, g, c, p: plan, now=NOW)
    assert decision.waiting is None
    assert decision.eviction is not None and decision.eviction.pod.name == q_pod.name
