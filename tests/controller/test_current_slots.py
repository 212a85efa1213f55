"""`current_slots`: which replicas a re-plan must pay to move (`current`) and which are free (`planned`)."""
from __future__ import annotations

from typing import Any

import pytest

from kvsched.api.objects import World
from kvsched.controller import DecisionConfig
from kvsched.controller.decide import current_slots, running_pods
from kvsched.controller.models import collect_models
from kvsched.packer import GpuId, Slot

from .fake import deployment, node, pod, serving

A0, A1, B0, B1 = GpuId("a", 0), GpuId("a", 1), GpuId("b", 0), GpuId("b", 1)


def status(*gpus: GpuId) -> dict[str, Any]:
    return {"slots": [{"node": g.node, "gpu": g.index, "memoryFraction": 0.5} for g in gpus]}


def split(replicas: int, slots: tuple[GpuId, ...], *pods: Any) -> tuple[list[GpuId], list[GpuId]]:
    world = World(nodes=(node("a"), node("b")), pods=tuple(pods), deployments=(deployment("m", replicas=replicas),),
                  model_servings=(serving("m", replicas=replicas, status=status(*slots)),))
    entries = collect_models(world).entries
    current, planned = current_slots(entries, running_pods(world, entries, DecisionConfig()))
    assert all(s.model == "ns/m" for s in current + planned)
    numbers = [s.replica for s in current + planned]
    assert numbers == list(range(len(numbers))), "replica numbers are 0..n-1, current first"
    return [s.gpu for s in current], [s.gpu for s in planned]


@pytest.mark.parametrize("replicas, slots, pods, current, planned", [
    pytest.param(2, (), [], [], [], id="nothing planned, nothing running"),
    pytest.param(2, (A0, B0), [], [], [A0, B0], id="first placement: every slot is free to move"),
    pytest.param(2, (A0, B0), [pod("p1", "m", "a", 0)], [A0], [B0], id="one bound, one pending"),
    pytest.param(2, (A0, B0), [pod("p1", "m", "a", 0, ready=False)], [A0], [B0],
                 id="bound but not Ready yet is running"),
    pytest.param(2, (A0, B0), [pod("p1", "m", "a", 1)], [A1], [A0, B0][:1],
                 id="running off-plan keeps its GPU; one slot left for the other replica"),
    pytest.param(1, (B0,), [pod("p1", "m", "a", 0, deleting=True)], [B0], [],
                 id="move in flight: the replacement counts at its destination"),
    pytest.param(2, (A0, B0), [pod("p1", "m", "a", 0, deleting=True)], [A0], [B0],
                 id="restart in place: the replacement comes back to the same GPU"),
    pytest.param(1, (B0,), [pod("p1", "m", "a", 0, deleting=True), pod("p2", "m", "b", 0)], [B0], [],
                 id="move done, old pod still terminating"),
    pytest.param(2, (A0, B1), [pod("p1", "m", "a", 0), pod("p2", "m", "b", 0, deleting=True)], [A0, B1], [],
                 id="one stays, one moving"),
    pytest.param(1, (A0, B0), [pod("p1", "m", "a", 0), pod("p2", "m", "b", 0)], [A0], [],
                 id="scale-down: at most `replicas` slots, oldest pod first"),
    pytest.param(2, (A0,), [pod("p1", "m", "b", 0, deleting=True), pod("p2", "m", "a", 0)], [A0], [],
                 id="a terminating pod off-plan with no free slot left claims nothing"),
])
def test_current_and_planned(replicas: int, slots: tuple[GpuId, ...], pods: list[Any],
                             current: list[GpuId], planned: list[GpuId]) -> None:
    assert split(replicas, slots, *pods) == (current, planned)


def test_a_model_that_cannot_be_planned_has_no_slots() -> None:
    world = World(nodes=(node("a"),), model_servings=(serving("m", size="bogus", status=status(A0)),))
    entries = collect_models(world).entries
    assert current_slots(entries, running_pods(world, entries, DecisionConfig())) == ([], [])


def test_slots_are_packer_slots() -> None:
    current, planned = current_slots(
        collect_models(World(nodes=(node("a"),), model_servings=(serving("m", replicas=2, status=status(A0, A1)),),
                             deployments=(deployment("m", replicas=2),))).entries,
        [])
    assert current == [] and planned == [Slot("ns/m", 0, A0), Slot("ns/m", 1, A1)]


def test_current_slots_carry_the_share_each_live_pod_runs_with() -> None:
    pods = (pod("p1", "m", "a", 0, fraction=0.42), pod("p2", "m", "b", 0), pod("p3", "m", "a", 1, deleting=True,
                                                                              fraction=0.3))
    world = World(nodes=(node("a"), node("b")), pods=pods, deployments=(deployment("m", replicas=3),),
                  model_servings=(serving("m", replicas=3, status=status(A0, B0, A1)),))
    entries = collect_models(world).entries
    current, _ = current_slots(entries, running_pods(world, entries, DecisionConfig()))
    # A live pod's annotation; none for a pod without one, nor for a terminating pod's replacement (it starts anew).
    assert {s.gpu: s.memory_fraction for s in current} == {A0: 0.42, B0: None, A1: None}
