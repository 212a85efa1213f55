"""Properties of `solve` on random tiny clusters, with brute force as the oracle, plus table cases."""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
import pytest
from hypothesis import example, given, settings

from kvsched.packer import Gpu, GpuId, InvalidInput, Model, PackOptions, Plan, Slot, solve
from kvsched.packer.greedy import greedy
from kvsched.packer.instance import build_instance
from tests.packer.brute import brute_force_optimum, oracle_kvpr, oracle_max_kvpr
from tests.packer.conftest import tiny_cluster


def _fake_clock() -> float:
    return 0.0


def check_plan(models: list[Model], gpus: list[Gpu], plan: Plan) -> None:
    """Invariants every plan must satisfy, recomputed from scratch."""
    expected = Counter((m.name, r) for m in models for r in range(m.replicas))
    seen = Counter((p.model, p.replica) for p in plan.placements) + Counter((u.model, u.replica)
                                                                            for u in plan.unplaced)
    assert seen == expected, "every replica placed exactly once or reported"
    by_name = {m.name: m for m in models}
    memory = {g.id: g.memory_gib for g in gpus}
    load: dict[GpuId, float] = {g.id: 0.0 for g in gpus}
    weights: dict[GpuId, float] = {g.id: 0.0 for g in gpus}
    fraction: dict[GpuId, float] = {g.id: 0.0 for g in gpus}
    models_on: dict[GpuId, set[str]] = {g.id: set() for g in gpus}
    for p in plan.placements:
        m = by_name[p.model]
        assert p.model not in models_on[p.gpu], "two replicas of one model share a GPU"
        models_on[p.gpu].add(p.model)
        load[p.gpu] += m.replica_load
        weights[p.gpu] += m.size_gib
        fraction[p.gpu] += p.memory_fraction
        assert 0 < p.memory_fraction <= 1 + 1e-9
    for g in plan.gpus:
        assert weights[g.gpu] <= memory[g.gpu] + 1e-9, "GPU over memory"
        assert g.kvpr == pytest.approx(oracle_kvpr(load[g.gpu], weights[g.gpu], memory[g.gpu]), rel=1e-9)
        assert g.used_memory_gib == pytest.approx(weights[g.gpu])
        assert fraction[g.gpu] <= 1 + 1e-9
    worst = max((g.kvpr for g in plan.gpus), default=0.0)
    assert plan.max_kvpr == pytest.approx(worst, rel=1e-12)
    assert plan.lower_bound <= plan.max_kvpr * (1 + 1e-9) or not plan.placements


@settings(max_examples=120, deadline=None)
@given(tiny_cluster())
@example(([Model("m0", 30, 10, 1), Model("m1", 30, 10, 1), Model("m2", 30, 10, 1)],
          [Gpu("n0", 0, 80.0), Gpu("n1", 1, 80.0)]))
# Found by hypothesis: zero-load replicas took a loaded GPU's last free GiB (infinite KVPR) in the greedy,
# and passes at huge T accepted it through floating-point slack.
@example(([Model("m0", 1, 0, 0.5), Model("m1", 1, 0, 0.5, 2), Model("m2", 1, 0, 0.5, 2), Model("m3", 37, 1, 0.5)],
          [Gpu("n0", 0, 40.0)]))
@example(([Model("m0", 1, 0, 0.5), Model("m1", 1, 0, 0.5, 2), Model("m2", 1, 0, 0.5, 2), Model("m3", 38, 1, 0.5)],
          [Gpu("n0", 0, 24.0), Gpu("n1", 1, 40.0)]))
# Weights exactly fill memory: the fluid bound is infinite, so something must be reported unplaced.
@example(([Model("m0", 1, 0, 0.5), Model("m1", 1, 0, 0.5, 2), Model("m2", 11, 0, 0.5, 2), Model("m3", 39, 1, 0.5)],
          [Gpu("n0", 0, 24.0), Gpu("n1", 1, 40.0)]))
def test_solve_is_valid_optimal_on_tiny_and_never_worse_than_greedy(
        cluster: tuple[list[Model], list[Gpu]]) -> None:
    models, gpus = cluster
    plan = solve(models, gpus, clock=_fake_clock)
    check_plan(models, gpus, plan)
    inst = build_instance(models, gpus)
    optimum = brute_force_optimum(inst)
    if not math.isfinite(optimum):
        assert plan.unplaced, "no valid complete placement exists, so some replica must be reported unplaced"
        return
    assert not plan.unplaced, "a feasible tiny cluster must be placed whole"
    # tiny instances go through the exact stage: the optimum, proven
    assert plan.max_kvpr == pytest.approx(optimum, rel=1e-7)
    assert plan.lower_bound <= optimum * (1 + 1e-9)
    baseline = greedy(inst)
    if (baseline >= 0).all():
        assert plan.max_kvpr <= oracle_max_kvpr(inst, baseline) * (1 + 1e-9)


