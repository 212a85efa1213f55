"""Waves of migration steps (kvsched.controller.migrations.choose_wave): steps on disjoint GPUs start together
within the disruption budget; a step never overtakes an earlier one on a GPU it touches; nothing starts towards a
GPU where a pod is starting, stopping or about to bind."""
from __future__ import annotations

import dataclasses
from typing import Sequence

import pytest

from kvsched.api.objects import ObjectKey, PodObj
from kvsched.api.records import Eviction
from kvsched.controller.migrations import Blocked, Budget, choose_wave, in_flight
from kvsched.packer import GpuId
from tests.controller.fake import pod


def g(node: str, index: int) -> GpuId:
    return GpuId(node, index)


def move(name: str, model: str, source: GpuId, target: GpuId, stop_first: bool = False) -> Eviction:
    return Eviction(f"ns/{model}", pod(name, model, source.node, source.index), source, target, stop_first)


# Four models, each with one replica on the lost node "old" and a free planned slot elsewhere.
FOUR = [move("a-0", "a", g("old", 0), g("n1", 0)), move("b-0", "b", g("old", 1), g("n1", 1)),
        move("c-0", "c", g("old", 2), g("n2", 0)), move("d-0", "d", g("old", 3), g("n3", 0))]
PLANNED_FOUR = {"ns/a": [g("n1", 0)], "ns/b": [g("n1", 1)], "ns/c": [g("n2", 0)], "ns/d": [g("n3", 0)]}


def names(steps: Sequence[Eviction]) -> list[str]:
    return [s.pod.name for s in steps]


@pytest.mark.parametrize("steps, budget, wave", [
    pytest.param([], Budget(4, 1), [], id="no steps"),
    pytest.param(FOUR, Budget(1, 1), ["a-0"], id="budget 1: one step at a time, the first"),
    pytest.param(FOUR, Budget(4, 1), ["a-0", "c-0", "d-0"], id="per node 1: b-0 waits for a-0's node n1"),
    pytest.param(FOUR, Budget(4, 2), ["a-0", "b-0", "c-0", "d-0"], id="per node 2: all four"),
    pytest.param(FOUR, Budget(2, 4), ["a-0", "b-0"], id="cluster-wide 2"),
    pytest.param([move("a-0", "a", g("old", 0), g("n1", 0)), move("b-0", "b", g("n1", 0), g("n2", 0))],
                 Budget(4, 4), ["a-0"], id="b-0 leaves a-0's target: it waits (a later step never overtakes)"),
    pytest.param([move("a-0", "a", g("n1", 0), g("n2", 0), stop_first=True),
                  move("b-0", "b", g("n2", 0), g("n1", 0))],
                 Budget(4, 4), ["a-0"], id="a cycle: its stop-first breaker alone"),
    pytest.param([move("a-0", "a", g("old", 0), g("n1", 0)), move("a-1", "a", g("old", 1), g("n2", 0))],
                 Budget(4, 1), ["a-0"], id="two replicas of one model to two nodes: one restarts at a time"),
    pytest.param([move("a-0", "a", g("old", 0), g("n1", 0)), move("b-0", "b", g("old", 1), g("n1", 0))],
                 Budget(4, 4), ["a-0"], id="two steps to one GPU: one engine starts there at a time"),
])
def test_a_wave_takes_steps_on_disjoint_gpus_within_the_budget(steps: list[Eviction], budget: Budget,
                                                              wave: list[str]) -> None:
    planned = {**PLANNED_FOUR, "ns/a": [s.target for s in steps if s.model == "ns/a"] or PLANNED_FOUR["ns/a"]}
    state = choose_wave(steps, [s.pod for s in steps], [], {}, 0.0, planned, budget)
    assert names(state.wave) == wave
    touched = [gpu for s in state.wave for gpu in {s.source, s.target}]
    assert len(touched) == len(set(touched)), "a GPU touched by two steps of one wave"
    assert len(state.wave) <= budget.max_restarting
    per_node = [s.target.node for s in state.wave]
    assert all(per_node.count(n) <= budget.max_restarting_per_node for n in per_node)
    assert (state.waiting is None) == bool(state.wave or not steps)


