"""`solve`: the packer's one entry point, for a fresh plan and a re-plan alike. Models and GPUs in, a `Plan` out.

A fresh plan is a re-plan with nothing running. Steps, each in its own module: validate and expand replicas
(instance), set aside replicas no GPU can hold (here, with a cause and a sentence each), then
- nothing running: bound the optimum from below (bounds), start from the Prism greedy (greedy), bisect on the
  target T with retuning passes (search, pack), improve off the peak GPU (improve, lns), prove or improve
  exactly on small instances (exact) -- `optimise`;
- replicas running (`current`): repair around them; optimise the replicas that do not run yet around the
  running ones, pinned (`_best_keep`); keep that when no plan found beats it by more than the stability
  threshold (the lower bound decides it when it can), else the fewest moves within the threshold of the best
  plan found, within `max_migrations` (replan; `_replan` here); the `planned` hint settles equal plans;
then order the migration steps (steps) and report (result).
Pure: the only outside input is the injected clock, read for solve_seconds and the time budget.
Called by: the CLI, the controller, the benchmark.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from kvsched.packer.bounds import lower_bound
from kvsched.packer.deadline import Clock, Deadline
from kvsched.packer.domain import Gpu, MigrationStep, Model, Plan, SearchStats, Slot
from kvsched.packer.evaluate import max_kvpr
from kvsched.packer.improve import improve
from kvsched.packer.instance import Instance, IntArray, build_instance
from kvsched.packer.optimise import optimise
from kvsched.packer.options import PackOptions
from kvsched.packer.progress import ProgressCallback, Reporter
from kvsched.packer.replan import (
    align,
    count_moves,
    exact_replan,
    fewest_moves,
    moves_of,
    polish,
    reduce_moves,
    relabel,
    rematch,
    relink,
    repair_around,
    pinned_mask,
    place_around,
    planned_assignment,
    revert,
    running_assignment,
    running_gpus,
    within,
    within_budget,
    lowest_within,
)
from kvsched.packer.result import build_plan
from kvsched.packer.steps import order_steps
from kvsched.packer.unplaced import carry_causes, no_room_reason, spare_running, unplaceable

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


def solve(
    models: Sequence[Model],
    gpus: Sequence[Gpu],
    *,
    current: Sequence[Slot] = (),
    planned: Sequence[Slot] = (),
    options: PackOptions = PackOptions(),
    clock: Clock = time.perf_counter,
    rng: np.random.Generator | None = None,
    progress: ProgressCallback | None = None,
) -> Plan:
    """Place every replica of `models` on `gpus` minimising the max KVPR; report what cannot be placed.

    `current` (optional) says where replicas run now; slots naming unknown models or GPUs are ignored (they
    describe what no longer exists), and replica numbers do not matter (replicas of a model are
    interchangeable). Replicas that do not run yet (new, pending, orphaned) cost nothing to place, so the search
    optimises them around the running ones with its whole budget; running replicas move only when the best
    plan found beats the best plan that keeps them by more than `options.stability_threshold_ratio`, and then
    as few as get within that threshold of the best plan found (see kvsched.packer.replan). `Plan.steps`
    orders the moves.

    `planned` (optional) says where replicas that do not run yet are planned now (the caller's last plan for
    its pending replicas): a hint, not a constraint. When the plan that keeps them there (the others optimised
    around them) is within `options.bisection_tolerance_ratio` of the best plan that moves no running replica,
    it is the answer, so re-solving the same world with the last plan as the hint returns that plan rather than
    an equal one elsewhere. Slots naming unknown models or GPUs, replica numbers beyond a model's replicas, a
    replica also in `current` (current wins) or a GPU where the model runs are ignored.

    Raises InvalidInput for bad models, GPUs, options or a replica listed twice in `current`. Never raises for
    an infeasible cluster: those replicas are unplaced, with a cause. `rng` drives the randomised search
    phases; None means a generator seeded with 0 (the same input gives the same plan when the time budget does
    not cut the search; the injected `clock` makes that testable). `progress` (optional) is called with a
    `Progress` at each phase boundary and at most a few times a second between them, last with phase "done"
    (kvsched.packer.progress).

    Complexity, n replicas on G GPUs: validation O(n + G); a fresh plan is dominated by the bisection
    (O(log(1/tol)) passes of O(n log n) to O(n G)) and the local search, bounded by `time_budget_s`. A re-plan
    with nothing new (every replica running) that is kept costs O(n log n + placed * G) (the repair and the lower
    bound); replicas that do not run yet add a local search with the running ones pinned and, for n <= 40 unless
    that is within _SETTLED_GAP_RATIO of a lower bound, a search from scratch (the time budget). One that must
    move replicas adds O(shed * G) for the fewest-moves heuristic and a local search (n > 40), or a search from
    scratch (n <= 40, unless a plan in hand is within _SETTLED_GAP_RATIO of the bound).
    """
    start = clock()
    reporter = Reporter(progress, lambda: clock() - start)
    # With a callback, every time check of the search is also a (throttled) progress call.
    deadline = Deadline(reporter.elapsed, 0.0, options.time_budget_s)
    rng = np.random.default_rng(0) if rng is None else rng
    inst = build_instance(models, gpus)
    running = running_gpus(inst, current)
    run = running_assignment(inst, running)
    causes = spare_running(inst, run, unplaceable(inst))
    items = [i for i in range(inst.n_items) if i not in causes]
    hint = planned_assignment(inst, items, run, running, current, planned)
    if items and (run[np.asarray(items)] >= 0).any():
        out = _replan(inst, items, run, running, hint, options, deadline, rng, reporter)
    else:
        assign, lower, stats = optimise(inst, items, options, deadline, rng, reporter)
        out = _Outcome(_follow_hint(inst, items, assign, hint, options), lower, stats, 0.0)
    for i in items:
        if out.assign[i] < 0:
            causes[i] = ("InsufficientCapacity", no_room_reason(inst, i))
    # Replicas are interchangeable: a running replica keeps its GPU whatever its number (the numbers past a
    # model's capable GPUs are the ones set aside above), and the causes go with the replicas left unplaced.
    assign = align(inst, run, out.assign)
    causes = carry_causes(inst, out.assign, assign, causes)
    run = rematch(inst, running, assign)
    steps = [
        MigrationStep(inst.item_model[s.item], inst.item_replica[s.item],
                      inst.gpu_id(s.source) if s.source >= 0 else None, inst.gpu_id(s.target), s.stop_first)
        for s in order_steps(inst, run, assign)
    ]
    any_running = any(running.values())
    plan = build_plan(inst, assign, lower_bound=out.lower, solve_seconds=deadline.elapsed_s(), causes=causes,
                      steps=steps, kept_current=any_running and count_moves(run, assign) == 0,
                      next_move_gain=out.next_move_gain, stats=out.stats)
    reporter.finish(plan.max_kvpr, plan.lower_bound, plan.solve_seconds)
    return plan


@dataclass(frozen=True, eq=False)
class _Outcome:
    assign: IntArray
    lower: float
    stats: SearchStats
    next_move_gain: float


def _replan(inst: Instance, items: list[int], run: IntArray, running: dict[int, list[int]], hint: IntArray,
            options: PackOptions, deadline: Deadline, rng: np.random.Generator, reporter: Reporter) -> _Outcome:
    """Keep or move (kvsched.packer.replan has the pieces; docs/packer.md the why).

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
                                 heuristics, thorough=small)
        if choice is not keep.assign:
            # Replicas that move at no cost (new ones, ones moving anyway) settle around the plan.
            choice = polish(inst, run, align(inst, run, choice))
            if small:
                choice = improve(inst, choice, deadline=heuristics, pinned=pinned_mask(inst, running, choice)).assign
    return _capped(inst, items, run, running, forced, align(inst, run, choice), keep.assign if complete else forced,
                   lower, stats, options, heuristics)


