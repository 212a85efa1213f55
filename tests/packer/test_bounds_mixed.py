"""Lower bounds on mixed GPU memory with replicas: the item-value (configuration LP) test against brute force.

The oracle here enumerates placements and computes KVPR and memory fit itself (no packer code): a bound is
valid when it never exceeds the least max KVPR of any placement that keeps replicas of a model apart.
"""

from __future__ import annotations

import itertools
import math
import random
from pathlib import Path

import numpy as np
import pytest

from kvsched.packer import Gpu, GpuId, Model, PackOptions, Slot, solve
from kvsched.packer.bounds import _most_value, item_value_violated, lower_bound
from kvsched.packer.instance import build_instance

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "cluster.yaml"


def _kvpr(load: float, weights: float, memory: float) -> float:
    """N / (M - W) of one GPU; 0 when idle and within memory; inf over memory or with load and no room left."""
    if weights > memory:
        return math.inf
    if load == 0:
        return 0.0
    return load / (memory - weights) if memory > weights else math.inf


def _optimum(models: list[Model], gpus: list[Gpu]) -> float:
    """Least max KVPR over every placement of all replicas (replicas of a model on distinct GPUs)."""
    per_model = [list(itertools.combinations(range(len(gpus)), m.replicas)) for m in models]
    best = math.inf
    for choice in itertools.product(*per_model):
        load = [0.0] * len(gpus)
        weights = [0.0] * len(gpus)
        for m, chosen in zip(models, choice):
            for g in chosen:
                load[g] += m.rate_rps / m.slo_s / m.replicas
                weights[g] += m.size_gib
        best = min(best, max((_kvpr(load[g], weights[g], gpus[g].memory_gib) for g in range(len(gpus))),
                             default=0.0))
    return best


def _random_case(rng: random.Random) -> tuple[list[Model], list[Gpu]]:
    memories = [40.0, 80.0, 141.0]
    gpus = [Gpu("n", g, rng.choice(memories)) for g in range(rng.randint(1, 4))]
    models = []
    for j in range(rng.randint(1, 5)):
        replicas = rng.choice([1, 1, 1, 2, 3])
        models.append(Model(f"m{j}", round(rng.uniform(2.0, 70.0), 1), round(rng.uniform(0.0, 12.0), 1),
                            round(rng.uniform(0.2, 3.0), 1), replicas))
    return models, gpus


def _bounds(models: list[Model], gpus: list[Gpu], upper: float | None) -> tuple[float, float]:
    inst = build_instance(models, gpus)
    args = (inst.item_load, inst.item_size, inst.gpu_memory)
    return lower_bound(*args, upper=upper), lower_bound(*args, upper=upper, groups=inst.item_group)


@pytest.mark.parametrize("seed", range(150))
def test_lower_bound_never_exceeds_brute_force(seed: int) -> None:
    models, gpus = _random_case(random.Random(seed))
    optimum = _optimum(models, gpus)
    for upper in (None, optimum if math.isfinite(optimum) else None):
        plain, grouped = _bounds(models, gpus, upper)
        assert plain <= grouped * (1 + 1e-12) or not math.isfinite(grouped)
        assert grouped <= optimum * (1 + 1e-9), (plain, grouped, optimum)


@pytest.mark.parametrize("seed", range(150))
def test_item_values_hold_at_the_optimum(seed: int) -> None:
    """At T = optimum some placement reaches T, so the certificate must not claim otherwise."""
    models, gpus = _random_case(random.Random(1000 + seed))
    optimum = _optimum(models, gpus)
    if not math.isfinite(optimum) or optimum == 0:
        return  # nothing to certify there: T must be a positive finite target
    inst = build_instance(models, gpus)
    for groups in (None, inst.item_group):
        assert not item_value_violated(inst.item_load, inst.item_size, inst.gpu_memory, optimum * (1 + 1e-12),
                                       groups=groups, max_multiplier=12)


