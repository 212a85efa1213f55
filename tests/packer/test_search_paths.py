"""The search paths only large instances take, on instances just large enough to take them.

Above `exact_max_items` (40) replicas `solve` skips the exact stage and runs re-packing of the peak, descent and
the iterated local search; above 512 GPUs the bisection runs only the `fill` candidates. Each test checks the
invariants every plan must meet (valid, no GPU over memory, reported KVPR equals recomputed, no worse than the
greedy, deterministic for the same generator) while a ticking fake clock and a small budget keep it short and
independent of the machine's speed.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from kvsched.packer import Gpu, Model, PackOptions, Plan, solve
from kvsched.packer.bounds import lower_bound
from kvsched.packer.deadline import Deadline
from kvsched.packer.greedy import greedy
from kvsched.packer.improve import descend, improve
from kvsched.packer.instance import Instance, IntArray, build_instance
from kvsched.packer.lns import iterated_search, repack_peak
from kvsched.packer.search import FILL_ONLY_ABOVE_GPUS, bisect_target, candidates
from tests.packer.brute import oracle_max_kvpr, valid
from tests.packer.test_solve import check_plan


class TickClock:
    """A clock that advances `step_s` on every read: budgets become counts of deadline checks."""

    def __init__(self, step_s: float = 1e-3) -> None:
        self.now = 0.0
        self.step_s = step_s

    def __call__(self) -> float:
        self.now += self.step_s
        return self.now


def generated(n_gpus: int, models_per_gpu: int, seed: int,
              memories: tuple[float, ...] = (80.0,)) -> tuple[list[Model], list[Gpu]]:
    """n_gpus GPUs (memories cycled) on nodes of 8, models_per_gpu * n_gpus single-replica models of 8-24 GiB."""
    rng = np.random.default_rng(seed)
    gpus = [Gpu(f"node{g // 8}", g % 8, memories[g % len(memories)]) for g in range(n_gpus)]
    models = [Model(f"m{j}", float(rng.uniform(8, 24)), float(rng.uniform(1, 10)), float(rng.uniform(1, 5)))
              for j in range(models_per_gpu * n_gpus)]
    return models, gpus


def replicated(seed: int) -> tuple[list[Model], list[Gpu]]:
    """12 mixed 40/80/141 GiB GPUs and 24 models of 1-3 replicas (about 50 replicas)."""
    rng = np.random.default_rng(seed)
    gpus = [Gpu(f"node{g // 4}", g % 4, (40.0, 80.0, 141.0)[g % 3]) for g in range(12)]
    models = [Model(f"m{j}", float(rng.uniform(4, 30)), float(rng.uniform(1, 10)), 1.0, int(rng.integers(1, 4)))
              for j in range(24)]
    return models, gpus


def greedy_value(inst: Instance) -> float:
    start = greedy(inst)
    assert (start >= 0).all() and valid(inst, start), "the cases are chosen so that the greedy places everything"
    return oracle_max_kvpr(inst, start)


def check_phase(inst: Instance, before: IntArray, after: IntArray, reported: float) -> None:
    assert valid(inst, after)
    assert ((after >= 0) == (before >= 0)).all(), "a phase neither drops nor adds replicas"
    assert reported == pytest.approx(oracle_max_kvpr(inst, after), rel=1e-9)
    assert reported <= oracle_max_kvpr(inst, before) * (1 + 1e-12), "a phase never raises the max KVPR"


@pytest.fixture(scope="module")
def mid_sized() -> tuple[Instance, IntArray]:
    """48 replicas on 16 GPUs, improved by local search: where re-packing and descent start in `solve`."""
    inst = build_instance(*generated(16, 3, seed=1))
    greedy_value(inst)
    return inst, improve(inst, greedy(inst)).assign


def test_repack_peak_on_48_replicas_is_valid_and_deterministic(mid_sized: tuple[Instance, IntArray]) -> None:
    inst, start = mid_sized
    first = repack_peak(inst, start, np.random.default_rng(5))
    check_phase(inst, start, first.assign, first.max_kvpr)
    assert first.attempts > 0
    again = repack_peak(inst, start, np.random.default_rng(5))
    assert again.assign.tolist() == first.assign.tolist()


def test_descend_on_48_replicas_lowers_the_peak_and_stays_valid(mid_sized: tuple[Instance, IntArray]) -> None:
    inst, start = mid_sized
    down = descend(inst, start, 0.0, deadline=Deadline.start(TickClock(), 0.5))
    check_phase(inst, start, down.assign, down.max_kvpr)
    assert down.steps > 0, "descent tried at least one lower target"


def test_iterated_search_on_48_replicas_is_valid_and_deterministic(mid_sized: tuple[Instance, IntArray]) -> None:
    inst, start = mid_sized
    runs = [iterated_search(inst, start, np.random.default_rng(9), Deadline.start(TickClock(), 0.3))
            for _ in range(2)]
    check_phase(inst, start, runs[0], oracle_max_kvpr(inst, runs[0]))
    assert runs[0].tolist() == runs[1].tolist()


def _solve_twice(models: list[Model], gpus: list[Gpu], budget_s: float, seed: int) -> tuple[Plan, Plan]:
    options = PackOptions(time_budget_s=budget_s)
    return tuple(solve(models, gpus, options=options, clock=TickClock(), rng=np.random.default_rng(seed))
                 for _ in range(2))  # type: ignore[return-value]


@pytest.mark.parametrize(
    ("case", "budget_s"),
    [
        pytest.param(lambda: generated(16, 3, seed=1), 0.2, id="48 replicas on 16 GPUs: no exact stage"),
        pytest.param(lambda: generated(16, 3, seed=2, memories=(40.0, 80.0, 141.0)), 0.2,
                     id="48 replicas on mixed 40/80/141 GiB GPUs"),
        pytest.param(lambda: replicated(seed=3), 0.2, id="24 models of 1-3 replicas on 12 mixed GPUs"),
    ],
)
def test_solve_above_the_exact_stage_is_valid_no_worse_than_greedy_and_deterministic(
        case: object, budget_s: float) -> None:
    models, gpus = case()  # type: ignore[operator]
    inst = build_instance(models, gpus)
    assert inst.n_items > PackOptions().exact_max_items, "the case must take the path without the exact stage"
    plan, again = _solve_twice(models, gpus, budget_s, seed=4)
    check_plan(models, gpus, plan)
    assert not plan.unplaced
    assert plan.max_kvpr <= greedy_value(inst) * (1 + 1e-9)
    assert plan.stats.local_search_moves > 0
    assert plan == again


def test_small_instance_the_exact_search_cannot_prove_gets_the_improving_phases() -> None:
    # 27 replicas on 9 mixed GPUs: the exact stage runs, but with 2000 nodes it proves nothing; the improving
    # phases of large instances then run between its two halves.
    models, gpus = generated(9, 3, seed=8, memories=(40.0, 80.0, 141.0))
    inst = build_instance(models, gpus)
    options = PackOptions(exact_node_limit=2000, time_budget_s=0.04)
    assert inst.n_items <= options.exact_max_items
    plans = [solve(models, gpus, options=options, clock=TickClock(), rng=np.random.default_rng(2)) for _ in range(2)]
    check_plan(models, gpus, plans[0])
    assert not plans[0].stats.proven_optimal
    assert plans[0].max_kvpr <= greedy_value(inst) * (1 + 1e-9)
    assert plans[0] == plans[1]
    without = solve(models, gpus, options=dataclasses.replace(options, local_search=False), clock=TickClock())
    assert plans[0].max_kvpr <= without.max_kvpr * (1 + 1e-12)


def test_candidates_above_512_gpus_are_the_fill_orders_only() -> None:
    assert all(policy == "fill" for _, policy in candidates(FILL_ONLY_ABOVE_GPUS + 1))
    assert any(policy != "fill" for _, policy in candidates(FILL_ONLY_ABOVE_GPUS))


def test_bisection_above_512_gpus_brackets_and_beats_the_greedy() -> None:
    models, gpus = generated(FILL_ONLY_ABOVE_GPUS + 8, 3, seed=6)
    inst = build_instance(models, gpus)
    items = list(range(inst.n_items))
    upper = greedy_value(inst)
    lower = lower_bound(inst.item_load, inst.item_size, inst.gpu_memory, upper=upper)
    res = bisect_target(inst, items, lower, upper, upper_assign=greedy(inst), max_iterations=2)
    assert res.assign is not None and valid(inst, res.assign)
    assert res.max_kvpr == pytest.approx(oracle_max_kvpr(inst, res.assign), rel=1e-9)
    assert lower <= res.lower <= res.max_kvpr <= upper
    assert res.max_kvpr < upper, "the fill passes beat the greedy by far at this load"


def test_solve_above_512_gpus_is_valid_no_worse_than_greedy_and_deterministic() -> None:
    models, gpus = generated(FILL_ONLY_ABOVE_GPUS + 8, 3, seed=6)
    inst = build_instance(models, gpus)
    plan, again = _solve_twice(models, gpus, 0.03, seed=7)
    check_plan(models, gpus, plan)
    assert not plan.unplaced
    assert plan.max_kvpr <= greedy_value(inst) * (1 + 1e-9)
    assert plan.stats.bisection_iterations >= 1 and plan.stats.local_search_moves > 0
    assert plan == again
