"""Re-planning: `solve` with replicas running. Property tests on tiny clusters after one change, against a
brute-force oracle that computes KVPR, fit and moves itself; table cases; the step order on its own.

A move is a running replica whose GPU is no longer one of its model's GPUs (replica numbers do not matter):
for model j running on GPUs R_j and planned on P_j, moves_j = min(|R_j|, |P_j|) - |R_j & P_j|.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from pathlib import Path
from collections import Counter
from typing import Sequence

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

from kvsched.packer import (
    UNPLACED_CAUSES,
    Gpu,
    GpuId,
    Model,
    PackOptions,
    Plan,
    Slot,
    solve,
)
from kvsched.packer.instance import build_instance
from kvsched.packer.steps import order_steps
from tests.packer.conftest import tiny_cluster

H100 = 80.0
EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "cluster.yaml"
GIB_SLACK = 1e-6


def _clock() -> float:
    return 0.0


# ---- the oracle: KVPR, fit, moves and memory computed here, not imported from the packer ----


def oracle_kvpr(load: float, weights: float, memory: float) -> float:
    """N / (M - W); 0 for an idle GPU whose weights fit; inf when over memory or weights fill a loaded GPU."""
    if weights > memory + GIB_SLACK:
        return math.inf
    if load <= 0:
        return 0.0
    free = memory - weights
    return load / free if free > 0 else math.inf


def replicas_of(models: Sequence[Model]) -> list[tuple[str, float, float]]:
    """One (model, load, size) per replica."""
    return [(m.name, m.rate_rps / m.slo_s / m.replicas, m.size_gib) for m in models for _ in range(m.replicas)]


def peak_of(models: Sequence[Model], gpus: Sequence[Gpu], where: Sequence[GpuId]) -> float:
    """Max KVPR of replicas (in `replicas_of` order) placed on `where`; inf when two replicas of a model share a
    GPU or a GPU cannot hold what it gets."""
    load = {g.id: 0.0 for g in gpus}
    weights = {g.id: 0.0 for g in gpus}
    seen: set[tuple[str, GpuId]] = set()
    for (name, n, m), g in zip(replicas_of(models), where):
        if (name, g) in seen:
            return math.inf
        seen.add((name, g))
        load[g] += n
        weights[g] += m
    return max((oracle_kvpr(load[g.id], weights[g.id], g.memory_gib) for g in gpus), default=0.0)


def moves_between(current: Sequence[Slot], models: Sequence[Model], gpus: Sequence[Gpu],
                  planned: dict[str, set[GpuId]]) -> int:
    """sum over models of min(|R_j|, |P_j|) - |R_j & P_j|, R_j the GPUs (still listed) it runs on now."""
    names = {m.name for m in models}
    ids = {g.id for g in gpus}
    running: dict[str, set[GpuId]] = {}
    for s in current:
        if s.model in names and s.gpu in ids:
            running.setdefault(s.model, set()).add(s.gpu)
    return sum(min(len(r), len(planned.get(name, set()))) - len(r & planned.get(name, set()))
               for name, r in running.items())


def planned_gpus(plan: Plan) -> dict[str, set[GpuId]]:
    out: dict[str, set[GpuId]] = {}
    for p in plan.placements:
        out.setdefault(p.model, set()).add(p.gpu)
    return out


@dataclasses.dataclass(frozen=True)
class Oracle:
    """Every complete valid assignment's (max KVPR, moves), by brute force over G^n assignments."""

    outcomes: tuple[tuple[float, int], ...]

    @property
    def optimum(self) -> float:
        return min(peak for peak, _ in self.outcomes)

    def fewest_moves(self, target: float) -> tuple[int, float]:
        """(fewest moves with max KVPR <= target, the lowest max KVPR among those)."""
        return min((moves, peak) for peak, moves in self.outcomes if peak <= target * (1 + 1e-9))

    def lowest_peak(self, max_moves: int) -> float:
        return min(peak for peak, moves in self.outcomes if moves <= max_moves)