@pytest.mark.parametrize(
    ("models", "gpus", "expected"),
    [
        pytest.param([], [Gpu("n", 0, 80.0)], 0.0, id="empty input"),
        pytest.param([Model("a", 80, 1, 1)], [Gpu("n", 0, 80.0), Gpu("n", 1, 40.0)], math.inf,
                     id="zero free memory: weights fill the largest GPU"),
        pytest.param([Model("huge", 200, 1, 1)], [Gpu("n", 0, 141.0), Gpu("n", 1, 80.0)], math.inf,
                     id="one huge model fits no GPU"),
        pytest.param([Model("a", 20, 6, 1, 2), Model("b", 20, 6, 1, 2)], [Gpu("n", 0, 80.0), Gpu("n", 1, 80.0)],
                     6 / 40, id="exact ties: two pairs of equal replicas, two GPUs"),
        pytest.param([Model("big", 30, 9, 1, 2), Model("small", 5, 1, 1)],
                     [Gpu("n", 0, 80.0), Gpu("n", 1, 80.0), Gpu("n", 2, 40.0)],
                     4.5 / 50, id="replicas too heavy for the small GPU take the two large ones"),
    ],
)
def test_lower_bound_by_hand(models: list[Model], gpus: list[Gpu], expected: float) -> None:
    optimum = _optimum(models, gpus)
    assert optimum == pytest.approx(expected)
    plain, grouped = _bounds(models, gpus, None)
    if math.isinf(expected):
        assert math.isinf(grouped)
    else:
        assert grouped <= optimum * (1 + 1e-9)
        assert grouped >= optimum * (1 - 1e-6)  # these small cases are closed exactly by the bounds


def test_items_that_cannot_pair_nor_use_the_small_gpu_raise_the_bound() -> None:
    """Three models of load 8 on 16Gi, GPUs of 80, 80 and 20Gi: below T = 1/3 no two share a large GPU and none
    fits the small one, so the optimum is 1/3; the fluid bound (24 / 132) and the tests that relax every GPU to
    the largest stay far below it; the item values prove it."""
    models = [Model(f"m{j}", 16, 8, 1) for j in range(3)]
    gpus = [Gpu("n", 0, 80.0), Gpu("n", 1, 80.0), Gpu("n", 2, 20.0)]
    optimum = _optimum(models, gpus)
    assert optimum == pytest.approx(1 / 3)
    plain, grouped = _bounds(models, gpus, None)
    assert plain == pytest.approx(optimum, rel=1e-6) and grouped == pytest.approx(optimum, rel=1e-6)
    assert plain > 1.5 * 24 / 132


def test_replicas_that_need_distinct_gpus_raise_the_bound_with_groups() -> None:
    """One model of 3 replicas (load 8 each, 16Gi) on 80, 80 and 20Gi: one replica must take the small GPU
    (KVPR 8 / 4 = 2). Only with `groups` does the bound know that replicas never share a GPU."""
    models = [Model("a", 16, 24, 1, 3)]
    gpus = [Gpu("n", 0, 80.0), Gpu("n", 1, 80.0), Gpu("n", 2, 20.0)]
    optimum = _optimum(models, gpus)
    assert optimum == pytest.approx(2.0)
    plain, grouped = _bounds(models, gpus, optimum)
    assert grouped == pytest.approx(optimum, rel=1e-6)
    assert plain <= 1 / 3 * (1 + 1e-9)  # without groups two replicas may share a large GPU: 16 / 48


@pytest.mark.parametrize("seed", range(60))
def test_most_value_is_the_exact_knapsack(seed: int) -> None:
    rng = random.Random(seed)
    n = rng.randint(0, 7)
    weights = sorted(rng.uniform(0.5, 10.0) for _ in range(n))
    scale = rng.choice([0.3, 0.5, 1.0])
    values = [int(math.floor(w * scale)) for w in weights]  # nondecreasing in weight, as the caller makes them
    capacity = rng.uniform(0.0, 25.0)
    best = 0
    for mask in range(1 << n):
        chosen = [i for i in range(n) if mask >> i & 1]
        if sum(weights[i] for i in chosen) <= capacity:
            best = max(best, sum(values[i] for i in chosen))
    value_cap = int(scale * capacity) + 1
    assert _most_value(weights, values, capacity, value_cap) == best


