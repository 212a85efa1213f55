"""Memory shares: which running pods restart so that a GPU never promises more memory than it has, and which keep
the share they started with."""
from __future__ import annotations

import dataclasses

import pytest

from kvsched.api.names import MEMORY_FRACTION_ANNOTATION
from kvsched.api.objects import World
from kvsched.controller.migrations import RunningPod
from kvsched.controller.inventory import running_share
from kvsched.api.records import Eviction
from kvsched.controller.shares import Memory, held_share, plan_resizes, resize_steps
from kvsched.packer import GpuId, MigrationStep

from .fake import LATER, apply, bind_planned, deployment, node, pod, run, settle

G0 = GpuId("n1", 0)
G1 = GpuId("n1", 1)
MEMORY = {G0: 80.0, G1: 80.0}
SIZE = {"ns/a": 16.0, "ns/b": 16.0, "ns/c": 16.0}
NO_HEADROOM = Memory(inside=SIZE, context={}, memory=MEMORY, reserve={})
# 2 GiB reserve per GPU, 4 GiB engine overhead and 2 GiB CUDA context per replica: three replicas on an 80 GiB GPU
# may share 1 - (2 + 3 x 2) / 80 = 0.9 of it, and each counts as at least (16 + 4) / 80 = 0.25.
HEADROOM = Memory(inside={m: s + 4.0 for m, s in SIZE.items()}, context={m: 2.0 for m in SIZE},
                  memory=MEMORY, reserve={G0: 2.0, G1: 2.0})


def running(name: str, model: str, gpu: GpuId, share: float | None, deleting: bool = False) -> RunningPod:
    return RunningPod(f"ns/{model}", pod(name, model, gpu.node, gpu.index, fraction=share, deleting=deleting), gpu)


# (planned (model, gpu) -> share, running pods, per-replica load, plan max KVPR, pods restarted in order[, memory])
CASES = [
    pytest.param({("ns/a", G0): 0.4, ("ns/b", G0): 0.6}, [running("a-0", "a", G0, 0.6), running("b-0", "b", G0, 0.4)],
                 {"ns/a": 1.0, "ns/b": 1.0}, 1.0, [], id="drifted shares, nobody waiting: nobody restarts"),
    pytest.param({("ns/a", G0): 0.3, ("ns/b", G0): 0.3, ("ns/c", G0): 0.4},
                 [running("a-0", "a", G0, 0.6), running("b-0", "b", G0, 0.3)], {}, 1.0, ["a-0"],
                 id="a waiting replica: the holder over its planned share restarts, the other stays"),
    pytest.param({("ns/a", G0): 0.3, ("ns/b", G0): 0.3, ("ns/c", G0): 0.4},
                 [running("a-0", "a", G0, 0.4), running("b-0", "b", G0, 0.5)], {}, 1.0, ["b-0", "a-0"],
                 id="largest excess first, as many as free the memory"),
    pytest.param({("ns/a", G0): 0.3, ("ns/b", G0): 0.3, ("ns/c", G0): 0.35},
                 [running("a-0", "a", G0, 0.35), running("b-0", "b", G0, 0.3)], {}, 1.0, [],
                 id="the waiting replica fits what the holders leave: nobody restarts"),
    pytest.param({("ns/a", G1): 0.5, ("ns/c", G0): 0.5},
                 [running("a-0", "a", G0, 0.9), running("c-old", "c", G0, 0.5, deleting=True)], {}, 1.0, [],
                 id="a pod the plan moves away or one terminating is never resized"),
    pytest.param({("ns/a", G0): 0.6, ("ns/b", G0): 0.4},
                 [running("a-0", "a", G0, 0.21), running("b-0", "b", G0, 0.4)], {"ns/a": 2.0, "ns/b": 1.0}, 0.1,
                 ["a-0"], id="starved: a share that leaves its KV cache far above the plan's worst KVPR restarts"),
    pytest.param({("ns/a", G0): 0.6, ("ns/b", G0): 0.4},
                 [running("a-0", "a", G0, 0.59), running("b-0", "b", G0, 0.4)], {"ns/a": 3.0, "ns/b": 1.0}, 0.1,
                 [], id="a little under its planned share, within the stability threshold: stays"),
    pytest.param({("ns/a", G0): 0.3, ("ns/c", G0): 0.7}, [running("a-0", "a", G0, None)], {}, 1.0, [],
                 id="a pod without a share annotation counts its planned share"),
    pytest.param({("ns/a", G0): 0.3, ("ns/b", G0): 0.3, ("ns/c", G0): 0.3},
                 [running("a-0", "a", G0, 0.35), running("b-0", "b", G0, 0.3)], {}, 1.0, ["a-0"], HEADROOM,
                 id="headroom: the shares fit 1 but not 1 - (reserve + 3 contexts) / memory: the holder over restarts"),
    pytest.param({("ns/a", G0): 0.3, ("ns/b", G0): 0.3, ("ns/c", G0): 0.3},
                 [running("a-0", "a", G0, 0.3), running("b-0", "b", G0, 0.3)], {}, 1.0, [], HEADROOM,
                 id="headroom: the shares fill the bound exactly: nobody restarts"),
    pytest.param({("ns/a", G0): 0.6, ("ns/b", G0): 0.3},
                 [running("a-0", "a", G0, 0.27), running("b-0", "b", G0, 0.3)], {"ns/a": 1.0, "ns/b": 1.0}, 0.5,
                 ["a-0"], HEADROOM,
                 id="headroom: starved counts the KV memory its share leaves beyond weights and overhead"),
]