def _capped(inst: Instance, items: list[int], run: IntArray, running: dict[int, list[int]], forced: IntArray,
            choice: IntArray, start: IntArray, lower: float, stats: SearchStats, options: PackOptions,
            heuristics: Deadline) -> _Outcome:
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
    return _Outcome(choice, lower, stats, gain)


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
               candidates: list[IntArray], target: float, options: PackOptions) -> IntArray:
    """The fewest moves within `target` from the candidates (each within it): every candidate tied at the
    fewest moves goes through `reduce_moves` (they reach different local optima), then exact search on tiny
    instances; ties to the lower peak."""
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
    return best


def _fewest_against(inst: Instance, items: list[int], run: IntArray, running: dict[int, list[int]],
                    keep: IntArray, complete: bool, scratch: IntArray | None, found: list[IntArray],
                    theta: float, options: PackOptions, heuristics: Deadline, *, thorough: bool = True) -> IntArray:
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
        # bringing replicas home where the target allows saves moves at a fraction of another heuristic run.
        return revert(inst, run, align(inst, run, found[0]), target)
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
    return _fewest_of(inst, items, run, running, candidates, target, options)


def _forced(inst: Instance, items: list[int], run: IntArray, base: IntArray, complete: bool) -> IntArray:
    """The repaired placement made complete with the fewest moves (memory only): the moves the change forces."""
    if complete:
        return base
    completed = fewest_moves(inst, items, run, base, math.inf)
    return completed if completed is not None else base


def _follow_hint(inst: Instance, items: list[int], assign: IntArray, hint: IntArray, options: PackOptions) -> IntArray:
    """Nothing runs: the plan that keeps the hinted replicas where `hint` plans them (the rest placed around
    them, then local search moving only those) when it is within `options.bisection_tolerance_ratio` of
    `assign` (the search's plan) and places as many replicas; else `assign`."""
    if not (hint >= 0).any():
        return assign
    held = place_around(inst, items, np.full(inst.n_items, -1, dtype=np.int64), hint)
    idx = np.asarray(items, dtype=np.int64)
    if len(held.leftover) > int((assign[idx] < 0).sum()):
        return assign
    kept = improve(inst, held.assign, pinned=(hint >= 0) & (held.assign == hint)).assign
    if max_kvpr(inst, kept) <= (1 + options.bisection_tolerance_ratio) * max_kvpr(inst, assign):
        return kept
    return assign