@settings(max_examples=40, deadline=None)
@given(tiny_cluster(max_models=4, max_gpus=3))
def test_solve_is_deterministic(cluster: tuple[list[Model], list[Gpu]]) -> None:
    models, gpus = cluster
    a = solve(models, gpus, clock=_fake_clock)
    b = solve(models, gpus, clock=_fake_clock)
    assert a == b


H100 = 80.0


@pytest.mark.parametrize(
    ("models", "gpus", "unplaced"),
    [
        pytest.param([], [Gpu("n", 0, H100)], [], id="empty input"),
        pytest.param([Model("a", 16, 1, 1)], [], [("a", 0, "no GPUs")], id="no GPUs"),
        pytest.param([Model("huge", 90, 1, 1), Model("ok", 16, 1, 1)], [Gpu("n", 0, H100)],
                     [("huge", 0, "exceeds the largest GPU")], id="one huge model, the rest placed"),
        pytest.param([Model("full", 80, 1, 1)], [Gpu("n", 0, H100)],
                     [("full", 0, "leaves no room for KV cache")], id="weights exactly fill the GPU"),
        pytest.param([Model("idle", 80, 0, 1)], [Gpu("n", 0, H100)], [], id="zero free memory, no load"),
        pytest.param([Model("r", 16, 3, 1, replicas=3)], [Gpu("n", 0, H100), Gpu("n", 1, H100)],
                     [("r", 2, "never share a GPU")], id="more replicas than GPUs"),
        pytest.param([Model(f"m{i}", 50, 1, 1) for i in range(3)], [Gpu("n", 0, H100), Gpu("n", 1, H100)],
                     [("m2", 0, "not enough free GPU memory")], id="total memory short"),
    ],
)
def test_infeasible_parts_are_reported_and_the_rest_placed(
        models: list[Model], gpus: list[Gpu], unplaced: list[tuple[str, int, str]]) -> None:
    plan = solve(models, gpus, clock=_fake_clock)
    check_plan(models, gpus, plan)
    assert len(plan.unplaced) == len(unplaced)
    for got, (name, replica, reason) in zip(sorted(plan.unplaced, key=lambda u: (u.model, u.replica)),
                                            sorted(unplaced)):
        assert (got.model, got.replica) == (name, replica)
        assert reason in got.reason


@pytest.mark.parametrize(
    ("model_names", "gpu_indexes"),
    [
        pytest.param(["a", "b"], [0, 1], id="models a, b on GPUs 0, 1"),
        pytest.param(["b", "a"], [0, 1], id="models listed b, a"),
        pytest.param(["a", "b"], [1, 0], id="GPUs listed 1, 0"),
    ],
)
def test_exact_ties_break_by_input_order(model_names: list[str], gpu_indexes: list[int]) -> None:
    # Two identical models, two identical GPUs: every plan has max KVPR 4/64; the first model listed goes to
    # the first GPU listed, whatever the names and indexes.
    models = [Model(name, 16, 4, 1) for name in model_names]
    gpus = [Gpu("n", g, H100) for g in gpu_indexes]
    plan = solve(models, gpus, clock=_fake_clock)
    assert plan.max_kvpr == pytest.approx(4 / 64)
    where = {p.model: p.gpu for p in plan.placements}
    assert where == {model_names[0]: GpuId("n", gpu_indexes[0]), model_names[1]: GpuId("n", gpu_indexes[1])}
    assert plan.stats.proven_optimal


def test_replicas_split_the_load() -> None:
    plan = solve([Model("r", 16, 8, 1, replicas=2)], [Gpu("n", 0, H100), Gpu("n", 1, H100)], clock=_fake_clock)
    assert plan.max_kvpr == pytest.approx(4 / 64)
    assert {p.replica for p in plan.placements} == {0, 1}


