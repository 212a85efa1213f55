"""The fresh optimisation: the lowest max KVPR found for a set of replicas, none of them running.

Steps, each in its own module: bound the optimum from below (bounds), start from the Prism greedy (greedy),
bisect on the target T with retuning passes (search, pack), improve off the peak GPU (improve, lns), prove or
improve exactly on small instances (exact). When memory runs out, the replicas the greedy placed are optimised
alone and the rest stay unplaced.
Called by: `kvsched.packer.planner.solve` (nothing runs), `kvsched.packer.replan.strategy` (the plan from
scratch a re-plan is measured against).
"""

from __future__ import annotations

import math

import numpy as np

from kvsched.packer.bounds import lower_bound
from kvsched.packer.deadline import Deadline
from kvsched.packer.domain import SearchStats
from kvsched.packer.evaluate import gpu_kvprs, max_kvpr
from kvsched.packer.exact import prove_or_improve
from kvsched.packer.greedy import greedy
from kvsched.packer.improve import improve
from kvsched.packer.instance import Instance, IntArray
from kvsched.packer.kvpr import IMPROVEMENT_RATIO, reaches
from kvsched.packer.lns import polish as polish_search
from kvsched.packer.options import PackOptions
from kvsched.packer.pack import try_pack
from kvsched.packer.progress import Reporter
from kvsched.packer.search import bisect_target


# Share of the time budget the bisection may use before the local search takes over. At thousands of GPUs
# the local search gains more per second than further passes from scratch (measured: 2.9% -> 0.27% above
# the fluid bound in 22 s at 8192 GPUs, where 8 bisection steps took 34 s).
_BISECTION_SHARE = 0.3
# Small instances: the exact search first gets 1/8 of its node budget; unproven, the improving phases of large
# instances run and the search resumes with the rest. Mixed 40/80/141 GiB clusters of 5-12 GPUs, 10-30 models
# (bench/weak_spots.py): the exact search alone left them up to 4% above the best known plan.
_EXACT_FIRST_SHARE_INVERSE = 8