@pytest.mark.parametrize("planned, pods, load, max_kvpr, restarted, mem",
                         [pytest.param(*c.values[:5], c.values[5] if len(c.values) > 5 else NO_HEADROOM, id=c.id)
                          for c in CASES])
def test_resize_steps(planned: dict[tuple[str, GpuId], float], pods: list[RunningPod], load: dict[str, float],
                      max_kvpr: float, restarted: list[str], mem: Memory) -> None:
    steps = resize_steps(planned, pods, mem, load, max_kvpr, 0.05)
    assert [s.pod.name for s in steps] == restarted
    assert all(s.resize and s.stop_first and s.source == s.target for s in steps)


@pytest.mark.parametrize("share, planned, mem, held", [
    pytest.param(0.1, 0.5, NO_HEADROOM, 16.0 / 80.0, id="never less than its weights"),
    pytest.param(0.21, 0.5, HEADROOM, 20.0 / 80.0, id="headroom: never less than its weights plus overhead"),
    pytest.param(0.3, 0.5, NO_HEADROOM, 0.3, id="the share it runs with, not the planned one"),
    pytest.param(None, 0.5, NO_HEADROOM, 0.5, id="no share annotation: its planned share"),
    pytest.param(None, None, NO_HEADROOM, 16.0 / 80.0, id="no annotation, not planned there: its weights"),
])
def test_held_share(share: float | None, planned: float | None, mem: Memory, held: float) -> None:
    pod = running("a-0", "a", G0, share, deleting=True)
    assert held_share(pod, {} if planned is None else {("ns/a", G0): planned}, mem) == pytest.approx(held)


@pytest.mark.parametrize("text, share", [("0.420", 0.42), ("1", 1.0), ("0", None), ("1.5", None), ("x", None),
                                         (None, None)])
def test_running_share_reads_only_a_share_in_0_1(text: str | None, share: float | None) -> None:
    p = pod("p", "a", "n1", 0)
    if text is not None:
        p = dataclasses.replace(p, annotations={**p.annotations, MEMORY_FRACTION_ANNOTATION: text})
    assert running_share(p) == share