def starting(name: str, model: str, gpu: GpuId) -> PodObj:
    return pod(name, model, gpu.node, gpu.index, ready=False)


@pytest.mark.parametrize("others, pending, wave, waiting", [
    pytest.param([], [], ["a-0", "c-0", "d-0"], None, id="nothing in flight"),
    pytest.param([starting("x-0", "x", g("n1", 0))], [], ["c-0", "d-0"], None,
                 id="a pod starting on a-0's target: a-0 waits, and b-0 too (n1 has its one start)"),
    pytest.param([pod("v-0", "v", "n2", 0, deleting=True)], [], ["a-0", "d-0"], None,
                 id="a pod terminating on c-0's target"),
    pytest.param([], [pod("a-9", "a", None, None)], ["c-0", "d-0"], None,
                 id="a replacement of model a about to bind: a's free slot (and node n1's start) is taken"),
    pytest.param([starting("x-0", "x", g("n1", 0)), starting("y-0", "y", g("n2", 0)),
                  starting("z-0", "z", g("n3", 0)), starting("w-0", "w", g("n1", 1))], [], [],
                 "waiting for pod x-0 to be Ready", id="every target GPU busy"),
])
def test_a_wave_waits_for_gpus_in_flight(others: list[PodObj], pending: list[PodObj], wave: list[str],
                                         waiting: str | None) -> None:
    planned = {**PLANNED_FOUR, "ns/x": [g("n1", 0)], "ns/y": [g("n2", 0)], "ns/z": [g("n3", 0)],
               "ns/w": [g("n1", 1)]}
    state = choose_wave(FOUR, [s.pod for s in FOUR] + others, pending, {}, 0.0, planned, Budget(8, 1))
    assert names(state.wave) == wave
    assert state.waiting == waiting


@pytest.mark.parametrize("pods, pending, restarting", [
    pytest.param([], [], 0, id="empty"),
    pytest.param([pod("a-0", "a", "n1", 0)], [], 0, id="one Ready pod"),
    pytest.param([pod("a-0", "a", "old", 0, deleting=True)], [pod("a-1", "a", None, None)], 1,
                 id="a pod stopping and its replacement about to bind: one restart"),
    pytest.param([pod("a-0", "a", "old", 0, deleting=True), pod("b-0", "b", "old", 1, deleting=True)], [], 2,
                 id="two models stopping"),
    pytest.param([starting("a-1", "a", g("n1", 0)), starting("a-2", "a", g("n2", 0))], [], 2,
                 id="two replicas starting on planned GPUs"),
    pytest.param([pod("a-0", "a", "old", 0, ready=False)], [], 0,
                 id="a pod not Ready off its planned GPUs (a lost node) is not restarting"),
])
def test_restarting_counts_a_stop_and_its_start_once(pods: list[PodObj], pending: list[PodObj],
                                                     restarting: int) -> None:
    flight = in_flight(pods, pending, {"ns/a": [g("n1", 0), g("n2", 0)], "ns/b": [g("n3", 0)]})
    assert flight.restarting == restarting


def test_a_refused_step_keeps_its_gpus_and_the_others_go_on() -> None:
    steps = [move("a-0", "a", g("old", 0), g("n1", 0)), move("b-0", "b", g("n1", 0), g("n2", 0)),
             move("c-0", "c", g("old", 2), g("n3", 0))]
    blocked = {ObjectKey("ns", "a-0"): Blocked("EvictionBlocked", "PDB", retry_at=10.0)}
    planned = {"ns/a": [g("n1", 0)], "ns/b": [g("n2", 0)], "ns/c": [g("n3", 0)]}
    state = choose_wave(steps, [s.pod for s in steps], [], blocked, 5.0, planned, Budget(4, 4))
    assert names(state.wave) == ["c-0"]  # b-0 leaves n1/0, a-0's target: it waits behind a-0
    assert "ns/a" in state.stuck
    later = choose_wave(steps, [s.pod for s in steps], [], blocked, 10.0, planned, Budget(4, 4))
    assert names(later.wave) == ["a-0", "c-0"]


