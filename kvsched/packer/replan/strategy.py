"""The re-plan strategy: keep the running replicas, or move as few as get within the stability threshold of the
best plan found, within `max_migrations` (`replan`; docs/packer.md has the why and the figures).

It puts together the pieces of the other `kvsched.packer.replan` modules and the fresh optimisation
(`kvsched.packer.optimise`), which makes the reference plans and optimises replicas that do not run yet.
Called by: `kvsched.packer.planner.solve` when replicas run.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from kvsched.packer.bounds import lower_bound
from kvsched.packer.deadline import Deadline
from kvsched.packer.domain import SearchStats
from kvsched.packer.evaluate import max_kvpr
from kvsched.packer.improve import improve
from kvsched.packer.instance import Instance, IntArray
from kvsched.packer.kvpr import within
from kvsched.packer.lns import polish as polish_search
from kvsched.packer.optimise import optimise
from kvsched.packer.options import PackOptions
from kvsched.packer.progress import Reporter
from kvsched.packer.replan.around import pinned_mask, place_around, repair_around
from kvsched.packer.replan.budget import lowest_within, within_budget
from kvsched.packer.replan.exact import exact_replan
from kvsched.packer.replan.fewest import fewest_moves, reduce_moves
from kvsched.packer.replan.polish import polish
from kvsched.packer.replan.relabel import relabel, relink, revert
from kvsched.packer.replan.restarts import Shares, cost_of, polish_restarts
from kvsched.packer.replan.running import align, moves_of


# Re-plans of at most this many replicas are settled by exact search (fewest moves, or lowest peak within
# the budget), within at most this many nodes (and PackOptions.exact_node_limit): 12 replicas on a few GPUs
# take milliseconds; on many GPUs the node limit stops it (the heuristic's plan is its incumbent).
_EXACT_REPLAN_ITEMS = 12
_EXACT_REPLAN_NODES = 50_000
# Attempts of `reduce_moves` after a search from scratch: this many replicas x attempts (the example's 38
# replicas get 105; removing a model from it: 17 -> 13 moves in 0.04 s; at 128 GPUs no attempt saved a move).
_REDUCE_WORK = 4_000
# Seconds the re-plan heuristics (repair, descent) may take whatever the time budget; they stop far earlier
# on one change (measured: at most 0.2 s at 1024 GPUs).
_REPLAN_MIN_S = 1.0
# A large re-plan on the heuristic's path that moves at most _LARGE_REDUCE_MAX_MOVES replicas tries
# `reduce_moves` (quick: no repair) for this many attempts per move. Measured on bench.churn's 128-GPU clusters:
# 90 -> 86 moves, 150 -> 145 restarts (mixed rate 10 -> 8, small add 12 -> 10), each such re-plan about twice as
# long (+50-150 ms); ungated, the scale instances' re-plans (15 and 49 moves at 128 GPUs) took 129 / 297 ms.
_LARGE_REDUCE_ROUNDS = 2
_LARGE_REDUCE_MAX_MOVES = 12
# Steps of the local search that makes a large re-plan's reference plan (the best plan found, whose threshold
# the re-plan must reach). At 128 GPUs it reaches its local optimum in ~60 steps after one change (10-60 ms);
# at 1024, 100 steps end within 0.5% of the 220-310 steps' optimum in a sixth of the time (25-45 ms).
_REFERENCE_STEPS = 100
# A small re-plan skips the search from scratch when what it has is within this share of a lower bound: the
# replicas that do not run yet, placed around the running ones, within it of the larger of the bound and the
# running replicas' own peak (no plan that keeps them can do better); or, when replicas must move, a plan in
# hand (local search, the fewest-moves heuristic's plan polished) within it of the bound, so a scratch
# reference could tighten the target by no more than this (the bisection's default tolerance, below which a
# pass from scratch rarely gains).
_SETTLED_GAP_RATIO = 0.002
# A large re-plan that searched from scratch looks for a better reference from its choice (`_near_reference`)
# only when the choice is within this share of its cap, (1 + threshold) x the scratch plan: measured on
# bench.churn's 128-GPU mixed cluster, the 5 changes that search from scratch, the improving phases from the
# choice ended 0.4-2.2% below the scratch plan (0.2-0.35 s each on a loaded machine), so a choice further below
# its cap stays within the threshold of what they would find.
_NEAR_GAIN_RATIO = 0.03


@dataclass(frozen=True, eq=False)
class Outcome:
    """A re-plan's result: the plan (item -> GPU index, -1: unplaced), a valid lower bound, the search's counters,
    and how much the `max_migrations` cap cost (0 when it did not bind)."""

    assign: IntArray
    lower: float
    stats: SearchStats
    next_move_gain: float


def replan(inst: Instance, items: list[int], run: IntArray, running: dict[int, list[int]], hint: IntArray,
           options: PackOptions, deadline: Deadline, rng: np.random.Generator, reporter: Reporter,
           shares: Shares | None = None) -> Outcome:
    """`_replan` (keep or move the fewest), then, when the running replicas' shares are known, the fewest
    restarts: `polish_restarts` moves replicas that restart anyway (and, without a `max_migrations` cap, replicas
    whose move saves two share restarts or more) off GPUs where staying replicas would restart for their share,
    never raising the peak. Its candidates are compared by restarts (moves + share restarts), ties to fewer
    moves (`_fewest_of`)."""
    shares = shares or Shares({}, options.stability_threshold_ratio)
    out = _replan(inst, items, run, running, hint, options, deadline, rng, reporter, shares)
    if not shares.known:
        return out
    polished = polish_restarts(inst, running, out.assign, shares, allow_moves=options.max_migrations is None)
    return Outcome(align(inst, run, polished), out.lower, out.stats, out.next_move_gain)


def _replan(inst: Instance, items: list[int], run: IntArray, running: dict[int, list[int]], hint: IntArray,
            options: PackOptions, deadline: Deadline, rng: np.random.Generator, reporter: Reporter,
            shares: Shares) -> Outcome:
    """Keep or move (the other modules of kvsched.packer.replan have the pieces; docs/packer.md the why).

    1. The best plan that keeps the running replicas (`_best_keep`): the repaired placement with the replicas
       that do not run yet optimised around the running ones, pinned -- no threshold shortens that search.
    2. Keep it when it is within (1 + threshold) x the lower bound (then it is within the threshold of every
       plan), else when it is within (1 + threshold) x the best plan found (local search, the fewest-moves
       heuristic's plan, a search from scratch when the plans in hand leave the best unknown).
    3. Otherwise the fewest moves within (1 + threshold) x the best plan found (`_fewest_against`), the
       replicas that move at no cost polished afterwards, and the `max_migrations` cap.
    """

    # The re-plan heuristics get a floor of their own: a budget of 0 (the controller's fast path) must not
    # turn the cheap way to few moves into a search from scratch.
    heuristics = Deadline(deadline.clock, deadline.start_s, max(options.time_budget_s, _REPLAN_MIN_S))

    theta = options.stability_threshold_ratio
    idx = np.asarray(items, dtype=np.int64)
    small = len(items) <= options.exact_max_items
    tiny = len(items) <= _EXACT_REPLAN_ITEMS
    repaired = repair_around(inst, items, run)
    base = repaired.assign
    forced = _forced(inst, items, run, base, not repaired.leftover)
    complete = bool((forced[idx] >= 0).all())
    forced_value = max_kvpr(inst, forced) if complete else math.inf
    lower = lower_bound(inst.item_load[idx], inst.item_size[idx], inst.gpu_memory, upper=forced_value,
                        groups=inst.item_group[idx])
    reporter.phase("re-plan", best=forced_value, lower=lower)
    keep = _best_keep(inst, items, run, running, forced, complete, hint, lower, options, deadline, heuristics,
                      rng, reporter)
    lower, stats, scratch = keep.lower, keep.stats, keep.scratch
    keep_value = max_kvpr(inst, keep.assign) if complete else math.inf
    choice = keep.assign
    if not within(keep_value, (1 + theta) * lower):
        # The bound cannot say: find the best plan. Plans in hand first (local search with everything movable,
        # the fewest-moves heuristic at the bound's threshold); a search from scratch when they leave the best
        # unknown: always on tiny instances (milliseconds, exact), on small ones unless a plan in hand is within
        # _SETTLED_GAP_RATIO of the bound, on large ones only when the heuristic finds nothing.
        heuristic = (fewest_moves(inst, items, run, keep.assign if complete else forced, (1 + theta) * lower,
                                  deadline=heuristics) if 0 < lower < math.inf else None)
        stays = (run >= 0) & (forced == run)  # what the forced plan keeps where it runs
        if heuristic is not None and bool((align(inst, run, heuristic)[stays] == run[stays]).all()):
            # It reached the bound's threshold moving only replicas that cost nothing: a better plan that keeps
            # the running ones, within the threshold of every plan.
            kept = polish(inst, run, align(inst, run, heuristic))
            kept = improve(inst, kept, deadline=heuristics, pinned=pinned_mask(inst, running, kept)).assign
            return _capped(inst, items, run, running, forced, align(inst, run, kept), kept, lower, stats, options,
                           heuristics)
        if small:
            improved = improve(inst, keep.assign, deadline=heuristics).assign if complete else None
            found = [a for a in (improved, heuristic) if a is not None]
        else:
            # Large: local search from the heuristic's plan is the cheap reference (at 128 GPUs within ~0.6% of a
            # plan from scratch after one change; from the kept plan ~1.5%), in at most _REFERENCE_STEPS steps.
            found = [] if heuristic is None else [
                heuristic, improve(inst, heuristic, max_steps=_REFERENCE_STEPS, deadline=heuristics).assign]
        if small:
            in_hand = min((max_kvpr(inst, polish(inst, run, align(inst, run, a))) for a in found), default=math.inf)
            need = not complete or tiny or in_hand > (1 + _SETTLED_GAP_RATIO) * lower
        else:
            need = not complete or heuristic is None
        if scratch is None and need:
            scratch, scratch_lower, stats = optimise(inst, items, options, deadline, rng, reporter, with_exact=tiny,
                                                     settled_ratio=_SETTLED_GAP_RATIO if small and not tiny else 0.0)
            lower = max(lower, scratch_lower)
            reporter.phase("re-plan", lower=lower)
        choice = _fewest_against(inst, items, run, running, keep.assign, complete, scratch, found, theta, options,
                                 heuristics, thorough=small, shares=shares)
        if not small and complete and scratch is not None and max_kvpr(inst, choice) > (
                (1 + theta) / (1 + _NEAR_GAIN_RATIO) * max_kvpr(inst, scratch)):
            # The scratch plan is one basin; the choice (the running placement barely changed) is another, often
            # a better one (the running plan was optimised with more time). Close to its cap, the choice may not
            # be within the threshold of what the improving phases find from it: then that is the reference.
            near = _near_reference(inst, items, align(inst, run, choice), scratch, lower, deadline, rng)
            if near is not None and not within(max_kvpr(inst, choice), (1 + theta) * max_kvpr(inst, near)):
                choice = _fewest_against(inst, items, run, running, keep.assign, complete, scratch, [near], theta,
                                         options, heuristics, thorough=small, shares=shares)
        if choice is not keep.assign:
            # Replicas that move at no cost (new ones, ones moving anyway) settle around the plan; unless that costs
            # share restarts (a lower peak lowers the pressure a kept share may leave: kvsched.packer.shares).
            unpolished = align(inst, run, choice)
            choice = polish(inst, run, unpolished)
            if small:
                choice = improve(inst, choice, deadline=heuristics, pinned=pinned_mask(inst, running, choice)).assign
            if shares.known and cost_of(inst, running, choice, shares) > cost_of(inst, running, unpolished, shares):
                choice = unpolished
    return _capped(inst, items, run, running, forced, align(inst, run, choice), keep.assign if complete else forced,
                   lower, stats, options, heuristics)


def _capped(inst: Instance, items: list[int], run: IntArray, running: dict[int, list[int]], forced: IntArray,
            choice: IntArray, start: IntArray, lower: float, stats: SearchStats, options: PackOptions,
            heuristics: Deadline) -> Outcome:
    """`choice` within `max_migrations` (beyond the moves the change forces): when it moves more, two routes from
    `start` (a plan that moves only what is forced) and the lower peak wins; exact on tiny instances.
    `next_move_gain` says what the cap cost."""
    gain = 0.0
    if options.max_migrations is not None:
        allowed = moves_of(inst, running, forced) + options.max_migrations
        if moves_of(inst, running, choice) > allowed:
            uncapped = max_kvpr(inst, choice)
            greedy = within_budget(inst, run, start, options.max_migrations, deadline=heuristics)
            bisected = lowest_within(inst, items, run, running, start, allowed, uncapped, deadline=heuristics)
            choice = min((greedy, bisected), key=lambda a: (max_kvpr(inst, a), moves_of(inst, running, a)))
            if len(items) <= _EXACT_REPLAN_ITEMS:
                exact = exact_replan(inst, items, running, target=None, max_moves=allowed,
                                     node_limit=min(options.exact_node_limit, _EXACT_REPLAN_NODES), incumbent=choice)
                if exact is not None:
                    choice = exact
            choice = polish(inst, run, align(inst, run, choice))
            gain = max(0.0, max_kvpr(inst, choice) - uncapped)
    return Outcome(choice, lower, stats, gain)


@dataclass(frozen=True, eq=False)
class _Keep:
    """`_best_keep`'s result: the plan, the lower bound (raised by a search from scratch), that search's plan
    (None when none ran) and counters."""

    assign: IntArray
    lower: float
    scratch: IntArray | None
    stats: SearchStats


def _best_keep(inst: Instance, items: list[int], run: IntArray, running: dict[int, list[int]], forced: IntArray,
               complete: bool, hint: IntArray, lower: float, options: PackOptions, deadline: Deadline,
               heuristics: Deadline, rng: np.random.Generator, reporter: Reporter) -> _Keep:
    """The lowest max KVPR found that keeps every running replica `forced` keeps (the moves the change forces,
    no more): the other replicas (new, pending, orphaned, evicted) cost nothing to place, so they are optimised
    around the pinned running ones -- local search with the running ones pinned; on small instances, unless
    that is settled (within _SETTLED_GAP_RATIO of the larger of the lower bound and the running replicas' own
    peak), a search from scratch with the whole time budget, its plan relabelled and rebuilt around the pinned
    replicas; on tiny ones the exact lowest peak within the forced moves. Ties go to the earlier candidate.

    `hint` (item -> GPU, -1: none; `planned_assignment`): the plan that keeps the hinted replicas where they
    are planned (the others placed around them and optimised) is returned when it is within
    `options.bisection_tolerance_ratio` of the best: re-solving the same world with the last plan as the hint
    returns that plan, never an equal one elsewhere.
    """
    stats = SearchStats()
    if not complete:
        return _Keep(forced, lower, None, stats)
    pinned = pinned_mask(inst, running, forced)
    free = [i for i in items if not pinned[i]]
    if not free:
        return _Keep(forced, lower, None, stats)
    fixed = np.where(pinned, forced, -1)
    candidates = [improve(inst, forced, deadline=heuristics, pinned=pinned).assign]
    floor = max_kvpr(inst, fixed)
    scratch: IntArray | None = None
    settled = max_kvpr(inst, candidates[0]) <= (1 + _SETTLED_GAP_RATIO) * max(lower, floor)
    if not settled and len(items) <= options.exact_max_items:
        tiny = len(items) <= _EXACT_REPLAN_ITEMS
        scratch, scratch_lower, stats = optimise(inst, items, options, deadline, rng, reporter, with_exact=tiny,
                                                 settled_ratio=0.0 if tiny else _SETTLED_GAP_RATIO)
        lower = max(lower, scratch_lower)
        reporter.phase("re-plan", lower=lower)
        rebuilt = place_around(inst, items, fixed, relabel(inst, run, scratch))
        if not rebuilt.leftover:
            candidates.append(improve(inst, rebuilt.assign, deadline=heuristics, pinned=pinned).assign)
        if tiny:
            exact = exact_replan(inst, items, running, target=None, max_moves=moves_of(inst, running, forced),
                                 node_limit=min(options.exact_node_limit, _EXACT_REPLAN_NODES),
                                 incumbent=candidates[0])
            if exact is not None:
                candidates.append(align(inst, run, exact))
    values = [max_kvpr(inst, a) for a in candidates]
    best = candidates[min(range(len(candidates)), key=lambda k: (values[k], k))]
    best_value = min(values)
    hinted = hint[np.asarray(free, dtype=np.int64)] >= 0
    if hinted.any():
        held = place_around(inst, items, fixed, hint)
        if not held.leftover:
            kept = held.assign
            kept = improve(inst, kept, deadline=heuristics, pinned=pinned | ((hint >= 0) & (kept == hint))).assign
            if max_kvpr(inst, kept) <= (1 + options.bisection_tolerance_ratio) * best_value:
                best = kept
    return _Keep(best, lower, scratch, stats)


def _fewest_of(inst: Instance, items: list[int], run: IntArray, running: dict[int, list[int]],
               candidates: list[IntArray], target: float, options: PackOptions,
               shares: Shares | None = None) -> IntArray:
    """The fewest moves within `target` from the candidates (each within it): every candidate tied at the
    fewest moves goes through `reduce_moves` (they reach different local optima), then exact search on tiny
    instances; ties to the lower peak. With `shares` known, those plans are polished for restarts
    (`polish_restarts`) and the fewest restarts win, ties to fewer moves, then the lower peak."""
    counts = [moves_of(inst, running, a) for a in candidates]
    attempts = max(1, _REDUCE_WORK // max(len(items), 1))
    reduced = [reduce_moves(inst, items, run, a, target, max_attempts=attempts)
               for a, count in zip(candidates, counts) if count == min(counts)]
    best = min(reduced, key=lambda a: (moves_of(inst, running, a), max_kvpr(inst, a)))
    if len(items) <= _EXACT_REPLAN_ITEMS:
        exact = exact_replan(inst, items, running, target=target, max_moves=None,
                             node_limit=min(options.exact_node_limit, _EXACT_REPLAN_NODES), incumbent=best)
        if exact is not None:
            best = align(inst, run, exact)
    if shares is not None and shares.known:
        # Restarts (moves + share restarts) decide, each candidate polished for them; ties to fewer moves.
        polished = [polish_restarts(inst, running, a, shares, allow_moves=options.max_migrations is None)
                    for a in [best, *reduced]]
        best = min(polished, key=lambda a: (*cost_of(inst, running, a, shares), max_kvpr(inst, a)))
    return best


def _fewest_against(inst: Instance, items: list[int], run: IntArray, running: dict[int, list[int]],
                    keep: IntArray, complete: bool, scratch: IntArray | None, found: list[IntArray],
                    theta: float, options: PackOptions, heuristics: Deadline, *, thorough: bool = True,
                    shares: Shares | None = None) -> IntArray:
    """`keep` (the best plan that keeps the running replicas) when it is within the threshold of the best plan
    found (`found`, the scratch plan, `keep` itself), else the fewest moves to (1 + threshold) x that plan's
    max KVPR among: the fewest-moves heuristic from `keep`, the scratch plan relabelled (never more moves than
    that) and path relinking towards it, each plan of `found` within the target, and exact search on tiny
    instances. `keep` is returned as is (the same object) when kept. `thorough` False (large instances, no
    scratch plan; found[0] the heuristic's plan at a tighter target): that plan with `revert` at the target."""
    idx = np.asarray(items, dtype=np.int64)
    if scratch is not None and int((scratch[idx] >= 0).sum()) < len(items):
        # Memory ran out from scratch: keep the repaired placement unless the scratch plan places more.
        if int((keep[idx] >= 0).sum()) >= int((scratch[idx] >= 0).sum()):
            return keep
        completed = fewest_moves(inst, items, run, keep, math.inf, deadline=heuristics)
        return completed if completed is not None else relabel(inst, run, scratch)
    if not complete and scratch is None:
        return keep
    plans = found + ([scratch] if scratch is not None else [])
    best_value = min((max_kvpr(inst, a) for a in plans), default=math.inf)
    if complete:
        best_value = min(best_value, max_kvpr(inst, keep))
    target = (1 + theta) * best_value
    if complete and within(max_kvpr(inst, keep), target):
        return keep
    if not thorough and scratch is None:
        # found[0] is the fewest-moves heuristic's plan at the bound's threshold, within this looser target:
        # bringing replicas home where the target allows saves moves at a fraction of another heuristic run;
        # with few moves, undoing them one at a time (chains only) may save more: the fewer restarts win.
        reverted = revert(inst, run, align(inst, run, found[0]), target)
        count = moves_of(inst, running, reverted)
        if count > _LARGE_REDUCE_MAX_MOVES:
            return reverted
        reduced = reduce_moves(inst, items, run, reverted, target, max_attempts=_LARGE_REDUCE_ROUNDS * count,
                               quick=True)
        known = shares if shares is not None else Shares({}, theta)
        return min((reverted, reduced), key=lambda a: (*cost_of(inst, running, a, known), max_kvpr(inst, a)))
    candidates = [revert(inst, run, align(inst, run, a), target) for a in found
                  if within(max_kvpr(inst, a), target)]
    if scratch is not None:
        relabelled = relabel(inst, run, scratch)
        candidates.append(revert(inst, run, relabelled, target))
        relinked = relink(inst, run, keep, relabelled, target) if complete else None
        if relinked is not None:
            candidates.append(relinked)
    heuristic = fewest_moves(inst, items, run, keep, target, deadline=heuristics)
    if heuristic is not None:
        candidates.append(heuristic)
    if not candidates:
        return keep
    return _fewest_of(inst, items, run, running, candidates, target, options, shares)


def _near_reference(inst: Instance, items: list[int], choice: IntArray, scratch: IntArray, lower: float,
                    deadline: Deadline, rng: np.random.Generator) -> IntArray | None:
    """The improving phases of a search from scratch (local search, re-packing, descent, iterated search:
    `kvsched.packer.lns.polish`) run from a large re-plan's choice, when they may beat the scratch plan: None when
    the scratch plan is settled (within _SETTLED_GAP_RATIO of the bound) or memory ran out, or when they end no
    lower than the scratch plan. Measured (bench.churn's 128-GPU mixed cluster, a model added): the scratch plan
    0.11920, the choice against it 0.12500 (5 moves), this from the choice 0.11706 in 0.25-0.5 s on a loaded
    machine; CP-SAT started from the scratch plan found 0.11903, so the choice was 5.02% above the best known
    plan. Now: 8 moves to 0.12254."""
    idx = np.asarray(items, dtype=np.int64)
    if not (bool((choice[idx] >= 0).all()) and bool((scratch[idx] >= 0).all())):
        return None
    value = max_kvpr(inst, scratch)
    settled = (1 + _SETTLED_GAP_RATIO) * lower
    if value <= settled or not math.isfinite(value):
        return None
    start = improve(inst, choice, deadline=deadline).assign
    polished, _ = polish_search(inst, start, lower, rng, deadline, settled)
    return polished if max_kvpr(inst, polished) < value else None


def _forced(inst: Instance, items: list[int], run: IntArray, base: IntArray, complete: bool) -> IntArray:
    """The repaired placement made complete with the fewest moves (memory only): the moves the change forces."""
    if complete:
        return base
    completed = fewest_moves(inst, items, run, base, math.inf)
    return completed if completed is not None else base