def optimise(inst: Instance, items: list[int], options: PackOptions, deadline: Deadline,
             rng: np.random.Generator, reporter: Reporter, *,
             with_exact: bool = True, settled_ratio: float = 0.0) -> tuple[IntArray, float, SearchStats]:
    """Best assignment of `items` (some may stay -1 when memory runs out), a valid lower bound, counters.
    `with_exact` False: no exact stage, small instances get the improving phases of large ones instead.
    `settled_ratio` > 0: the improving phases stop once the plan is within this share of the lower bound.

    Time: bisection stops starting new steps after _BISECTION_SHARE of the budget (its first step always
    runs, so there is always a plan); the improving phases stop at the budget.
    """
    reporter.phase("greedy")
    sub_load = inst.item_load[items]
    sub_size = inst.item_size[items]
    base = greedy(inst.subset(items)) if items else np.zeros(0, dtype=np.int64)
    start_assign = np.full(inst.n_items, -1, dtype=np.int64)
    if items:
        start_assign[np.asarray(items)] = base
    complete = bool((base >= 0).all())
    upper = max_kvpr(inst, start_assign) if complete else float("inf")
    # With the model of each replica: replicas never share a GPU, which the item-value test uses.
    lower = (lower_bound(sub_load, sub_size, inst.gpu_memory, upper=upper, groups=inst.item_group[items])
             if items else 0.0)
    if not items or inst.n_gpus == 0:
        return start_assign, lower, SearchStats()
    if not complete and (not math.isfinite(lower) or not _packs_at_all(inst, items, lower)):
        return _optimise_placed(inst, items, start_assign, options, deadline, rng, reporter, with_exact=with_exact,
                                settled_ratio=settled_ratio)
    reporter.phase("bisection", best=upper, lower=lower)
    exact_next = with_exact and len(items) <= options.exact_max_items
    res = bisect_target(
        inst, items, lower, upper,
        upper_assign=start_assign if complete else None,
        checkpoints=options.checkpoints,
        retune_threshold_ratio=options.retune_threshold_ratio,
        retune=options.retune,
        # The exact stage closes whatever gap is left on small instances, so bisection need not be fine there,
        # nor re-run retuned passes to find out whether repair could have reached T.
        tolerance_ratio=(max(options.bisection_tolerance_ratio, 0.01) if exact_next
                         else options.bisection_tolerance_ratio),
        rerun_retuned=not exact_next,
        max_iterations=options.max_bisection_iterations,
        deadline=deadline.share(_BISECTION_SHARE),
        on_step=lambda best: reporter.note(best=best),
    )
    if res.assign is None:
        return _optimise_placed(inst, items, start_assign, options, deadline, rng, reporter, with_exact=with_exact,
                                settled_ratio=settled_ratio)
    assign = res.assign
    steps = 0
    if options.local_search:
        reporter.phase("local search", best=res.max_kvpr)
        better = improve(inst, assign, deadline=deadline)
        assign, steps = better.assign, better.steps
        reporter.note(best=better.max_kvpr)
        good_enough = (1 + settled_ratio) * lower if settled_ratio > 0 else -math.inf
        if not exact_next and better.max_kvpr > good_enough:  # small instances go to the exact stage first
            assign, more = polish_search(inst, assign, lower, rng, deadline, good_enough)
            steps += more
            reporter.note(best=max_kvpr(inst, assign))
    optimal = reaches(max_kvpr(inst, assign), lower)
    if not optimal and exact_next and not deadline.expired():
        reporter.phase("exact")
        # A share of the nodes proves most small instances optimal (ADRS-50: all within 23k of 200k); the
        # others get the improving phases of large instances, then the exact search again with the rest.
        first = options.exact_node_limit // _EXACT_FIRST_SHARE_INVERSE
        exact = prove_or_improve(inst, items, assign, lower, first, deadline)
        assign, optimal = exact.assign, exact.optimal
        if not optimal and options.local_search and not deadline.expired():
            assign, more = polish_search(inst, assign, lower, rng, deadline)
            steps += more
            exact = prove_or_improve(inst, items, assign, lower, options.exact_node_limit - exact.nodes, deadline)
            assign, optimal = exact.assign, exact.optimal
        if optimal:
            lower = max(lower, exact.max_kvpr)
        reporter.note(best=exact.max_kvpr, lower=lower)
    if optimal and not deadline.expired():
        reporter.phase("local search")
        # The peak is proven optimal, so the local search has nothing left to do there: freeze the GPUs at it
        # and balance the rest below it, which leaves every other model more KV cache than it needs.
        peak_value = max_kvpr(inst, assign)
        kv = gpu_kvprs(inst, assign)
        at_peak = [int(g) for g in np.nonzero(kv >= peak_value * (1 - IMPROVEMENT_RATIO))[0]]
        balanced = improve(inst, assign, deadline=deadline, frozen=at_peak)
        assign, steps = balanced.assign, steps + balanced.steps
    stats = SearchStats(bisection_iterations=res.iterations, passes=res.passes, checkpoints=res.checkpoints,
                        retunes=res.retunes, local_search_moves=steps, proven_optimal=optimal)
    return assign, lower, stats


def _optimise_placed(inst: Instance, items: list[int], greedy_assign: IntArray, options: PackOptions,
                     deadline: Deadline, rng: np.random.Generator, reporter: Reporter, *,
                     with_exact: bool, settled_ratio: float) -> tuple[IntArray, float, SearchStats]:
    """Memory runs out: keep what the greedy placed (`greedy_assign`, the most it could) and optimise those
    alone; the rest stay unplaced. The lower bound is that of the placed ones (0 when none is)."""
    kept = [i for i in items if greedy_assign[i] >= 0]
    if not kept:
        return greedy_assign, 0.0, SearchStats()
    return optimise(inst, kept, options, deadline, rng, reporter, with_exact=with_exact, settled_ratio=settled_ratio)


def _packs_at_all(inst: Instance, items: list[int], lower: float) -> bool:
    """Whether a pass at a huge T (where only memory matters) places every item."""
    huge = max(lower, 1e-9) * 1e6
    for policy in ("best_fit", "min_kvpr"):
        res = try_pack(inst, items, huge, order="weight", policy=policy, retune=False)
        if res.complete and math.isfinite(max_kvpr(inst, res.assign)):
            return True
    return False