def oracle(models: Sequence[Model], gpus: Sequence[Gpu], current: Sequence[Slot]) -> Oracle:
    reps = replicas_of(models)
    ids = [g.id for g in gpus]
    outcomes = []
    for combo in itertools.product(ids, repeat=len(reps)):
        peak = peak_of(models, gpus, combo)
        if math.isfinite(peak):
            planned: dict[str, set[GpuId]] = {}
            for (name, _, _), g in zip(reps, combo):
                planned.setdefault(name, set()).add(g)
            outcomes.append((peak, moves_between(current, models, gpus, planned)))
    return Oracle(tuple(outcomes))


def check_plan(models: Sequence[Model], gpus: Sequence[Gpu], plan: Plan) -> None:
    """Every replica placed once or reported with a known cause; no GPU over memory; max KVPR recomputed."""
    expected = Counter((m.name, r) for m in models for r in range(m.replicas))
    seen = Counter((p.model, p.replica) for p in plan.placements) + Counter((u.model, u.replica)
                                                                            for u in plan.unplaced)
    assert seen == expected
    assert all(u.cause in UNPLACED_CAUSES for u in plan.unplaced)
    by_name = {m.name: m for m in models}
    load = {g.id: 0.0 for g in gpus}
    weights = {g.id: 0.0 for g in gpus}
    for p in plan.placements:
        m = by_name[p.model]
        load[p.gpu] += m.rate_rps / m.slo_s / m.replicas
        weights[p.gpu] += m.size_gib
    peak = max((oracle_kvpr(load[g.id], weights[g.id], g.memory_gib) for g in gpus), default=0.0)
    assert math.isfinite(peak) or not plan.placements
    assert plan.max_kvpr == pytest.approx(peak, rel=1e-9, abs=1e-12)
    assert len({(p.model, p.gpu) for p in plan.placements}) == len(plan.placements)


def simulate_steps(models: Sequence[Model], gpus: Sequence[Gpu], current: Sequence[Slot], plan: Plan) -> None:
    """Carry out plan.steps one at a time and check that no GPU ever holds more weights than its memory.

    Start: the running replicas the plan keeps (same model, same GPU) and those a step moves; the rest stop
    first. A step without stop_first starts the new replica (the target must have room), then stops the old;
    with stop_first it stops the old at once and the new starts as soon as its target has room. At the end
    every GPU holds exactly the plan's weights.
    """
    size = {m.name: m.size_gib for m in models}
    memory = {g.id: g.memory_gib for g in gpus}
    planned = {(p.model, p.gpu) for p in plan.placements}
    sources = {(s.model, s.source) for s in plan.steps if s.source is not None}
    held = {(s.model, s.gpu) for s in current if (s.model, s.gpu) in planned | sources}
    weights = {g: 0.0 for g in memory}
    for name, g in held:
        weights[g] += size[name]
    waiting: list[tuple[str, GpuId]] = []

    def start(name: str, g: GpuId) -> bool:
        if weights[g] + size[name] > memory[g] + GIB_SLACK:
            return False
        weights[g] += size[name]
        return True

    for step in plan.steps:
        if step.source is not None:
            assert (step.model, step.source) in held, f"{step} moves a replica that does not run there"
        if step.stop_first:
            assert step.source is not None
            held.remove((step.model, step.source))
            weights[step.source] -= size[step.model]
            waiting.append((step.model, step.target))
        else:
            assert start(step.model, step.target), f"{step} starts on a GPU without room"
            if step.source is not None:
                held.remove((step.model, step.source))
                weights[step.source] -= size[step.model]
        waiting = [w for w in waiting if not start(*w)]
    assert not waiting, "a stopped replica never got room to start"
    final = {g.gpu: g.used_memory_gib for g in plan.gpus}
    for g in memory:
        assert weights[g] == pytest.approx(final[g], abs=1e-6)


# ---- strategies: a tiny cluster, its plan as the running placement, then one change ----

CHANGES = ("none", "add model", "rate up", "rate down", "remove model", "drop gpu", "add gpu", "grow model",
           "add replica", "drop replica")


