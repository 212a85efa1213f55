"""Share restarts in the packer (kvsched.packer.shares, issue 17): which staying replicas keep the memory share they
run with, the fewest that must restart, and what `solve` makes of the running shares (`Slot.memory_fraction`).

The rule is checked against brute force over every subset of restarts, and `solve`'s plans against the invariants:
kept replicas are told their running share, every GPU's shares fit its bound, a kept share leaves its replica's
own pressure within the limit, resize steps name staying replicas, and a plan re-solved from itself restarts
nothing.
"""

from __future__ import annotations

import itertools
import math
import random

import pytest

from kvsched.api.names import SHARE_DECIMALS, share_of
from kvsched.packer import Gpu, GpuId, InvalidInput, Model, PackOptions, Plan, Slot, solve
from kvsched.packer.shares import SHARE_STEP, least_share, pressure_limit, restarts_on_gpu, share_bound

M = 80.0


def _fits(memory: float, bound: float, kept: list[tuple[float, float, float]], flexible: list[tuple[float, float]],
          limit: float) -> bool:
    """The rule written out: every kept replica's own pressure <= L, and kept shares + flexible needs <= bound."""
    used = 0.0
    for share, inside, load in kept:
        kv = (share + SHARE_STEP) * memory - inside
        if load > 0 and (kv <= 0 or load / kv > limit * (1 + 1e-9)):
            return False
        used += max(share, inside / memory)
    for inside, load in flexible:
        used += (inside + (load / limit if load > 0 else 0.0)) / memory
    return used <= bound + 1e-6


def _brute_restarts(memory: float, bound: float, staying: list[tuple[float, float, float]],
                    flexible: list[tuple[float, float]], limit: float) -> int:
    for k in range(len(staying) + 1):
        for out in itertools.combinations(range(len(staying)), k):
            kept = [s for i, s in enumerate(staying) if i not in out]
            moved = flexible + [(staying[i][1], staying[i][2]) for i in out]
            if _fits(memory, bound, kept, moved, limit):
                return k
    return len(staying) + 1  # no subset fits (cannot happen when restarting all fits)


@pytest.mark.parametrize(("staying", "flexible", "limit", "kept"), [
    pytest.param([], [], 1.0, [], id="empty GPU"),
    pytest.param([(0.5, 20.0, 4.0), (0.5, 20.0, 4.0)], [], 1.0, [True, True],
                 id="shares fill the bound exactly, nobody new: all kept"),
    pytest.param([(0.6, 20.0, 4.0), (0.4, 10.0, 1.0)], [(10.0, 1.0)], 1.0, [False, True],
                 id="a newcomer: the replica with the most share to spare restarts, one only"),
    pytest.param([(0.3, 20.0, 8.0), (0.2, 10.0, 0.1)], [], 1.0, [False, True],
                 id="own pressure over the limit: restarts though the sum fits"),
    pytest.param([(0.25, 20.0, 0.0)], [], 0.5, [True], id="no load: kept at its least share"),
    pytest.param([(0.5, 20.0, 1.0), (0.5, 20.0, 1.0)], [(30.0, 0.0)], 1.0, [False, False],
                 id="zero free memory for a newcomer: everyone restarts"),
    pytest.param([(0.5, 20.0, 2.0), (0.5, 20.0, 2.0)], [(10.0, 0.0)], 1.0, [False, True],
                 id="exact tie in gain: the first in order restarts"),
])
def test_restarts_on_gpu(staying: list[tuple[float, float, float]], flexible: list[tuple[float, float]],
                         limit: float, kept: list[bool]) -> None:
    assert restarts_on_gpu(M, 1.0, staying, flexible, limit) == kept


@pytest.mark.parametrize("seed", range(40))
def test_restarts_on_gpu_is_the_fewest(seed: int) -> None:
    rng = random.Random(seed)
    memory = rng.choice([40.0, 80.0])
    staying = []
    left = 1.0
    for _ in range(rng.randint(1, 5)):
        inside = rng.uniform(2, 12)
        share = min(left, inside / memory + rng.uniform(0.0, 0.25))
        left -= share
        staying.append((round(share, 3), inside, rng.uniform(0, 4)))
    flexible = [(rng.uniform(2, 12), rng.uniform(0, 3)) for _ in range(rng.randint(0, 2))]
    limit = rng.uniform(0.2, 3.0)
    bound = share_bound(memory, rng.choice([0.0, 1.0]), rng.choice([0.0, 0.5 * (len(staying) + len(flexible))]))
    keep = restarts_on_gpu(memory, bound, staying, flexible, limit)
    kept = [s for s, k in zip(staying, keep) if k]
    moved = flexible + [(s[1], s[2]) for s, k in zip(staying, keep) if not k]
    everyone = flexible + [(s[1], s[2]) for s in staying]
    if _fits(memory, bound, [], everyone, limit):  # restarting all fits: the answer fits and is the fewest
        assert _fits(memory, bound, kept, moved, limit)
        assert keep.count(False) == _brute_restarts(memory, bound, staying, flexible, limit)


def test_share_step_is_the_written_rounding() -> None:
    assert SHARE_STEP == pytest.approx(10.0 ** -SHARE_DECIMALS)
    assert least_share(20.0, 80.0) == 0.25 and share_bound(80.0, 1.0, 1.0) == pytest.approx(0.975)