def test_the_budget_counts_restarts_already_in_flight() -> None:
    in_progress = [pod("x-0", "x", "old", 9, deleting=True), pod("y-0", "y", "old", 8, deleting=True),
                   pod("z-0", "z", "old", 7, deleting=True)]
    planned = {**PLANNED_FOUR, "ns/x": [g("n9", 0)], "ns/y": [g("n9", 1)], "ns/z": [g("n9", 2)]}
    state = choose_wave(FOUR, [s.pod for s in FOUR] + in_progress, [], {}, 0.0, planned, Budget(4, 4))
    assert state.restarting == 3
    assert names(state.wave) == ["a-0"]
    assert state.waiting is None
    none = choose_wave(FOUR, [s.pod for s in FOUR] + in_progress, [], {}, 0.0, planned, Budget(3, 4))
    assert none.wave == () and none.waiting is not None and "disruption budget" in none.waiting


def test_a_wave_is_deterministic() -> None:
    shuffled = [dataclasses.replace(s) for s in reversed(FOUR)]
    a = choose_wave(FOUR, [s.pod for s in shuffled], [], {}, 0.0, PLANNED_FOUR, Budget(4, 1))
    b = choose_wave(FOUR, [s.pod for s in FOUR], [], {}, 0.0, PLANNED_FOUR, Budget(4, 1))
    assert a == b


@pytest.mark.parametrize("replacing, wave, surging", [
    pytest.param(set(), ["a-1", "b-0"], {}, id="no surge: both models' steps start"),
    pytest.param({"a-0"}, ["b-0"], {"ns/a": "a-0"},
                 id="a surges (a-0 leaves once its replacement is Ready): a's other step waits, b's starts"),
])
def test_a_models_other_steps_wait_for_its_surge(replacing: set[str], wave: list[str],
                                                 surging: dict[str, str]) -> None:
    surge_old = pod("a-0", "a", "n1", 0)
    steps = [move("a-1", "a", g("old", 0), g("n2", 0)), move("b-0", "b", g("old", 1), g("n3", 0))]
    planned = {"ns/a": [g("n4", 0), g("n2", 0)], "ns/b": [g("n3", 0)]}
    state = choose_wave(steps, [surge_old, *(s.pod for s in steps)], [], {}, 0.0, planned, Budget(4, 4),
                        {ObjectKey(surge_old.namespace, n) for n in replacing})
    assert names(state.wave) == wave
    assert dict(state.surging) == surging
    if surging:
        assert state.waits["ns/a"] == "waiting for pod a-0's replacement to be Ready"


def test_a_models_step_waits_while_another_of_its_pods_restarts() -> None:
    """A model of N replicas keeps N - 1 serving through steps that stop first: one of its pods restarts at a time,
    while other models' steps go on."""
    starting = dataclasses.replace(pod("a-9", "a", "n4", 0), ready=False)  # bound to a planned GPU, not Ready
    planned = {**PLANNED_FOUR, "ns/a": [g("n1", 0), g("n4", 0)]}
    state = choose_wave(FOUR, [s.pod for s in FOUR] + [starting], [], {}, 0.0, planned, Budget(4, 2))
    assert names(state.wave) == ["b-0", "c-0", "d-0"]
    assert "one replica of a model restarts at a time" in state.waits["ns/a"]
    assert state.restarting == 1


def test_a_pod_on_a_gone_node_restarts_nothing_but_its_surge_is_still_a_move() -> None:
    """Nothing finalises a pod of a deleted Node until PodGC: it holds no GPU and counts for no restart, while a
    make-before-break surge for it is still its model's move in progress (Migrating stays True)."""
    lost = pod("a-0", "a", "old", 0)
    terminating = dataclasses.replace(pod("b-0", "b", "old", 1), deleting=True)
    state = choose_wave(FOUR[2:], [lost, terminating, *[s.pod for s in FOUR[2:]]], [], {}, 0.0, PLANNED_FOUR,
                        Budget(1, 1), replacing={lost.key}, gone={"old"})
    assert state.restarting == 0 and names(state.wave) == ["c-0"]
    assert state.surging == {"ns/a": "a-0"}
    counted = choose_wave(FOUR[2:], [lost, terminating, *[s.pod for s in FOUR[2:]]], [], {}, 0.0, PLANNED_FOUR,
                          Budget(1, 1), replacing={lost.key})
    assert counted.restarting == 2 and counted.wave == ()
