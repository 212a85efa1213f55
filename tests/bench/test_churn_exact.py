"""The churn benchmark's exact references (bench/exact_moves.py) against brute force on tiny instances.

Needs OR-Tools (the `bench` extra, which `make test` installs); outside CI it is skipped without it, in CI
(CI=true) a missing OR-Tools is an error, not a silent skip.
"""

from __future__ import annotations

import itertools
import math
import random
from pathlib import Path

import os

import pytest

if os.environ.get("CI") != "true":
    pytest.importorskip("ortools")

from bench.exact_moves import (  # noqa: E402
    config_lp_bound,
    config_lp_refutes,
    count_moves,
    fewest_moves,
    fewest_restarts,
    min_max_kvpr,
    placement_kvpr,
)
from kvsched.packer import Gpu, GpuId, Model  # noqa: E402
from kvsched.packer.shares import restarts_on_gpu, share_bound  # noqa: E402

A0, A1, A2 = GpuId("a", 0), GpuId("a", 1), GpuId("a", 2)
GPUS = [Gpu("a", 0, 80.0), Gpu("a", 1, 80.0), Gpu("a", 2, 40.0)]


@pytest.mark.parametrize(("models", "gpus", "before", "after", "expected"), [
    pytest.param([Model("x", 10, 1, 1, 2)], GPUS, {"x": {A0, A1}}, {"x": {A1, A0}}, 0,
                 id="replicas swapped between the model's GPUs: no move"),
    pytest.param([Model("x", 10, 1, 1, 2)], GPUS, {"x": {A0, A1}}, {"x": {A0, A2}}, 1, id="one replica moved"),
    pytest.param([Model("x", 10, 1, 1)], GPUS[1:], {"x": {A0}}, {"x": {A1}}, 0,
                 id="its GPU was lost: a forced restart, not a move"),
    pytest.param([Model("x", 10, 1, 1, 1)], GPUS, {"x": {A0, A1}}, {"x": {A2}}, 1,
                 id="a model shrank from 2 replicas to 1: one stops, the other moves"),
    pytest.param([Model("x", 10, 1, 1, 2)], GPUS, {"x": {A0}}, {"x": {A0, A1}}, 0, id="a new replica is not a move"),
    pytest.param([], GPUS, {"x": {A0}}, {}, 0, id="empty: a removed model moves nothing"),
])
def test_count_moves(models: list[Model], gpus: list[Gpu], before: dict[str, set[GpuId]],
                     after: dict[str, set[GpuId]], expected: int) -> None:
    def frozen(d: dict[str, set[GpuId]]) -> dict[str, frozenset[GpuId]]:
        return {k: frozenset(v) for k, v in d.items()}

    assert count_moves(models, gpus, frozen(before), frozen(after)) == expected


def _all_placements(models: list[Model], gpus: list[Gpu]) -> list[dict[str, frozenset[GpuId]]]:
    choices = [[frozenset(c) for c in itertools.combinations([g.id for g in gpus], m.replicas)] for m in models]
    return [{m.name: c for m, c in zip(models, combo)} for combo in itertools.product(*choices)]


def _random_instance(seed: int) -> tuple[list[Model], list[Gpu]]:
    """A small heterogeneous instance with replicas that has at least one placement (redrawn until it has)."""
    rng = random.Random(seed)
    while True:
        gpus = [Gpu("n", g, rng.choice([40.0, 80.0])) for g in range(rng.randint(2, 4))]
        models = [Model(f"m{j}", rng.uniform(5, 30), rng.uniform(0.5, 8), rng.uniform(0.5, 3),
                        rng.choice([1, 1, 2])) for j in range(rng.randint(2, 5))]
        if any(math.isfinite(placement_kvpr(models, gpus, p)) for p in _all_placements(models, gpus)):
            return models, gpus


@pytest.mark.parametrize("seed", range(12))
def test_min_max_kvpr_and_fewest_moves_match_brute_force(seed: int) -> None:
    models, gpus = _random_instance(seed)
    placements = _all_placements(models, gpus)
    values = [placement_kvpr(models, gpus, p) for p in placements]
    optimum = min(values)
    worst_finite = max(v for v in values if math.isfinite(v))
    res = min_max_kvpr(models, gpus, lower=optimum / 4 if optimum > 0 else 0.0, upper=worst_finite,
                       hint=placements[values.index(worst_finite)], step_limit_s=5, total_limit_s=30,
                       tolerance_ratio=1e-6)
    assert res.proven_lower <= optimum * (1 + 1e-6)
    assert res.value == pytest.approx(optimum, rel=1e-5)
    if optimum > 0:  # the configuration LP's bound is a lower bound, and it never refutes a reachable target
        assert config_lp_bound(models, gpus, optimum / 4, worst_finite, tolerance_ratio=1e-6) <= optimum * (1 + 1e-9)
        assert not config_lp_refutes(models, gpus, optimum * (1 + 1e-9))

    current = placements[values.index(worst_finite)]
    cap = optimum * 1.05
    fewest = min(count_moves(models, gpus, current, p) for p, v in zip(placements, values) if v <= cap)
    got = fewest_moves(models, gpus, current, cap, time_limit_s=10)
    assert got.status == "OPTIMAL" and got.gpus_of is not None
    assert count_moves(models, gpus, current, got.gpus_of) == fewest
    assert got.max_kvpr <= cap * (1 + 1e-6)
    assert got.bound is not None and got.bound == pytest.approx(fewest)  # proven optimal: the bound is reached