def test_example_gap_is_small() -> None:
    """The bundled example: kvsched's plan reaches 0.461829 (a valid upper value); the bound reaches 0.458."""
    from kvsched.cluster_file import NO_HEADROOM, load_cluster_file

    cluster = load_cluster_file(EXAMPLE, NO_HEADROOM)
    inst = build_instance(cluster.models, cluster.gpus)
    bound = lower_bound(inst.item_load, inst.item_size, inst.gpu_memory, upper=0.5)
    assert 0.4618286 / 1.02 <= bound <= 0.4618286


def test_item_values_at_nonpositive_target_or_empty_input_prove_nothing() -> None:
    empty = np.zeros(0)
    memory = np.array([80.0])
    assert not item_value_violated(empty, empty, memory, 1.0)
    assert not item_value_violated(np.array([1.0]), np.array([10.0]), memory, 0.0)
    assert not item_value_violated(np.array([1.0]), np.array([10.0]), np.zeros(0), 1.0)


def test_groups_of_unequal_items_are_not_taken_for_replicas() -> None:
    """Two items of group 0 that differ (not replicas): the test must fall back to counting them apart, as
    if without groups, since a GPU may hold the lighter one where the first would not fit."""
    load = np.array([8.0, 1.0, 1.0])
    size = np.array([16.0, 4.0, 4.0])
    memory = np.array([20.0, 20.0])
    for target in (0.5, 1.0, 2.0, 4.0):
        plain = item_value_violated(load, size, memory, target)
        assert item_value_violated(load, size, memory, target, groups=np.array([0, 0, 1])) == plain


def _rate_up(models: list[Model], factor: float) -> list[Model]:
    """The busiest model's rate times `factor` (a change a re-plan answers)."""
    busiest = max(range(len(models)), key=lambda j: (models[j].rate_rps / models[j].slo_s, -j))
    return [Model(m.name, m.size_gib, m.rate_rps * factor, m.slo_s, m.replicas) if j == busiest else m
            for j, m in enumerate(models)]


@pytest.mark.parametrize("seed", range(60))
def test_solve_reports_a_bound_no_placement_beats(seed: int) -> None:
    """The bound `solve` reports (with replicas' models passed to `lower_bound`), fresh and on a re-plan, never
    exceeds the brute-force optimum of what it places."""
    models, gpus = _random_case(random.Random(2000 + seed))
    fresh = solve(models, gpus, clock=lambda: 0.0)
    changed = _rate_up(models, 1.5)
    replan = solve(changed, gpus, current=[Slot(p.model, p.replica, p.gpu) for p in fresh.placements],
                   options=PackOptions(stability_threshold_ratio=0.05), clock=lambda: 0.0)
    for plan, wanted in ((fresh, models), (replan, changed)):
        if plan.unplaced:
            continue  # the bound is of the replicas placed; the oracle places all
        optimum = _optimum(wanted, gpus)
        assert plan.lower_bound <= optimum * (1 + 1e-9), (plan.lower_bound, optimum)
        assert plan.lower_bound <= plan.max_kvpr * (1 + 1e-9)


def test_a_replan_already_at_the_optimum_is_kept_without_a_search() -> None:
    """One model of 3 replicas (load 8 each, 16Gi) on 80, 80 and 20Gi, running one per GPU: that is optimal
    (KVPR 2 on the small GPU). Only a bound that knows replicas never share a GPU sees it (16 / 48 without), so
    the re-plan keeps it with no search from scratch."""
    models = [Model("a", 16, 24, 1, 3)]
    gpus = [Gpu("n", 0, 80.0), Gpu("n", 1, 80.0), Gpu("n", 2, 20.0)]
    current = [Slot("a", r, GpuId("n", r)) for r in range(3)]
    plan = solve(models, gpus, current=current, clock=lambda: 0.0)
    assert plan.kept_current and plan.max_kvpr == pytest.approx(2.0)
    assert plan.lower_bound == pytest.approx(2.0, rel=1e-6)
    assert plan.stats.bisection_iterations == 0 and plan.stats.passes == 0