@pytest.mark.parametrize(
    ("make", "field"),
    [
        pytest.param(lambda: Model("", 16, 1, 1), "name", id="empty name"),
        pytest.param(lambda: Model("a", 0, 1, 1), "size_gib", id="zero size"),
        pytest.param(lambda: Model("a", 16, -1, 1), "rate_rps", id="negative rate"),
        pytest.param(lambda: Model("a", 16, 1, 0), "slo_s", id="zero SLO"),
        pytest.param(lambda: Model("a", 16, 1, 1, replicas=0), "replicas", id="zero replicas"),
        pytest.param(lambda: Model("a", 16, 1, 1, replicas=10**9), "replicas", id="a billion replicas (typo)"),
        pytest.param(lambda: Model("a", float("nan"), 1, 1), "size_gib", id="NaN size"),
        pytest.param(lambda: Gpu("n", 0, 0), "memory_gib", id="zero memory"),
        pytest.param(lambda: Gpu("n", -1, 80), "index", id="negative index"),
        pytest.param(lambda: solve([Model("a", 1, 1, 1), Model("a", 1, 1, 1)], []), "name", id="duplicate model"),
        pytest.param(lambda: solve([], [Gpu("n", 0, 80), Gpu("n", 0, 80)]), "index", id="duplicate GPU"),
        pytest.param(lambda: PackOptions(checkpoints=(0.4, 1.5)), "checkpoints", id="checkpoint out of range"),
    ],
)
def test_bad_input_names_the_field(make: object, field: str) -> None:
    with pytest.raises(InvalidInput) as err:
        make()  # type: ignore[operator]
    assert err.value.field == field
    assert field in str(err.value)


def _cluster() -> tuple[list[Model], list[Gpu]]:
    models = [Model(f"m{j}", 10.0 + 3 * j, 1.0 + j % 4, 1.0) for j in range(8)]
    gpus = [Gpu("n", g, H100) for g in range(4)]
    return models, gpus


def test_stability_keeps_a_current_assignment_within_the_threshold() -> None:
    models, gpus = _cluster()
    fresh = solve(models, gpus, clock=_fake_clock)
    # Rotate GPUs: same quality, different place. It must be kept as is, with no migrations.
    rotate = {g.id: gpus[(k + 1) % len(gpus)].id for k, g in enumerate(gpus)}
    current = [Slot(p.model, p.replica, rotate[p.gpu]) for p in fresh.placements]
    plan = solve(models, gpus, current=current, clock=_fake_clock)
    assert plan.kept_current
    assert plan.migrations == ()
    assert {(p.model, p.replica, p.gpu) for p in plan.placements} == {(s.model, s.replica, s.gpu) for s in current}


def test_stability_moves_few_replicas_when_the_current_is_bad() -> None:
    models, gpus = _cluster()
    best = solve(models, gpus, clock=_fake_clock)
    # Current: the best plan, but with the two heaviest-loaded replicas swapped onto one GPU's neighbour.
    current = [Slot(p.model, p.replica, p.gpu) for p in best.placements]
    crowded = [Slot(s.model, s.replica, gpus[0].id) if k < 2 and s.gpu != gpus[0].id else s
               for k, s in enumerate(current)]
    inst = build_instance(models, gpus)
    plan = solve(models, gpus, current=crowded, options=PackOptions(stability_threshold_ratio=0.0),
                 clock=_fake_clock)
    check_plan(models, gpus, plan)
    assert not plan.kept_current
    assert plan.max_kvpr == pytest.approx(best.max_kvpr, rel=1e-9)
    moved_from_crowded = sum(1 for a, b in zip(crowded, current) if a.gpu != b.gpu)
    assert len(plan.migrations) <= moved_from_crowded
    assert inst.n_items == len(plan.placements)


def test_a_replica_listed_twice_in_current_is_an_error() -> None:
    models, gpus = _cluster()
    slot = Slot("m0", 0, gpus[0].id)
    with pytest.raises(InvalidInput, match="listed twice"):
        solve(models, gpus, current=[slot, slot])


def test_current_slots_for_vanished_gpus_are_ignored() -> None:
    models, gpus = _cluster()
    plan = solve(models, gpus, current=[Slot("m0", 0, GpuId("gone", 0))], clock=_fake_clock)
    check_plan(models, gpus, plan)
    assert any(m.source is None and m.model == "m0" for m in plan.migrations)


def test_solve_reads_only_the_injected_clock() -> None:
    ticks = iter(np.arange(0.0, 1000.0, 0.5))
    plan = solve(*_cluster(), clock=lambda: float(next(ticks)))
    assert plan.solve_seconds > 0
    assert plan.solve_seconds == int(plan.solve_seconds * 2) / 2