def _cluster(seed: int) -> tuple[list[Model], list[Gpu]]:
    rng = random.Random(seed)
    gpus = [Gpu("n", g, rng.choice([40.0, 80.0]), reserve_gib=rng.choice([0.0, 1.0])) for g in range(4)]
    models = [Model(f"m{j}", round(rng.uniform(3, 14), 2), round(rng.uniform(0.5, 6), 2), 1.0,
                    rng.choice([1, 1, 2]), overhead_gib=rng.choice([0.0, 1.0]), context_gib=rng.choice([0.0, 0.5]))
              for j in range(7)]
    return models, gpus


def _slots(plan: Plan, shares: bool = True) -> list[Slot]:
    return [Slot(p.model, p.replica, p.gpu, share_of(p.memory_fraction) if shares else None)
            for p in plan.placements]


def _check_invariants(plan: Plan, models: list[Model], gpus: list[Gpu], current: list[Slot],
                      threshold: float) -> None:
    by_model = {m.name: m for m in models}
    memory = {g.id: g for g in gpus}
    running = {(s.model, s.gpu): s.memory_fraction for s in current}
    resized = {(s.model, s.target) for s in plan.steps if s.is_resize}
    moved_in = {(s.model, s.target) for s in plan.steps if s.source is not None and not s.is_resize}
    limit = pressure_limit(plan.max_kvpr, threshold)
    for s in plan.steps:
        if s.is_resize:
            assert s.stop_first and (s.model, s.source) in running
    on_gpu: dict[GpuId, list[float]] = {}
    for p in plan.placements:
        on_gpu.setdefault(p.gpu, []).append(p.memory_fraction)
        key = (p.model, p.gpu)
        if key in running and key not in resized and key not in moved_in:  # stays and keeps its share
            m, g = by_model[p.model], memory[p.gpu]
            assert p.memory_fraction == pytest.approx(running[key])
            kv = (running[key] + SHARE_STEP) * g.memory_gib - m.size_gib - m.overhead_gib
            assert m.replica_load <= 0 or m.replica_load / kv <= limit * (1 + 1e-9)
    for gid, fractions in on_gpu.items():
        contexts = sum(by_model[p.model].context_gib for p in plan.placements if p.gpu == gid)
        assert sum(fractions) <= share_bound(memory[gid].memory_gib, memory[gid].reserve_gib, contexts) + 1e-6


@pytest.mark.parametrize("seed", range(8))
def test_replan_with_shares_keeps_the_memory_invariants(seed: int) -> None:
    models, gpus = _cluster(seed)
    first = solve(models, gpus, options=PackOptions(time_budget_s=1))
    current = _slots(first)
    # One change: the busiest model's rate x2.
    busiest = max(models, key=lambda m: (m.load, m.name))
    changed = [Model(m.name, m.size_gib, m.rate_rps * 2, m.slo_s, m.replicas, m.overhead_gib, m.context_gib)
               if m is busiest else m for m in models]
    options = PackOptions(time_budget_s=1, stability_threshold_ratio=0.05)
    plan = solve(changed, gpus, current=current, options=options)
    _check_invariants(plan, changed, gpus, current, 0.05)
    # The same change without the shares: no resize steps (the packer as before), the same moves or more restarts.
    blind = solve(changed, gpus, current=_slots(first, shares=False), options=options)
    assert blind.resizes == 0


@pytest.mark.parametrize("seed", range(8))
def test_a_plan_re_solved_from_itself_restarts_nothing(seed: int) -> None:
    models, gpus = _cluster(seed)
    first = solve(models, gpus, options=PackOptions(time_budget_s=1))
    again = solve(models, gpus, current=_slots(first), options=PackOptions(time_budget_s=1))
    assert again.restarts == 0
    assert {(p.model, p.gpu): share_of(p.memory_fraction) for p in again.placements} == \
        {(s.model, s.gpu): s.memory_fraction for s in _slots(first)}


def test_a_lost_gpu_restarts_fewer_than_the_share_rule_alone_would() -> None:
    # Six replicas on three GPUs; one GPU is lost: its two replicas land where the others keep their shares
    # unless restarting them makes room. The plan lists the restarts as resize steps before the moves.
    models = [Model(f"m{j}", 10.0, 2.0, 1.0) for j in range(6)]
    gpus = [Gpu("n", g, 80.0) for g in range(3)]
    first = solve(models, gpus)
    lost = first.placements[0].gpu
    plan = solve(models, [g for g in gpus if g.id != lost], current=_slots(first),
                 options=PackOptions(stability_threshold_ratio=0.05))
    kinds = ["resize" if s.is_resize else "start" for s in plan.steps]
    assert kinds == sorted(kinds, key=lambda k: k != "resize")  # resizes first
    _check_invariants(plan, models, [g for g in gpus if g.id != lost], _slots(first), 0.05)
    assert plan.resizes >= 1  # the GPUs were full: the newcomers need someone's share


@pytest.mark.parametrize("fraction", [0.0, -0.1, 1.5, math.nan])
def test_a_bad_running_share_is_invalid_input(fraction: float) -> None:
    models = [Model("a", 10.0, 1.0, 1.0)]
    gpus = [Gpu("n", 0, 80.0)]
    with pytest.raises(InvalidInput, match="memory_fraction"):
        solve(models, gpus, current=[Slot("a", 0, GpuId("n", 0), fraction)])