@st.composite
def changed_cluster(draw: st.DrawFn) -> tuple[list[Model], list[Gpu], list[Slot], list[Model], list[Gpu], str]:
    """(models, gpus) before, the running slots (their plan), and (models, gpus) after one change."""
    models, gpus = draw(tiny_cluster(max_models=3, max_gpus=3, max_replicas=2))
    before = solve(models, gpus, clock=_clock)
    current = [Slot(p.model, p.replica, p.gpu) for p in before.placements]
    change = draw(st.sampled_from(CHANGES))
    new_models, new_gpus = list(models), list(gpus)
    j = draw(st.integers(0, len(models) - 1))
    if change == "add model":
        new_models.append(Model("new", float(draw(st.integers(1, 30))), float(draw(st.integers(0, 10))), 1.0))
    elif change in ("rate up", "rate down"):
        factor = draw(st.sampled_from([1.6, 3.0])) if change == "rate up" else 0.5
        new_models[j] = dataclasses.replace(models[j], rate_rps=models[j].rate_rps * factor)
    elif change == "remove model":
        del new_models[j]
    elif change == "drop gpu":
        assume(len(gpus) > 1)
        del new_gpus[draw(st.integers(0, len(gpus) - 1))]
    elif change == "add gpu":
        new_gpus.append(Gpu("added", 0, float(draw(st.sampled_from([24, 40, 80])))))
    elif change == "grow model":
        new_models[j] = dataclasses.replace(models[j], size_gib=models[j].size_gib + draw(st.integers(5, 30)))
    elif change == "add replica":
        assume(sum(m.replicas for m in models) < 6)
        new_models[j] = dataclasses.replace(models[j], replicas=models[j].replicas + 1)
    elif change == "drop replica":
        assume(models[j].replicas > 1)
        new_models[j] = dataclasses.replace(models[j], replicas=models[j].replicas - 1)
    return models, gpus, current, new_models, new_gpus, change


TINY = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@TINY
@given(changed_cluster(), st.sampled_from([0.0, 0.05, 0.2]))
def test_replan_is_valid_and_its_steps_respect_memory(case: tuple[list[Model], list[Gpu], list[Slot], list[Model],
                                                                  list[Gpu], str], threshold: float) -> None:
    _, _, current, models, gpus, _ = case
    plan = solve(models, gpus, current=current, options=PackOptions(stability_threshold_ratio=threshold),
                 clock=_clock)
    check_plan(models, gpus, plan)
    assert plan.moves == moves_between(current, models, gpus, planned_gpus(plan))
    names, ids = {m.name for m in models}, {g.id for g in gpus}
    running = any(s.model in names and s.gpu in ids for s in current)
    assert plan.kept_current == (running and plan.moves == 0)
    simulate_steps(models, gpus, current, plan)
    again = solve(models, gpus, current=current, options=PackOptions(stability_threshold_ratio=threshold),
                  clock=_clock)
    assert again.placements == plan.placements and again.steps == plan.steps, "deterministic"


@TINY
@given(changed_cluster(), st.sampled_from([0.0, 0.05, 0.2]))
def test_replan_moves_no_more_than_a_scratch_plan_relabelled(
        case: tuple[list[Model], list[Gpu], list[Slot], list[Model], list[Gpu], str], threshold: float) -> None:
    _, _, current, models, gpus, _ = case
    options = PackOptions(stability_threshold_ratio=threshold)
    plan = solve(models, gpus, current=current, options=options, clock=_clock)
    scratch = solve(models, gpus, options=options, clock=_clock)
    assume(len(scratch.unplaced) == len(plan.unplaced))
    # The best relabelling of the scratch plan: GPUs permuted among GPUs of equal memory.
    fewest = math.inf
    ids = [g.id for g in gpus]
    for perm in itertools.permutations(range(len(gpus))):
        if any(gpus[a].memory_gib != gpus[b].memory_gib for a, b in enumerate(perm)):
            continue
        rename = {ids[a]: ids[b] for a, b in enumerate(perm)}
        planned: dict[str, set[GpuId]] = {}
        for p in scratch.placements:
            planned.setdefault(p.model, set()).add(rename[p.gpu])
        fewest = min(fewest, moves_between(current, models, gpus, planned))
    assert plan.moves <= fewest


