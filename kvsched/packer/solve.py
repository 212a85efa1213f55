"""`solve`: the packer's one entry point. Models and GPUs in, a `Plan` out.

Steps, each in its own module: validate and expand replicas (instance), set aside replicas no GPU can hold
(here, with a reason each), bound the optimum from below (bounds), start from the Prism greedy (greedy),
bisect on the target T with retuning passes (search, pack), improve off the peak GPU (improve), prove or
improve exactly on small instances (exact), weigh against the current assignment (stability), report (result).
Pure: the only outside input is the injected clock, read for solve_seconds and the time budget.
Called by: the CLI, the controller, the benchmark.
"""

from __future__ import annotations

import math
import time
from typing import Sequence

import numpy as np

from kvsched.packer.bounds import lower_bound
from kvsched.packer.deadline import Clock, Deadline
from kvsched.packer.domain import Gpu, Migration, Model, Plan, SearchStats, Slot
from kvsched.packer.errors import InvalidInput
from kvsched.packer.evaluate import gpu_kvprs, max_kvpr
from kvsched.packer.exact import prove_or_improve
from kvsched.packer.greedy import greedy
from kvsched.packer.improve import improve
from kvsched.packer.instance import Instance, IntArray, build_instance
from kvsched.packer.kvpr import IMPROVEMENT_RATIO, reaches
from kvsched.packer.lns import polish
from kvsched.packer.options import PackOptions
from kvsched.packer.pack import try_pack
from kvsched.packer.result import build_plan
from kvsched.packer.search import bisect_target
from kvsched.packer.stability import stabilize

# Share of the time budget the bisection may use before the local search takes over. At thousands of GPUs
# the local search gains more per second than further passes from scratch (measured: 2.9% -> 0.27% above
# the fluid bound in 22 s at 8192 GPUs, where 8 bisection steps took 34 s).
_BISECTION_SHARE = 0.3
# Small instances: the exact search first gets 1/8 of its node budget; unproven, the improving phases of large
# instances run and the search resumes with the rest. Mixed 40/80/141 GiB clusters of 5-12 GPUs, 10-30 models
# (bench/weak_spots.py): the exact search alone left them up to 4% above the best known plan.
_EXACT_FIRST_SHARE_INVERSE = 8


def solve(
    models: Sequence[Model],
    gpus: Sequence[Gpu],
    *,
    current: Sequence[Slot] = (),
    options: PackOptions = PackOptions(),
    clock: Clock = time.perf_counter,
    rng: np.random.Generator | None = None,
) -> Plan:
    """Place every replica of `models` on `gpus` minimising the max KVPR; report what cannot be placed.

    `current` (optional) says where replicas run now; slots naming unknown models, replicas or GPUs are
    ignored (they describe what no longer exists). Raises InvalidInput for bad models, GPUs, options or a
    replica listed twice in `current`. Never raises for an infeasible cluster: those replicas are unplaced.
    `rng` drives the randomised search phases; None means a generator seeded with 0 (the same input gives the
    same plan).
    """
    deadline = Deadline.start(clock, options.time_budget_s)
    rng = np.random.default_rng(0) if rng is None else rng
    inst = build_instance(models, gpus)
    current_assign = _current_assignment(inst, current)
    reasons = _unplaceable(inst)
    items = [i for i in range(inst.n_items) if i not in reasons]
    assign, lower, stats = _optimise(inst, items, options, deadline, rng)
    placed = [i for i in items if assign[i] >= 0]
    for i in items:
        if assign[i] < 0:
            reasons[i] = _no_room_reason(inst, i)
    kept = False
    if current:
        stable = stabilize(inst, placed, current_assign, assign, options.stability_threshold_ratio)
        assign, kept = stable.assign, stable.kept_current
    migrations = [
        Migration(inst.item_model[i], inst.item_replica[i],
                  inst.gpu_id(int(current_assign[i])) if current_assign[i] >= 0 else None,
                  inst.gpu_id(int(assign[i])))
        for i in range(inst.n_items)
        if assign[i] >= 0 and assign[i] != current_assign[i] and current
    ]
    return build_plan(inst, assign, lower_bound=lower, solve_seconds=deadline.elapsed_s(), reasons=reasons,
                      migrations=migrations, kept_current=kept, stats=stats)