def test_a_model_added_next_to_pods_with_their_old_shares_restarts_them_in_place_one_at_a_time() -> None:
    # One 80 GiB GPU runs a and b with the shares of a two-model plan; c must join them. c's planned share does
    # not fit what a and b run with, and both a and b are planned smaller shares now, so both restart in place
    # (not moves), one eviction per decision; with the replacements bound, nothing else restarts.
    world = World(nodes=(node("n1", gpus=1),), deployments=(deployment("a", rate="4"), deployment("b", rate="2")))
    world, _ = settle(bind_planned(settle(world)[0]))
    before = {p.name: float(p.annotations[MEMORY_FRACTION_ANNOTATION]) for p in world.pods}
    assert sum(before.values()) <= 1.0
    world = dataclasses.replace(world, deployments=(*world.deployments, deployment("c", rate="4")))
    world, decisions = settle(world, rounds=6)
    evictions = [d.eviction for d in decisions if d.eviction is not None]
    assert sorted(e.pod.name for e in evictions) == ["a-0", "b-0"]
    assert all(e.resize and e.source == e.target for e in evictions)
    assert any("planned memory share" in e.message for d in decisions for e in d.events if e.reason == "Migrating")
    migrating = [c["message"] for d in decisions for w in d.statuses for c in w.status["conditions"]
                 if c["type"] == "Migrating" and c["status"] == "True"]
    assert migrating and all("to restart with a new memory share" in m and "to move" not in m for m in migrating)
    planned = {ms.name: ms.status["slots"][0]["memoryFraction"] for ms in world.model_servings}
    assert sum(planned.values()) <= 1.0 and planned["a"] < before["a-0"] and planned["b"] < before["b-0"]
    # The ReplicaSets create the replacements, the extender binds them with their planned shares.
    world = dataclasses.replace(world, pods=tuple(pod(f"{m}-1", m, "n1", 0, fraction=f) for m, f in planned.items()))
    world, decisions = settle(world, now=LATER)
    assert all(d.eviction is None for d in decisions) and decisions[-1].writes == 0


@pytest.mark.parametrize(("steps", "pods", "planned", "chosen", "expected"), [
    pytest.param((), [running("a-0", "a", G0, 0.5)], {("ns/a", G0): 0.4}, [], [], id="empty: no plan steps"),
    pytest.param((MigrationStep("ns/a", 0, G0, G0, True), MigrationStep("ns/b", 0, G0, G1)),
                 [running("a-0", "a", G0, 0.5), running("b-0", "b", G0, 0.5)],
                 {("ns/a", G0): 0.4, ("ns/b", G1): 0.5}, [], ["a-0"],
                 id="the plan's resize restarts its pod in place; its moves are not resizes"),
    pytest.param((MigrationStep("ns/a", 0, G0, G0, True),), [running("a-0", "a", G0, 0.4)],
                 {("ns/a", G0): 0.4}, [], [], id="already at its planned share: a restart would change nothing"),
    pytest.param((MigrationStep("ns/a", 0, G0, G0, True),), [running("a-0", "a", G0, 0.5, deleting=True)],
                 {("ns/a", G0): 0.4}, [], [], id="a terminating pod is not restarted again"),
    pytest.param((MigrationStep("ns/a", 0, G0, G0, True),), [running("a-0", "a", G0, 0.5)],
                 {("ns/a", G0): 0.4}, ["a-0"], [], id="the share rule chose it already: listed once"),
])
def test_plan_resizes(steps: tuple[MigrationStep, ...], pods: list[RunningPod],
                      planned: dict[tuple[str, GpuId], float], chosen: list[str], expected: list[str]) -> None:
    already = [Eviction(r.model, r.pod, r.gpu, r.gpu, stop_first=True, resize=True)
               for r in pods if r.pod.name in chosen]
    out = plan_resizes(steps, pods, already, planned)
    assert [e.pod.name for e in out] == expected
    assert all(e.resize and e.stop_first and e.source == e.target for e in out)