@TINY
@given(changed_cluster(), st.sampled_from([0.0, 0.05, 0.2]))
def test_replan_matches_the_brute_force_fewest_moves(
        case: tuple[list[Model], list[Gpu], list[Slot], list[Model], list[Gpu], str], threshold: float) -> None:
    _, _, current, models, gpus, _ = case
    truth = oracle(models, gpus, current)
    assume(truth.outcomes)  # some assignment places every replica
    plan = solve(models, gpus, current=current, options=PackOptions(stability_threshold_ratio=threshold),
                 clock=_clock)
    assume(not plan.unplaced)
    target = (1 + threshold) * truth.optimum
    fewest, tie_peak = truth.fewest_moves(target)
    assert plan.max_kvpr <= target * (1 + 1e-9)
    assert plan.moves == fewest
    # Ties go to the lower peak; a kept plan's replicas that do not run yet are optimised around the running
    # ones, up to the settled share (0.2%) when a lower bound shows it that close.
    assert plan.max_kvpr <= tie_peak * (1 + (0.002 if plan.moves == 0 else 0.0)) * (1 + 1e-9)


@TINY
@given(changed_cluster(), st.integers(0, 3))
def test_the_budget_caps_moves_and_gets_the_lowest_peak_within_it(
        case: tuple[list[Model], list[Gpu], list[Slot], list[Model], list[Gpu], str], budget: int) -> None:
    _, _, current, models, gpus, _ = case
    capped = solve(models, gpus, current=current, options=PackOptions(stability_threshold_ratio=0.0,
                                                                      max_migrations=budget), clock=_clock)
    forced = solve(models, gpus, current=current, options=PackOptions(stability_threshold_ratio=0.0,
                                                                      max_migrations=0), clock=_clock)
    check_plan(models, gpus, capped)
    simulate_steps(models, gpus, current, capped)
    assert capped.moves <= budget + forced.moves
    assert capped.next_move_gain >= 0
    assume(forced.moves == 0 and not capped.unplaced)  # nothing forced: the cap is exact
    truth = oracle(models, gpus, current)
    assume(truth.outcomes)
    fewest, _ = truth.fewest_moves(truth.optimum)
    if fewest <= budget:
        assert capped.moves == fewest
        assert capped.next_move_gain == 0
    else:
        assert capped.moves <= budget
        assert capped.max_kvpr == pytest.approx(truth.lowest_peak(budget), rel=1e-9)


@TINY
@given(tiny_cluster(max_models=3, max_gpus=3), st.sampled_from([1.0, 1.01, 1.03]))
@example(([Model("m0", 2.0, 1.0, 0.5, 2), Model("m1", 38.0, 0.0, 0.5, 2), Model("m2", 1.0, 1.0, 0.5, 1)],
          [Gpu("n0", 0, 24.0), Gpu("n1", 1, 40.0), Gpu("n0", 2, 40.0)]), 1.0)  # re-plan places one more
@example(([Model("m0", 1.0, 0.0, 0.5, 2), Model("m1", 40.0, 0.0, 0.5, 1)],
          [Gpu("n0", 0, 24.0), Gpu("n1", 1, 40.0), Gpu("n0", 2, 24.0)]), 1.0)  # zero load: bisection's ratio
def test_nothing_moves_when_nothing_changed_or_the_change_stays_within_the_threshold(
        cluster: tuple[list[Model], list[Gpu]], factor: float) -> None:
    models, gpus = cluster
    before = solve(models, gpus, clock=_clock)
    assume(before.stats.proven_optimal)  # within 3% of the optimum after a 3% rise: kept
    current = [Slot(p.model, p.replica, p.gpu) for p in before.placements]
    busiest = max(range(len(models)), key=lambda j: models[j].load)
    after = list(models)
    after[busiest] = dataclasses.replace(models[busiest], rate_rps=models[busiest].rate_rps * factor)
    plan = solve(after, gpus, current=current, clock=_clock)
    assert plan.moves == 0
    # Every running replica stays where it is; a replica the fresh plan left unplaced (memory ran out) may be
    # placed around them, which is not a move.
    assert {(s.model, s.gpu) for s in current} <= {(p.model, p.gpu) for p in plan.placements}
    assert len(plan.placements) - len(current) <= len(before.unplaced)
    assert all(s.source is None for s in plan.steps)


# ---- table cases ----

A = [Gpu("a", g, H100) for g in range(4)]


