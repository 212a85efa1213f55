"""The controller and the start gate: a pending pod waiting behind a pod starting on its GPU is not nudged, is
nudged again (a new digest) once that pod is Ready or its start timed out, and the decision says when the
earliest start times out so the loop can wake up then."""
from __future__ import annotations

import dataclasses

import pytest

from kvsched.api.names import PLANNED_SLOTS_ANNOTATION
from kvsched.api.objects import PodObj, World
from kvsched.controller import DecisionConfig
from kvsched.units import timestamp_s

from .fake import NO_HOLDERS, NOW, deployment, node, pod, run, settle

BOUND = "2026-11-28T05:59:50Z"  # 10 s before NOW
NOW_S = timestamp_s(NOW)
assert NOW_S is not None


def two_models_one_gpu() -> World:
    world, _ = settle(World(nodes=(node("n", gpus=1),), deployments=(deployment("a", size="8Gi"),
                                                                      deployment("b", size="8Gi"))))
    return world


def share(world: World, model: str) -> float:
    ms = next(m for m in world.model_servings if m.name == model)
    return float(ms.status["slots"][0]["memoryFraction"])


def starting_pod(world: World, ready: bool) -> PodObj:
    return dataclasses.replace(pod("a-0", "a", "n", 0, ready=ready, fraction=share(world, "a")), bound_at=BOUND)


def nudged(p: PodObj, digest: str) -> PodObj:
    return dataclasses.replace(p, annotations={PLANNED_SLOTS_ANNOTATION: digest})


def test_a_pod_waiting_at_the_gate_is_nudged_when_the_gate_opens() -> None:
    world = two_models_one_gpu()
    waiting = pod("b-x", "b", None, None)
    # Before a-0 binds: b-x could bind, and is nudged.
    first = run(dataclasses.replace(world, pods=(waiting,)))
    assert [n.pod.name for n in first.nudges] == ["b-x"]
    waiting = nudged(waiting, first.nudges[0].digest)
    # a-0 bound 10 s ago and not Ready: b-x waits at the gate; no nudge, the wait is counted, the timeout known.
    gated = run(dataclasses.replace(world, pods=(starting_pod(world, ready=False), waiting)))
    assert gated.nudges == () and gated.gate_waiting == 1
    assert gated.gate_expiry_s == NOW_S - 10 + DecisionConfig().start_timeout_s
    # a-0 Ready: b-x is nudged again, with a new digest, so kube-scheduler retries it at once.
    opened = run(dataclasses.replace(world, pods=(starting_pod(world, ready=True), waiting)))
    assert [n.pod.name for n in opened.nudges] == ["b-x"] and opened.nudges[0].digest != first.nudges[0].digest
    assert opened.gate_waiting == 0 and opened.gate_expiry_s is None
    # ... and once only.
    again = (starting_pod(world, ready=True), nudged(waiting, opened.nudges[0].digest))
    assert run(dataclasses.replace(world, pods=again)).nudges == ()


@pytest.mark.parametrize("timeout, nudge", [
    pytest.param(11.0, False, id="started 10 s ago, timeout 11 s: still waiting"),
    pytest.param(10.0, True, id="started 10 s ago, timeout 10 s: released"),
    pytest.param(0.0, True, id="gate off"),
])
def test_a_pod_that_never_becomes_ready_releases_the_gate_at_its_timeout(timeout: float, nudge: bool) -> None:
    world = two_models_one_gpu()
    config = dataclasses.replace(NO_HOLDERS, start_timeout_s=timeout)
    waiting = pod("b-x", "b", None, None)
    decision = run(dataclasses.replace(world, pods=(starting_pod(world, ready=False), waiting)), config)
    assert bool(decision.nudges) is nudge
    assert (decision.gate_expiry_s is None) is nudge


@pytest.mark.parametrize("starting", [True, False], ids=["a pod starts on the target GPU", "it is Ready"])
def test_a_migration_does_not_evict_towards_a_gpu_where_a_pod_starts(starting: bool) -> None:
    # The next eviction waits while a managed pod is bound and not Ready anywhere (stricter than the gate), so no
    # step ever evicts towards a GPU where a pod is starting.
    from kvsched.controller import decide
    from kvsched.packer import GpuId, GpuUsage, MigrationStep, Placement, Plan

    world, _ = settle(World(nodes=(node("n", gpus=4),), deployments=(deployment("a"), deployment("c"))))
    c0 = dataclasses.replace(pod("c-0", "c", "n", 0, ready=not starting), bound_at=BOUND)
    world = dataclasses.replace(world, pods=(pod("a-0", "a", "n", 2), c0))
    plan = Plan(max_kvpr=0.1, lower_bound=0.1, retunes=0, solve_seconds=0.0,
                placements=(Placement("ns/a", 0, GpuId("n", 0), 0.5), Placement("ns/c", 0, GpuId("n", 0), 0.5)),
                gpus=tuple(GpuUsage(GpuId("n", i), 80.0, 0.1, 16.0, ()) for i in range(4)),
                steps=(MigrationStep("ns/a", 0, GpuId("n", 2), GpuId("n", 0)),))
    decision = decide(world, DecisionConfig(), lambda m, g, c, p: plan, now=NOW)
    assert [(s.pod.name, s.target) for s in decision.steps] == [("a-0", GpuId("n", 0))]
    if starting:
        assert decision.eviction is None and decision.waiting == "waiting for pod c-0 to be Ready"
    else:
        assert decision.eviction is not None and decision.eviction.pod.name == "a-0"
