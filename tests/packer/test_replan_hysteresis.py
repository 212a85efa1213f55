"""Re-planning's hysteresis is against what runs: replicas that do not run yet are optimised with the search's
whole budget around the running ones (pinned), and running replicas move only when the best plan found beats
the best plan that keeps them by more than the stability threshold. The `planned` hint makes re-solving the same
world return the same plan. Brute force is the oracle on tiny clusters (tests/packer/test_replan.py's).

Every solve here runs on a clock that never advances, so no path depends on the machine's speed.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
from hypothesis import assume, example, given
from hypothesis import strategies as st

from kvsched.packer import Gpu, GpuId, Model, PackOptions, Plan, Slot, solve
from tests.packer.test_replan import (
    TINY,
    changed_cluster,
    check_plan,
    moves_between,
    oracle,
    peak_of,
    planned_gpus,
    simulate_steps,
)

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "cluster.yaml"
# A zero-move plan counts as settled once within this share of a lower bound (replan.strategy._SETTLED_GAP_RATIO):
# the search for the replicas that do not run yet may stop there instead of at their exact optimum.
SETTLED = 0.002


def _clock() -> float:
    return 0.0


def _slots(plan: Plan) -> list[Slot]:
    return [Slot(p.model, p.replica, p.gpu) for p in plan.placements]


def _same(a: Plan, b: Plan) -> bool:
    return a.placements == b.placements and a.steps == b.steps


# ---- the bundled example: 3 replicas run, 35 are new ----


def test_the_example_keeps_what_runs_and_optimises_the_new_replicas() -> None:
    """Before: the 35 new replicas were placed greedily and kept because that was within 5% of the lower bound
    (max KVPR 0.4808, 4.97% above it); a threshold of 0 found 0.4618 with the same 3 replicas in place."""
    from kvsched.cluster_file import NO_HEADROOM, load_cluster_file

    cluster = load_cluster_file(EXAMPLE, NO_HEADROOM)
    plan = solve(cluster.models, cluster.gpus, current=cluster.current, options=cluster.options, clock=_clock)
    strict = solve(cluster.models, cluster.gpus, current=cluster.current, clock=_clock,
                   options=dataclasses.replace(cluster.options, stability_threshold_ratio=0.0))
    check_plan(cluster.models, cluster.gpus, plan)
    assert plan.max_kvpr <= strict.max_kvpr * 1.002
    assert plan.moves == 0 and plan.kept_current
    assert {(s.model, s.gpu) for s in cluster.current} <= {(p.model, p.gpu) for p in plan.placements}
    again = solve(cluster.models, cluster.gpus, current=cluster.current, options=cluster.options, clock=_clock)
    assert _same(plan, again), "deterministic"


def test_the_example_replanned_with_its_own_plan_as_the_hint_is_the_same_plan() -> None:
    from kvsched.cluster_file import NO_HEADROOM, load_cluster_file

    cluster = load_cluster_file(EXAMPLE, NO_HEADROOM)
    first = solve(cluster.models, cluster.gpus, current=cluster.current, options=cluster.options, clock=_clock)
    running = {(s.model, s.replica) for s in cluster.current}
    pending = [s for s in _slots(first) if (s.model, s.replica) not in running]
    assert len(pending) == 35
    again = solve(cluster.models, cluster.gpus, current=cluster.current, planned=pending, options=cluster.options,
                  clock=_clock)
    assert _same(first, again)


# ---- a loose lower bound: no moves for a gain below the threshold against the best plan found ----


def _mixed_cluster(seed: int) -> tuple[list[Model], list[Gpu]]:
    """44+ replicas on 6-11 GPUs of 40/80/141 GiB: past the small re-plan path (40 replicas)."""
    rng = np.random.default_rng(seed)
    gpus = [Gpu(f"n{g // 4}", g % 4, float(rng.choice([40.0, 80.0, 141.0]))) for g in range(int(rng.integers(6, 12)))]
    models: list[Model] = []
    while sum(m.replicas for m in models) < 44:
        models.append(Model(f"m{len(models):02d}", float(rng.integers(3, 30)), float(rng.integers(1, 12)),
                            float(rng.choice([0.5, 1.0, 2.0])), int(rng.choice([1, 1, 1, 2]))))
    return models, gpus


def test_a_loose_bound_does_not_move_replicas_for_a_gain_below_the_threshold() -> None:
    """The busiest model's rate x1.08 leaves the running placement 5.2% above the lower bound but 4.6% above
    the best plan found (from scratch): within the 5% threshold of it. Before: two replicas moved, because
    the target was 1.05 x the lower bound, which the heuristic reached."""
    models, gpus = _mixed_cluster(1)
    first = solve(models, gpus, clock=_clock)
    assert not first.unplaced
    current = _slots(first)
    busiest = max(range(len(models)), key=lambda j: models[j].load)
    changed = list(models)
    changed[busiest] = dataclasses.replace(models[busiest], rate_rps=models[busiest].rate_rps * 1.08)
    running = peak_of(changed, gpus, [s.gpu for s in sorted(current, key=lambda s: (
        [m.name for m in changed].index(s.model), s.replica))])
    fresh = solve(changed, gpus, clock=_clock)
    options = PackOptions(stability_threshold_ratio=0.05)
    plan = solve(changed, gpus, current=current, options=options, clock=_clock)
    assert running > 1.05 * plan.lower_bound, "the case needs a running placement outside the bound's threshold"
    assert running <= 1.05 * fresh.max_kvpr, "... and within the threshold of a plan the search finds"
    check_plan(changed, gpus, plan)
    assert plan.moves == 0 and plan.kept_current
    assert plan.max_kvpr == pytest.approx(running)


# ---- a large re-plan near its cap: within the threshold of what the improving phases find from it ----


def _mixed_128() -> tuple[list[Model], list[Gpu]]:
    """bench.churn's generated("mixed", 4, 128, 200): 200 models (about one in five with 2 replicas) on 128 GPUs
    of 40/80/141 GiB, sizes 6-50 GiB, 1-10 req/s, SLO 1-5 s."""
    rng = np.random.default_rng(4)
    memories = sorted(float(rng.choice([40.0, 80.0, 141.0])) for _ in range(128))
    models = []
    for j in range(200):
        replicas = 2 if rng.random() < 0.2 else 1
        models.append(Model(f"m{j}", round(rng.uniform(6.0, 50.0), 2), round(rng.uniform(1.0, 10.0), 2),
                            round(rng.uniform(1.0, 5.0), 2), replicas))
    return models, [Gpu(f"node-{g // 4}", g % 4, memories[g]) for g in range(128)]


def test_a_large_replan_is_within_the_threshold_of_what_the_improving_phases_find_from_it() -> None:
    """A model added to bench.churn's 128-GPU mixed cluster: the heuristic finds nothing at the bound's
    threshold, so the re-plan searches from scratch (0.11920). Before: 5 moves to 0.12500, 4.87% above that
    plan, but the improving phases run from the re-plan found 0.11777 (6.1% below it; CP-SAT from the scratch
    plan, 0.11903). The re-plan now looks for that better reference when its choice sits near its cap."""
    from kvsched.packer.evaluate import max_kvpr
    from kvsched.packer.improve import improve
    from kvsched.packer.instance import build_instance
    from kvsched.packer.lns import polish
    from kvsched.packer.replan.running import running_assignment, running_gpus

    models, gpus = _mixed_128()
    first = solve(models, gpus, clock=_clock)
    changed = [*models, Model("added-model", 16.0, 3.0, 1.0)]
    plan = solve(changed, gpus, current=_slots(first), options=PackOptions(stability_threshold_ratio=0.05),
                 clock=_clock)
    check_plan(changed, gpus, plan)
    assert plan.moves > 0, "the case needs a re-plan that moves replicas"
    inst = build_instance(changed, gpus)
    assign = running_assignment(inst, running_gpus(inst, _slots(plan)))
    found, _ = polish(inst, improve(inst, assign).assign, plan.lower_bound, np.random.default_rng(0))
    assert plan.max_kvpr <= 1.05 * max_kvpr(inst, found) * (1 + 1e-9)


# ---- the rule on tiny clusters, brute force as the oracle ----


def _check_the_rule(models: list[Model], gpus: list[Gpu], current: list[Slot], threshold: float) -> None:
    """moves > 0 only when the best plan that moves nothing is worse than (1 + threshold) x the optimum (the
    best plan found, on clusters this small); moves == 0: the replicas that do not run yet are placed as well
    as any zero-move plan places them (up to the settled share). Its own plan as the hint gives it back."""
    truth = oracle(models, gpus, current)
    assume(truth.outcomes)
    zero_move = [peak for peak, moves in truth.outcomes if moves == 0]
    assume(zero_move)  # nothing is forced to move
    options = PackOptions(stability_threshold_ratio=threshold)
    plan = solve(models, gpus, current=current, options=options, clock=_clock)
    assume(not plan.unplaced)
    check_plan(models, gpus, plan)
    best_keep = min(zero_move)
    if plan.moves > 0:
        assert best_keep * (1 + SETTLED) > (1 + threshold) * truth.optimum * (1 + 1e-9)
        assert plan.max_kvpr <= (1 + threshold) * truth.optimum * (1 + 1e-9)
    else:
        assert plan.max_kvpr <= best_keep * (1 + SETTLED) * (1 + 1e-9)
    running = {(c.model, c.replica) for c in current}
    hint = [s for s in _slots(plan) if (s.model, s.replica) not in running]
    again = solve(models, gpus, current=current, planned=hint, options=options, clock=_clock)
    assert planned_gpus(again) == planned_gpus(plan), "its own plan as the hint: the same plan"


@TINY
@given(changed_cluster(), st.sampled_from([0.0, 0.05, 0.2]))
def test_after_one_change_running_replicas_move_only_when_that_beats_keeping_them_by_the_threshold(
        case: tuple[list[Model], list[Gpu], list[Slot], list[Model], list[Gpu], str], threshold: float) -> None:
    _, _, current, models, gpus, _ = case
    _check_the_rule(models, gpus, current, threshold)


@st.composite
def running_and_new(draw: st.DrawFn) -> tuple[list[Model], list[Gpu], list[Slot]]:
    """1-2 models running where they happen to run (one a GPU) on 2-3 GPUs, and 1-3 new models."""
    gpus = [Gpu("n", g, float(draw(st.sampled_from([24, 40, 48, 80])))) for g in range(draw(st.integers(2, 3)))]

    def model(name: str) -> Model:
        return Model(name, float(draw(st.integers(1, 40))), float(draw(st.integers(0, 20))),
                     float(draw(st.sampled_from([0.5, 1.0, 2.0, 5.0]))))

    running = [model(f"r{j}") for j in range(draw(st.integers(1, 2)))]
    where = draw(st.permutations(range(len(gpus))))
    current = [Slot(m.name, 0, gpus[g].id) for m, g in zip(running, where)]
    return running + [model(f"n{j}") for j in range(draw(st.integers(1, 3)))], gpus, current


@TINY
@given(running_and_new(), st.sampled_from([0.0, 0.05, 0.2]))
# Found on main before this rule: the new replicas placed greedily were kept, 3.6% above the best zero-move plan.
@example(([Model("r0", 22, 5, 0.5), Model("r1", 7, 11, 2), Model("n0", 18, 13, 5), Model("n1", 24, 9, 5),
           Model("n2", 7, 16, 1)], [Gpu("n", 0, 80.0), Gpu("n", 1, 80.0), Gpu("n", 2, 48.0)],
          [Slot("r0", 0, GpuId("n", 1)), Slot("r1", 0, GpuId("n", 2))]), 0.2)
@example(([Model("r0", 12, 12, 5), Model("n0", 19, 2, 5), Model("n1", 34, 14, 1), Model("n2", 6, 15, 0.5)],
          [Gpu("n", 0, 80.0), Gpu("n", 1, 80.0)], [Slot("r0", 0, GpuId("n", 0))]), 0.2)
def test_new_replicas_are_optimised_around_the_running_ones(
        case: tuple[list[Model], list[Gpu], list[Slot]], threshold: float) -> None:
    models, gpus, current = case
    _check_the_rule(models, gpus, current, threshold)


# ---- the `planned` hint ----

H = [Gpu("a", g, 80.0) for g in range(3)]
RUN_X = [Slot("x", 0, H[0].id)]
X_AND_Y = [Model("x", 20, 4, 1), Model("y", 20, 4, 1)]


@pytest.mark.parametrize(
    ("models", "current", "planned", "y_on"),
    [
        pytest.param(X_AND_Y, RUN_X, [], 1, id="no hint: the first of the equal GPUs"),
        pytest.param(X_AND_Y, RUN_X, [Slot("y", 0, H[2].id)], 2, id="exact ties: the hinted GPU"),
        pytest.param(X_AND_Y, RUN_X, [Slot("y", 0, H[0].id)], 1, id="a worse hint is overridden"),
        pytest.param(X_AND_Y, RUN_X, [Slot("gone", 0, H[2].id)], 1, id="unknown model: ignored"),
        pytest.param(X_AND_Y, RUN_X, [Slot("y", 0, Gpu("b", 0, 80.0).id)], 1, id="unknown GPU: ignored"),
        pytest.param(X_AND_Y, RUN_X, [Slot("y", 1, H[2].id)], 1, id="replica beyond the model's: ignored"),
        pytest.param(X_AND_Y, [*RUN_X, Slot("y", 0, H[1].id)], [Slot("y", 0, H[2].id)], 1,
                     id="listed in current too: current wins"),
        pytest.param([Model("x", 20, 4, 1, replicas=2), Model("y", 20, 4, 1)], RUN_X,
                     [Slot("x", 1, H[0].id), Slot("y", 0, H[2].id)], 2,
                     id="on a GPU where the model runs: that slot ignored, the rest followed"),
        pytest.param(X_AND_Y, [], [Slot("x", 0, H[1].id), Slot("y", 0, H[2].id)], 2,
                     id="nothing running: the hint still breaks ties"),
        pytest.param([Model("y", 20, 4, 1)], [], [], 0, id="empty hint, nothing running"),
    ],
)
def test_planned_hint(models: list[Model], current: list[Slot], planned: list[Slot], y_on: int) -> None:
    plan = solve(models, H, current=current, planned=planned, clock=_clock)
    check_plan(models, H, plan)
    assert {p.gpu for p in plan.placements if p.model == "y"} == {H[y_on].id}
    assert plan.moves == moves_between(current, models, H, planned_gpus(plan)) == 0
    simulate_steps(models, H, current, plan)
    again = solve(models, H, current=current, planned=planned, clock=_clock)
    assert _same(plan, again), "deterministic"


def test_a_fresh_plan_resolved_with_itself_as_the_hint_is_the_same_plan() -> None:
    models = [Model(f"m{j}", 10 + j, 1 + j % 3, 1, replicas=1 + j % 2) for j in range(8)]
    gpus = [Gpu("n", g, 80.0) for g in range(5)]
    first = solve(models, gpus, clock=_clock)
    again = solve(models, gpus, planned=_slots(first), clock=_clock)
    assert _same(first, again)