def _optimise(inst: Instance, items: list[int], options: PackOptions, deadline: Deadline,
              rng: np.random.Generator) -> tuple[IntArray, float, SearchStats]:
    """Best assignment of `items` (some may stay -1 when memory runs out), a valid lower bound, counters.

    Time: bisection stops starting new steps after _BISECTION_SHARE of the budget (its first step always
    runs, so there is always a plan); the improving phases stop at the budget.
    """
    sub_load = inst.item_load[items]
    sub_size = inst.item_size[items]
    base = greedy(inst.subset(items)) if items else np.zeros(0, dtype=np.int64)
    start_assign = np.full(inst.n_items, -1, dtype=np.int64)
    if items:
        start_assign[np.asarray(items)] = base
    complete = bool((base >= 0).all())
    upper = max_kvpr(inst, start_assign) if complete else float("inf")
    lower = lower_bound(sub_load, sub_size, inst.gpu_memory, upper=upper) if items else 0.0
    if not items or inst.n_gpus == 0:
        return start_assign, lower, SearchStats()
    if not complete and (not math.isfinite(lower) or not _packs_at_all(inst, items, lower)):
        kept = [i for i in items if start_assign[i] >= 0]
        return _optimise(inst, kept, options, deadline, rng) if kept else (start_assign, 0.0, SearchStats())
    exact_next = len(items) <= options.exact_max_items
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
    )
    if res.assign is None:
        # Memory runs out: keep what the greedy placed (the most it could) and optimise those alone.
        kept = [i for i in items if start_assign[i] >= 0]
        assign, lower, stats = _optimise(inst, kept, options, deadline, rng) if kept else (start_assign, 0.0,
                                                                                         SearchStats())
        return assign, lower, stats
    assign = res.assign
    steps = 0
    if options.local_search:
        better = improve(inst, assign, deadline=deadline)
        assign, steps = better.assign, better.steps
        if not exact_next:  # small instances go to the exact stage first
            assign, more = polish(inst, assign, lower, rng, deadline)
            steps += more
    optimal = reaches(max_kvpr(inst, assign), lower)
    if not optimal and exact_next and not deadline.expired():
        # A share of the nodes proves most small instances optimal (ADRS-50: all within 23k of 200k); the
        # others get the improving phases of large instances, then the exact search again with the rest.
        first = options.exact_node_limit // _EXACT_FIRST_SHARE_INVERSE
        exact = prove_or_improve(inst, items, assign, lower, first, deadline)
        assign, optimal = exact.assign, exact.optimal
        if not optimal and options.local_search and not deadline.expired():
            assign, more = polish(inst, assign, lower, rng, deadline)
            steps += more
            exact = prove_or_improve(inst, items, assign, lower, options.exact_node_limit - exact.nodes, deadline)
            assign, optimal = exact.assign, exact.optimal
        if optimal:
            lower = max(lower, exact.max_kvpr)
    if optimal and not deadline.expired():
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


def _packs_at_all(inst: Instance, items: list[int], lower: float) -> bool:
    """Whether a pass at a huge T (where only memory matters) places every item."""
    huge = max(lower, 1e-9) * 1e6
    for policy in ("best_fit", "min_kvpr"):
        res = try_pack(inst, items, huge, order="weight", policy=policy, retune=False)
        if res.complete and math.isfinite(max_kvpr(inst, res.assign)):
            return True
    return False


def _unplaceable(inst: Instance) -> dict[int, str]:
    """Replicas no GPU can ever hold: too large for every GPU, or more replicas than GPUs that fit one.

    A GPU can hold a replica alone when its memory exceeds the replica's weights (equals them, for a replica
    with no load). O(n log G).
    """
    if inst.n_gpus == 0:
        return {i: "the cluster has no GPUs" for i in range(inst.n_items)}
    memory = np.sort(inst.gpu_memory)
    largest = float(memory[-1])
    strict = np.searchsorted(memory, inst.item_size, side="right")  # GPUs with M <= m cannot take a loaded one
    loose = np.searchsorted(memory, inst.item_size, side="left")  # GPUs with M < m cannot take any
    capable = inst.n_gpus - np.where(inst.item_load > 0, strict, loose)
    reasons: dict[int, str] = {}
    for i in np.nonzero((capable == 0) | (np.asarray(inst.item_replica) >= capable))[0].tolist():
        m = float(inst.item_size[i])
        if capable[i] == 0:
            room = "leaves no room for KV cache on" if m <= largest else "exceeds"
            reasons[i] = f"its weights ({m:g}Gi) {room} the largest GPU ({largest:g}Gi)"
        else:
            reasons[i] = f"only {capable[i]} GPUs can hold it and replicas of one model never share a GPU"
    return reasons


def _no_room_reason(inst: Instance, i: int) -> str:
    return (f"not enough free GPU memory: its weights ({float(inst.item_size[i]):g}Gi) fit no GPU next to the "
            "replicas placed before it")


def _current_assignment(inst: Instance, current: Sequence[Slot]) -> IntArray:
    """Item -> GPU index from slots; slots of unknown models, replicas or GPUs are skipped."""
    out = np.full(inst.n_items, -1, dtype=np.int64)
    item_of = {(inst.item_model[i], inst.item_replica[i]): i for i in range(inst.n_items)}
    gpu_of = {inst.gpu_id(g): g for g in range(inst.n_gpus)}
    seen: set[tuple[str, int]] = set()
    for k, slot in enumerate(current):
        key = (slot.model, slot.replica)
        if key in seen:
            raise InvalidInput(f"current[{k}]", "replica", slot.replica,
                               f"replica {slot.replica} of model {slot.model!r} is listed twice")
        seen.add(key)
        i = item_of.get(key)
        g = gpu_of.get(slot.gpu)
        if i is not None and g is not None:
            out[i] = g
    return out
