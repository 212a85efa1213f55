"""Running replicas the plan leaves unplaced stop only where the replicas planned on their GPU need the memory
(kvsched.controller.leftovers)."""
from __future__ import annotations

import pytest

from kvsched.api.objects import ObjectKey
from kvsched.controller.leftovers import leftovers, stop_steps
from kvsched.controller.migrations import RunningPod
from kvsched.controller.shares import Memory
from kvsched.packer import GpuId

from .fake import pod

G0 = GpuId("n1", 0)
G1 = GpuId("n1", 1)
MEMORY = {G0: 40.0, G1: 40.0}
SIZE = {"ns/small": 2.5, "ns/big": 24.0, "ns/mid": 10.0}
MEM = Memory(inside=SIZE, context={}, memory=MEMORY, reserve={})
FOOTPRINT = dict(SIZE)
USABLE = dict(MEMORY)


def running(name: str, model: str, gpu: GpuId, share: float | None, deleting: bool = False) -> RunningPod:
    return RunningPod(f"ns/{model}", pod(name, model, gpu.node, gpu.index, fraction=share, deleting=deleting), gpu)


# (planned (model, gpu) -> share, running pods, replicas per model, leaving pods, pods stopped in order[, usable])
CASES = [
    pytest.param({("ns/small", G0): 0.5, ("ns/mid", G0): 0.45, ("ns/big", G1): 0.9},
                 [running("big-0", "big", G1, 0.9), running("big-1", "big", G0, 0.65),
                  running("small-0", "small", G0, 0.1)],
                 {"ns/big": 2, "ns/small": 1, "ns/mid": 1}, (), ["big-1"],
                 id="the world the random test found: an unplaced big replica holds the shares planned for others"),
    pytest.param({("ns/small", G0): 0.2, ("ns/big", G1): 0.9},
                 [running("big-0", "big", G1, 0.9), running("big-1", "big", G0, 0.65),
                  running("small-0", "small", G0, 0.2)],
                 {"ns/big": 2, "ns/small": 1}, (), [],
                 id="the planned replicas fit beside it: it keeps serving"),
    pytest.param({("ns/big", G1): 0.9},
                 [running("big-0", "big", G1, 0.9), running("big-1", "big", G0, 0.65)],
                 {"ns/big": 2}, (), [],
                 id="nothing planned on its GPU (a cordoned node, say): it keeps serving"),
    pytest.param({("ns/small", G0): 0.5, ("ns/mid", G0): 0.45, ("ns/big", G1): 0.9},
                 [running("big-0", "big", G1, 0.9), running("big-1", "big", G0, 0.65),
                  running("big-2", "big", G0, 0.65)],
                 {"ns/big": 2, "ns/small": 1, "ns/mid": 1}, (), [],
                 id="more live pods than replicas: a scale-down its ReplicaSet carries out"),
    pytest.param({("ns/small", G0): 0.5, ("ns/mid", G0): 0.45, ("ns/big", G1): 0.9},
                 [running("big-0", "big", G1, 0.9), running("big-1", "big", G0, 0.65)],
                 {"ns/big": 2, "ns/small": 1, "ns/mid": 1}, ("big-1",), [],
                 id="the old pod of a make-before-break move is left to the surge"),
    pytest.param({("ns/small", G0): 0.5, ("ns/mid", G0): 0.45, ("ns/big", G1): 0.9},
                 [running("big-0", "big", G1, 0.9), running("big-1", "big", G0, 0.65, deleting=True)],
                 {"ns/big": 2, "ns/small": 1, "ns/mid": 1}, (), [],
                 id="a terminating pod is leaving anyway"),
    pytest.param({("ns/small", G0): 0.4},
                 [running("mid-0", "mid", G0, 0.3), running("mid-1", "mid", G1, 0.3),
                  running("big-1", "big", G0, 0.65)],
                 {"ns/mid": 2, "ns/small": 1, "ns/big": 1}, (), ["big-1"],
                 id="two leftovers on one GPU: the largest share stops first, as few as make the plan fit"),
    pytest.param({("ns/small", G0): 0.1, ("ns/mid", G0): 0.3},
                 [running("big-1", "big", G0, 0.5)],
                 {"ns/small": 1, "ns/mid": 1, "ns/big": 1}, (), ["big-1"], {G0: 36.0, G1: 40.0},
                 id="shares fit, weights do not: 2.5 + 10 + 24 GiB > 36 GiB usable"),
]


@pytest.mark.parametrize("planned, pods, replicas, leaving, stopped, usable",
                         [pytest.param(*c.values[:5], c.values[5] if len(c.values) > 5 else USABLE, id=c.id)
                          for c in CASES])
def test_stop_steps(planned: dict[tuple[str, GpuId], float], pods: list[RunningPod], replicas: dict[str, int],
                    leaving: tuple[str, ...], stopped: list[str], usable: dict[GpuId, float]) -> None:
    by_model: dict[str, list[GpuId]] = {}
    for model, gpu in planned:
        by_model.setdefault(model, []).append(gpu)
    left = leftovers(by_model, pods, replicas, moved=(), leaving={ObjectKey("ns", n) for n in leaving})
    steps = stop_steps(planned, left, MEM, FOOTPRINT, usable)
    assert [s.pod.name for s in steps] == stopped
    assert all(s.stop and s.stop_first and not s.resize and s.source == s.target for s in steps)


def test_a_pod_another_step_moves_is_no_leftover() -> None:
    pods = [running("big-0", "big", G1, 0.65)]
    assert leftovers({"ns/big": [G0]}, pods, {"ns/big": 1}, moved=set()) == pods
    assert leftovers({"ns/big": [G0]}, pods, {"ns/big": 1}, moved={pods[0].pod.key}) == []
