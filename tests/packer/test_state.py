"""The shared pieces: the memory-fit rule and comparisons (kvpr), GpuState's invariants, Deadline."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kvsched.packer import Gpu, Model
from kvsched.packer.deadline import NEVER, Deadline
from kvsched.packer.instance import build_instance
from kvsched.packer.kvpr import below, fits, improves, reaches
from kvsched.packer.state import GpuState
from tests.packer.brute import oracle_kvpr, totals
from tests.packer.conftest import tiny_cluster


@pytest.mark.parametrize(
    ("load", "size", "weights", "memory", "gpu_load", "expected"),
    [
        pytest.param(1.0, 16.0, 0.0, 80.0, 0.0, True, id="one model on an empty GPU"),
        pytest.param(1.0, 80.0, 0.0, 80.0, 0.0, False, id="weights fill the GPU, with load"),
        pytest.param(0.0, 80.0, 0.0, 80.0, 0.0, True, id="weights fill the GPU, no load"),
        pytest.param(0.0, 40.0, 40.0, 80.0, 2.0, False, id="idle model fills a loaded GPU's last GiB"),
        pytest.param(1.0, 50.0, 40.0, 80.0, 0.0, False, id="over memory"),
        pytest.param(0.0, 0.5, 79.0, 80.0, 0.0, True, id="zero free memory after, nothing loaded"),
    ],
)
def test_memory_fit_rule(load: float, size: float, weights: float, memory: float, gpu_load: float,
                         expected: bool) -> None:
    assert fits(load, size, weights, memory, gpu_load) is expected


def test_comparisons_share_one_tolerance() -> None:
    assert improves(below(1.0) * 0.999999, 1.0)
    assert not improves(1.0 * (1 - 1e-12), 1.0), "a gain below the tolerance is noise"
    assert reaches(1.0 * (1 + 1e-12), 1.0) and not reaches(1.0 * (1 + 1e-6), 1.0)


@settings(max_examples=60, deadline=None)
@given(tiny_cluster(), st.data())
def test_gpu_state_totals_follow_puts_and_takes(cluster: tuple[list[Model], list[Gpu]], data: st.DataObject) -> None:
    inst = build_instance(*cluster)
    target = data.draw(st.sampled_from([0.05, 0.5, 3.0]))
    state = GpuState.empty(inst, target, sorted_residuals=True)
    for _ in range(data.draw(st.integers(1, 12))):
        placed = [i for i in range(inst.n_items) if state.assign[i] >= 0]
        if placed and data.draw(st.booleans()):
            state.take(data.draw(st.sampled_from(placed)))
        elif len(placed) < inst.n_items:
            i = data.draw(st.sampled_from([i for i in range(inst.n_items) if state.assign[i] < 0]))
            # put's contract: never a second replica of a model on one GPU (capacity is not its concern)
            free = [g for g in range(inst.n_gpus) if int(inst.item_group[i]) not in state.groups_on[g]]
            if free:
                state.put(i, data.draw(st.sampled_from(free)))
    load, weights = totals(inst, state.assign)
    assert state.load == pytest.approx(load, abs=1e-9)
    assert state.weights == pytest.approx(weights, abs=1e-9)
    expected_residual = target * inst.gpu_memory - np.asarray(load) - target * np.asarray(weights)
    assert state.residual == pytest.approx(expected_residual, abs=1e-9)
    for g in range(inst.n_gpus):
        on = [i for i in range(inst.n_items) if state.assign[i] == g]
        assert sorted(state.on_gpu[g]) == on
        assert state.groups_on[g] == {int(inst.item_group[i]) for i in on}
    # best fit agrees with a scan: the least residual that takes the item among GPUs without its model
    for i in range(inst.n_items):
        if state.assign[i] < 0:
            ok = [g for g in range(inst.n_gpus) if state.fits(i, g)]
            expected = min(ok, key=lambda g: (state.residual[g], g)) if ok else -1
            assert state.best_fit(i) == expected
    state.retarget(target * 2)
    assert state.residual == pytest.approx(2 * target * inst.gpu_memory - np.asarray(load)
                                           - 2 * target * np.asarray(weights), abs=1e-9)


@settings(max_examples=60, deadline=None)
@given(tiny_cluster(), st.data())
def test_gpu_state_kvpr_queries_match_the_oracle(cluster: tuple[list[Model], list[Gpu]],
                                                 data: st.DataObject) -> None:
    """The KVPR views `replan` uses: now, with an item added (inf where its model runs), without an item."""
    inst = build_instance(*cluster)
    assign = np.asarray([data.draw(st.integers(-1, inst.n_gpus - 1)) for _ in range(inst.n_items)], dtype=np.int64)
    for grp in set(inst.item_group.tolist()):  # replicas of a model on distinct GPUs, as every caller keeps them
        seen: set[int] = set()
        for i in np.nonzero(inst.item_group == grp)[0].tolist():
            if assign[i] in seen:
                assign[i] = -1
            seen.add(int(assign[i]))
    state = GpuState.totals_only(inst, assign)
    assert state.assign is not assign and np.array_equal(state.assign, assign)
    load, weights = totals(inst, assign)
    memory = inst.gpu_memory.tolist()
    expected = [oracle_kvpr(load[g], weights[g], memory[g]) for g in range(inst.n_gpus)]
    assert state.kvprs().tolist() == pytest.approx(expected, rel=1e-9)
    for i in range(inst.n_items):
        grp = int(inst.item_group[i])
        holders = {int(assign[k]) for k in range(inst.n_items) if assign[k] >= 0 and int(inst.item_group[k]) == grp}
        with_i = [math.inf if g in holders else oracle_kvpr(load[g] + float(inst.item_load[i]),
                                                            weights[g] + float(inst.item_size[i]), memory[g])
                  for g in range(inst.n_gpus)]
        assert state.kvprs_with(i).tolist() == pytest.approx(with_i, rel=1e-9)
        for g in range(inst.n_gpus):
            if g not in holders:
                assert state.kvpr_with(i, g) == pytest.approx(with_i[g], rel=1e-9)
        if assign[i] >= 0:
            g = int(assign[i])
            assert state.kvpr_without(i) == pytest.approx(
                oracle_kvpr(load[g] - float(inst.item_load[i]), weights[g] - float(inst.item_size[i]), memory[g]),
                rel=1e-9, abs=1e-12)


class _Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_deadline_counts_from_its_start_on_the_injected_clock() -> None:
    clock = _Clock()
    deadline = Deadline.start(clock, 2.0)
    assert deadline.elapsed_s() == 0.0 and deadline.remaining_s() == 2.0 and not deadline.expired()
    clock.now = 101.5
    assert deadline.remaining_s() == pytest.approx(0.5) and not deadline.expired()
    assert deadline.share(0.5).expired(), "a phase with half the budget is over after 1.5 s"
    clock.now = 102.5
    assert deadline.expired() and deadline.remaining_s() == pytest.approx(-0.5)


def test_a_deadline_without_budget_never_expires() -> None:
    assert not NEVER.expired() and NEVER.remaining_s() == math.inf
    clock = _Clock()
    zero = Deadline.start(clock, 0.0)
    assert not zero.expired(), "a clock that has not moved has not passed a budget of 0"
    clock.now += 1e-6
    assert zero.expired()