def _restarts(models: list[Model], gpus: list[Gpu], current: dict[str, frozenset[GpuId]],
              shares: dict[tuple[str, GpuId], float], after: dict[str, frozenset[GpuId]], limit: float) -> int:
    """Moves plus share restarts of `after` under the packer's per-GPU rule (itself checked against every subset
    in tests/packer/test_shares.py)."""
    total = count_moves(models, gpus, current, after)
    for gpu in gpus:
        here = [m for m in models if gpu.id in after.get(m.name, frozenset())]
        staying = [m for m in here if gpu.id in current.get(m.name, frozenset())]
        flexible = [m for m in here if m not in staying]
        load = {m.name: m.rate_rps / m.slo_s / m.replicas for m in here}
        keep = restarts_on_gpu(gpu.memory_gib, share_bound(gpu.memory_gib, 0.0, 0.0),
                               [(shares[(m.name, gpu.id)], m.size_gib, load[m.name]) for m in staying],
                               [(m.size_gib, load[m.name]) for m in flexible], limit)
        total += keep.count(False)
    return total


@pytest.mark.parametrize("seed", range(8))
def test_fewest_restarts_matches_brute_force(seed: int) -> None:
    models, gpus = _random_instance(seed)
    placements = _all_placements(models, gpus)
    values = [placement_kvpr(models, gpus, p) for p in placements]
    optimum = min(values)
    current = placements[values.index(max(v for v in values if math.isfinite(v)))]
    # The shares the replicas run with: their GPU's KV memory split by load, as the packer's fractions.
    shares: dict[tuple[str, GpuId], float] = {}
    for gpu in gpus:
        here = [m for m in models if gpu.id in current[m.name]]
        left = gpu.memory_gib - sum(m.size_gib for m in here)
        total = sum(m.rate_rps / m.slo_s / m.replicas for m in here)
        for m in here:
            part = (m.rate_rps / m.slo_s / m.replicas) / total if total > 0 else 1 / len(here)
            shares[(m.name, gpu.id)] = math.floor((m.size_gib + left * part) / gpu.memory_gib * 1000) / 1000
    cap = optimum * 1.05
    limit = 1.05 * cap
    fewest = min(_restarts(models, gpus, current, shares, p, limit) for p, v in zip(placements, values) if v <= cap)
    got = fewest_restarts(models, gpus, current, shares, cap, limit, time_limit_s=10)
    assert got.status == "OPTIMAL" and got.gpus_of is not None and got.objective is not None
    assert int(round(got.objective)) == fewest
    assert got.bound is not None and got.bound == pytest.approx(fewest)
    assert _restarts(models, gpus, current, shares, got.gpus_of, limit) == fewest
    assert got.max_kvpr <= cap * (1 + 1e-6)


def test_churn_rows_agree_with_each_other_on_a_tiny_cluster(tmp_path: Path) -> None:
    from bench.churn import (ChurnReport, Limits, changes, compare, format_report, generated, judge, replan,
                             summarise)
    from bench.results import write_json
    from kvsched.packer import solve

    cluster = generated("homogeneous", 1, 3, 5)
    first = solve(cluster.models, cluster.gpus)
    rows = [replan(cluster, change, first, Limits(step_s=1, bisection_s=3, moves_s=3))
            for change in changes(cluster, first)]
    assert [r.change for r in rows] == ["add", "rate", "remove", "gpu-lost", "node-added", "replica"]
    for r in rows:
        assert r.kvsched_unplaced == 0
        assert r.best_lower <= r.best_known * (1 + 1e-9) <= r.kvsched_max_kvpr * (1 + 1e-9)
        assert r.exact_moves is not None and r.exact_gap_pct is not None
        assert r.exact_gap_pct <= 5.0 + 1e-4
        if r.exact_proven and r.kvsched_gap_pct <= 5.0:  # kvsched's plan is within the cap: exact is fewer
            assert r.exact_moves <= r.kvsched_moves
        # Restarts: kvsched's are its moves plus its share restarts; the reference counts moves too, so it is at
        # least the fewest moves, and (a relaxation of kvsched's rule) at most kvsched's within the cap.
        assert r.kvsched_restarts == r.kvsched_moves + r.share_restarts
        assert r.fewest_restarts is not None
        # CP-SAT's proven bounds sit at or below what it found
        assert r.exact_bound is not None and r.exact_bound <= r.exact_moves
        assert r.fewest_restarts_bound is not None and r.fewest_restarts_bound <= r.fewest_restarts
        if r.exact_proven and r.fewest_restarts_proven:
            assert r.exact_moves <= r.fewest_restarts
            if r.kvsched_gap_pct <= 5.0:
                assert r.fewest_restarts <= r.kvsched_restarts
    assert rows[3].forced > 0  # the lost GPU held replicas
    report = ChurnReport(0.05, Limits(1, 3, 3), rows, summarise(rows), None, 1.0, targets=judge(rows, []))
    text = format_report(report)
    assert "re-plans: 6" in text and "fewest restarts" in text and "restarts <= 1.15 x fewest" in text
    assert f"moves >= {sum(r.exact_bound or 0 for r in rows)}" in text
    write_json(report, tmp_path / "a.json")
    side_by_side = compare(tmp_path / "a.json", tmp_path / "a.json").splitlines()
    assert sum(line.startswith(cluster.name) for line in side_by_side) == 6