def slots(*where: tuple[str, int, int]) -> list[Slot]:
    return [Slot(name, replica, A[g].id) for name, replica, g in where]


@dataclasses.dataclass(frozen=True)
class Case:
    models: list[Model]
    gpus: list[Gpu]
    current: list[Slot]
    moves: int
    new_steps: int
    causes: tuple[str, ...] = ()
    options: PackOptions = PackOptions()


CASES = [
    pytest.param(Case([], A[:1], [], 0, 0), id="empty input"),
    pytest.param(Case([], A[:1], slots(("gone", 0, 0)), 0, 0), id="empty input, only removed models running"),
    pytest.param(Case([Model("full", 80, 5, 1)], A[:1], slots(("full", 0, 0)), 0, 0, ("NoRoomForKVCache",)),
                 id="zero free memory: weights fill the only GPU"),
    pytest.param(Case([Model("huge", 90, 1, 1), Model("small", 10, 1, 1)], A[:2],
                      slots(("huge", 0, 0), ("small", 0, 1)), 0, 0, ("ModelTooLarge",)),
                 id="one huge model: unplaced, the rest stays"),
    pytest.param(Case([Model("x", 20, 2, 1), Model("y", 20, 2, 1)], A[:2], slots(("x", 0, 1), ("y", 0, 0)), 0, 0),
                 id="exact ties: identical models on identical GPUs stay"),
    pytest.param(Case([Model("x", 20, 2, 1, replicas=2)], A[:2], slots(("x", 1, 0), ("x", 0, 1)), 0, 0),
                 id="replica numbers do not matter"),
    pytest.param(Case([Model("x", 20, 4, 1), Model("y", 30, 2, 1), Model("new", 16, 3, 1)], A[:3],
                      slots(("x", 0, 0), ("y", 0, 1)), 0, 1),
                 id="a model added to a placement with room: no other moves"),
    pytest.param(Case([Model("x", 20, 1, 1), Model("y", 30, 2, 1), Model("z", 10, 1, 1)], A[1:3],
                      slots(("x", 0, 0), ("y", 0, 1), ("z", 0, 2)), 0, 1),
                 id="a GPU lost: its replica starts elsewhere, nothing else moves"),
    pytest.param(Case([Model("x", 50, 4, 1), Model("y", 40, 2, 1)], A[:2], slots(("x", 0, 0), ("y", 0, 0)), 1, 0),
                 id="a model grown out of its GPU: one replica moves"),
    pytest.param(Case([Model("x", 20, 4, 1, replicas=3)], A[:3], slots(("x", 0, 0)), 0, 2),
                 id="replicas added: the running one stays"),
    pytest.param(Case([Model("x", 20, 4, 1, replicas=1), Model("y", 60, 1, 1)], A[:3],
                      slots(("x", 0, 0), ("x", 1, 1), ("x", 2, 2), ("y", 0, 0)), 0, 0),
                 id="replicas removed: a kept one stays, whatever its number, the rest stop"),
    pytest.param(Case([Model("hot", 10, 40, 1), Model("a", 10, 1, 1), Model("b", 10, 1, 1)], A[:3],
                      slots(("hot", 0, 0), ("a", 0, 0), ("b", 0, 0)), 0, 0, options=PackOptions(max_migrations=0)),
                 id="budget 0: nothing moves however crowded"),
    pytest.param(Case([Model("hot", 10, 40, 1), Model("a", 10, 1, 1), Model("b", 10, 1, 1)], A[:3],
                      slots(("hot", 0, 0), ("a", 0, 0), ("b", 0, 0)), 1, 0, options=PackOptions(max_migrations=1)),
                 id="budget 1: one move off the crowded GPU"),
]


@pytest.mark.parametrize("case", CASES)
def test_replan_cases(case: Case) -> None:
    plan = solve(case.models, case.gpus, current=case.current, options=case.options, clock=_clock)
    check_plan(case.models, case.gpus, plan)
    simulate_steps(case.models, case.gpus, case.current, plan)
    assert plan.moves == case.moves
    assert sum(1 for s in plan.steps if s.source is None) == case.new_steps
    assert tuple(u.cause for u in plan.unplaced) == case.causes


def test_budget_reports_what_the_next_move_would_gain() -> None:
    models = [Model("x", 10, 10, 1), Model("y", 10, 10, 1), Model("z", 10, 10, 1)]
    current = slots(("x", 0, 0), ("y", 0, 0), ("z", 0, 0))
    one = solve(models, A[:3], current=current, options=PackOptions(max_migrations=1), clock=_clock)
    two = solve(models, A[:3], current=current, options=PackOptions(max_migrations=2), clock=_clock)
    assert one.next_move_gain == pytest.approx(one.max_kvpr - two.max_kvpr, rel=1e-9)
    assert two.moves == 2 and two.next_move_gain == 0


@pytest.mark.parametrize(
    ("models", "gpus", "cause"),
    [
        pytest.param([Model("big", 90, 1, 1)], A[:2], "ModelTooLarge", id="larger than every GPU"),
        pytest.param([Model("fills", 80, 1, 1)], A[:2], "NoRoomForKVCache", id="fills the largest GPU, loaded"),
        pytest.param([Model("wide", 10, 1, 1, replicas=3)], A[:2], "TooFewGPUs", id="more replicas than GPUs"),
        pytest.param([Model("a", 50, 1, 1), Model("b", 50, 1, 1)], A[:1], "InsufficientCapacity",
                     id="fits alone, not together"),
        pytest.param([Model("a", 10, 1, 1)], [], "TooFewGPUs", id="no GPUs at all"),
    ],
)
def test_unplaced_cause(models: list[Model], gpus: list[Gpu], cause: str) -> None:
    plan = solve(models, gpus, clock=_clock)
    assert [u.cause for u in plan.unplaced] == [cause]
    assert plan.unplaced[0].reason


# ---- the step order on its own: a swap of two full GPUs needs one stop-first step ----


@pytest.mark.parametrize(
    ("run", "final", "stop_first"),
    [
        pytest.param([0, 1], [1, 0], 1, id="swap of two full GPUs: one replica stops first"),
        pytest.param([0, -1], [1, 0], 0, id="move out, then a new replica in: no stop first"),
        pytest.param([0, 1, 2], [1, 2, 0], 1, id="three-cycle: one stop first breaks it"),
        pytest.param([-1, -1], [0, 1], 0, id="fresh plan: only starts"),
    ],
)
def test_order_steps_breaks_cycles_with_stop_first(run: list[int], final: list[int], stop_first: int) -> None:
    models = [Model(f"m{j}", 60, 1, 1) for j in range(len(run))]
    inst = build_instance(models, A[:len(run)])
    steps = order_steps(inst, np.asarray(run, dtype=np.int64), np.asarray(final, dtype=np.int64))
    assert sum(s.stop_first for s in steps) == stop_first
    weights = [0.0] * len(run)
    for j, g in enumerate(run):
        if g >= 0:
            weights[g] += 60
    waiting: list[int] = []
    for s in steps:
        if s.stop_first:
            weights[s.source] -= 60
            waiting.append(s.target)
        else:
            assert weights[s.target] + 60 <= H100
            weights[s.target] += 60
            if s.source >= 0:
                weights[s.source] -= 60
        for t in list(waiting):
            if weights[t] + 60 <= H100:
                weights[t] += 60
                waiting.remove(t)
    assert not waiting and sorted(weights) == [60.0] * len(run)


# ---- small re-plans (13-40 replicas): past the exact fewest-moves search, no exact stage from scratch ----


def _phases(models: list[Model], gpus: list[Gpu], current: list[Slot]) -> tuple[Plan, list[str]]:
    seen: list[str] = []
    plan = solve(models, gpus, current=current, clock=_clock, progress=lambda p: seen.append(p.phase))
    return plan, seen


def test_a_small_replan_settled_at_the_bound_runs_no_search_from_scratch() -> None:
    """16 equal models on 8 GPUs run 3 on one GPU and 1 on another; one move balances them at the lower bound
    (2 per GPU, KVPR 4 / 48). With the bound that tight no plan from scratch can loosen the target: none is made."""
    models = [Model(f"m{j:02d}", 16, 2, 1) for j in range(16)]
    gpus = [Gpu("n", g, H100) for g in range(8)]
    where = [0, 0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 7]
    current = [Slot(m.name, 0, gpus[g].id) for m, g in zip(models, where)]
    plan, seen = _phases(models, gpus, current)
    check_plan(models, gpus, plan)
    assert plan.moves == 1
    assert plan.max_kvpr == pytest.approx(4 / 48) and plan.lower_bound == pytest.approx(4 / 48)
    assert "greedy" not in seen and "bisection" not in seen


@pytest.mark.parametrize("change", ["add", "rate"])
def test_a_small_replan_stays_within_the_threshold_of_the_best_plan_without_the_exact_stage(change: str) -> None:
    """The bundled example (38 replicas) after one change: its bound is 0.8% below its best plan, so the re-plan
    makes a plan from scratch as its reference, without the exact stage, and stays within the threshold of the
    best plan a fresh solve (with the exact stage) finds."""
    from kvsched.cluster_file import NO_HEADROOM, load_cluster_file

    cluster = load_cluster_file(EXAMPLE, NO_HEADROOM)
    models, gpus = list(cluster.models), list(cluster.gpus)
    first = solve(models, gpus, clock=_clock)
    current = [Slot(p.model, p.replica, p.gpu) for p in first.placements]
    if change == "add":
        models.append(Model("added", 16, 3, 1))
    else:
        busiest = max(range(len(models)), key=lambda j: models[j].load)
        models[busiest] = dataclasses.replace(models[busiest], rate_rps=models[busiest].rate_rps * 1.6)
    plan, seen = _phases(models, gpus, current)
    check_plan(models, gpus, plan)
    fresh = solve(models, gpus, clock=_clock)
    assert not plan.unplaced and not fresh.unplaced
    assert plan.max_kvpr <= 1.05 * fresh.max_kvpr * (1 + 1e-9)
    assert "exact" not in seen


def _mid_cluster(seed: int) -> tuple[list[Model], list[Gpu], list[Slot]]:
    """13-24 replicas on 4-8 GPUs of 40/80 GiB, running where a round robin put them (memory permitting)."""
    rng = np.random.default_rng(seed)
    gpus = [Gpu(f"n{g // 4}", g % 4, float(rng.choice([40.0, 80.0]))) for g in range(int(rng.integers(4, 9)))]
    models: list[Model] = []
    while sum(m.replicas for m in models) < int(rng.integers(13, 25)):
        models.append(Model(f"m{len(models):02d}", float(rng.integers(4, 20)), float(rng.integers(1, 12)),
                            float(rng.choice([0.5, 1.0, 2.0])), int(rng.choice([1, 1, 1, 2]))))
    used = [0.0] * len(gpus)
    current: list[Slot] = []
    g = 0
    for m in models:
        for r in range(m.replicas):
            for _ in range(len(gpus)):
                g = (g + 1) % len(gpus)
                if used[g] + m.size_gib < 0.9 * gpus[g].memory_gib:
                    used[g] += m.size_gib
                    current.append(Slot(m.name, r, gpus[g].id))
                    break
    return models, gpus, current


@pytest.mark.parametrize("seed", range(8))
def test_small_replans_are_valid_deterministic_and_within_the_threshold_when_settled(seed: int) -> None:
    """Clusters past the exact fewest-moves search (13-24 replicas) running an unbalanced placement: the plan
    is valid, its moves counted as the model-level rule says, its steps respect memory, the same input gives
    the same plan, and a plan made without a search from scratch is within the threshold of the lower bound."""
    models, gpus, current = _mid_cluster(seed)
    options = PackOptions(stability_threshold_ratio=0.05)
    seen: list[str] = []
    plan = solve(models, gpus, current=current, options=options, clock=_clock,
                 progress=lambda p: seen.append(p.phase))
    check_plan(models, gpus, plan)
    assert plan.moves == moves_between(current, models, gpus, planned_gpus(plan))
    simulate_steps(models, gpus, current, plan)
    again = solve(models, gpus, current=current, options=options, clock=_clock)
    assert again.placements == plan.placements and again.steps == plan.steps
    if "greedy" not in seen and not plan.unplaced:  # kept or settled: judged against the bound alone
        assert plan.max_kvpr <= 1.05 * plan.lower_bound * (1 + 1e-9)
