"""`bisect_target`: bisection on the pressure target T with `try_pack` candidates at each step.

The search keeps lo (no candidate packed at lo, or a proven lower bound) and hi (the max KVPR of the best
placement found). At T = sqrt(lo * hi) it runs the candidates (order x policy), the one that last succeeded
first. A pass that completes without retuning proves T reachable: hi drops to that placement's real max KVPR
(<= T). A pass that completes only after retuning to T' > T yields a valid placement judged by its own max KVPR
(<= T'), so hi may still drop; whether T itself is reachable is then asked of the same pass without retune.
When no candidate reaches T, lo rises to T. It stops when hi / lo - 1 is
below the tolerance, after max_iterations, or when the deadline has expired after at least one iteration.
Called by: `optimise`, bench.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence

from kvsched.packer.deadline import NEVER, Deadline
from kvsched.packer.evaluate import max_kvpr
from kvsched.packer.instance import Instance, IntArray
from kvsched.packer.pack import ORDERS, Order, Policy, try_pack


@dataclass(frozen=True, eq=False)
class BisectionResult:
    """Best assignment found (None when no candidate ever completed), its max KVPR, and search counters."""

    assign: IntArray | None
    max_kvpr: float
    lower: float
    iterations: int
    passes: int
    checkpoints: int
    retunes: int


PROBE: tuple[Order, Policy] = ("weight", "best_fit")
# Above this many GPUs only the `fill` candidates run: a failing bisection step costs a pass per candidate,
# and there fill completes wherever another candidate does (see `candidates`).
FILL_ONLY_ABOVE_GPUS = 512
# The bisection never asks for a T below this: a lower bound of 0 (no load at all) would otherwise make
# sqrt(lo * hi) stick at 0.
_MIN_TARGET = 1e-12


def candidates(n_gpus: int) -> list[tuple[Order, Policy]]:
    """Orderings x policies worth running, best first.

    Measured over T grids on scale and ADRS instances, `fill` completes wherever any candidate does (35 of 38
    grid points for each order); best fit by weight and the hybrid by n/m win the rest. Above 512 GPUs a failing bisection step costs a
    pass per candidate, so only the fill orders run.
    """
    if n_gpus > FILL_ONLY_ABOVE_GPUS:
        return [(o, "fill") for o in ORDERS]
    return [(o, "fill") for o in ORDERS] + [("weight", "best_fit"), ("ratio", "hybrid")]


def _can_afford_reruns(lo: float, hi: float, tolerance_ratio: float, n_candidates: int, passes: int,
                       deadline: Deadline) -> bool:
    """Whether the steps bisection still expects, each with every candidate run twice, fit the budget left."""
    if not math.isfinite(deadline.budget_s):
        return True
    if not math.isfinite(hi) or hi <= lo:
        return False
    spent_s = deadline.elapsed_s()
    steps = max(1.0, math.log2(max(math.log(hi / lo) / math.log1p(tolerance_ratio), 1.0)))
    return steps * n_candidates * 2 * (spent_s / max(passes, 1)) <= deadline.budget_s - spent_s


def bisect_target(
    inst: Instance,
    items: Sequence[int],
    lower: float,
    upper: float,
    *,
    upper_assign: IntArray | None = None,
    checkpoints: Sequence[float] = (0.4, 0.75),
    retune_threshold_ratio: float = 0.02,
    retune: bool = True,
    tolerance_ratio: float = 1e-4,
    max_iterations: int = 40,
    deadline: Deadline = NEVER,
    rerun_retuned: bool = True,
    on_step: Callable[[float], None] = lambda best: None,
) -> BisectionResult:
    """Smallest T at which a candidate packs `items`, between `lower` (a valid bound) and `upper`.

    `upper` may be inf (no known placement): the search then first doubles T from `lower` until a pass
    completes. No new step starts once the deadline has expired, and a later step stops between passes when
    it does (the probe at the bound always runs whole: it is the fast path's plan). Re-running a
    retuned pass without retune doubles a step's cost, so it is done only while the steps still expected,
    at the passes' measured speed, fit the budget (and never with rerun_retuned=False). on_step(best max KVPR)
    is called after each step (for progress reports).
    O(iterations * candidates * pass cost).
    """
    best_assign = upper_assign
    best = upper if upper_assign is not None else math.inf
    lo = max(lower, _MIN_TARGET)
    hi = best
    cands = candidates(inst.n_gpus)
    iterations = passes = evaluated = retunes = 0
    while iterations < max_iterations:
        # hi <= lo also covers a plan of zero load everywhere (hi = 0), where the ratio is undefined.
        if math.isfinite(hi) and (hi <= lo or hi / lo - 1 <= tolerance_ratio):
            break
        if iterations > 0 and deadline.expired():
            break
        # The first probe is at the lower bound itself: a retuning pass there fails part-way and finishes at
        # the T it was forced to, which brackets the optimum far tighter than the greedy's upper bound.
        target = lo if iterations == 0 else math.sqrt(lo * hi) if math.isfinite(hi) else lo * 2
        iterations += 1
        reached = False
        # Best fit by weight is cheap and retunes to the tightest first bracket (fast path at 1024 GPUs: 9.2%
        # above the fluid bound against 20.9% for fill alone), so the probe at the bound always includes it.
        step_cands = cands + [PROBE] if iterations == 1 and PROBE not in cands else cands
        cut = False
        for c, (order, policy) in enumerate(step_cands):
            if iterations > 1 and c > 0 and deadline.expired():
                cut = True  # out of time mid-step: what ran proves nothing about T, keep the best found
                break
            res = try_pack(inst, items, target, order=order, policy=policy, checkpoints=checkpoints,
                           retune_threshold_ratio=retune_threshold_ratio, retune=retune)
            passes += 1
            evaluated += res.checkpoints
            retunes += res.retunes
            if not res.complete:
                continue
            value = max_kvpr(inst, res.assign)
            if not math.isfinite(value):
                continue  # at huge T the load term vanishes in floating point: no GPU may end with zero free
            if value < best:
                best, best_assign = value, res.assign
            if res.retunes and iterations == 1:
                continue  # the probe at the lower bound only brackets: T = bound is rarely reachable
            if res.retunes and not rerun_retuned:
                continue
            if res.retunes and not _can_afford_reruns(lo, hi, tolerance_ratio, len(cands), passes, deadline):
                continue
            if res.retunes:
                # The retune judged this partial placement unable to finish at T, and it was right for the
                # placement as it stood; repair, which also moves placed items, may still finish at T. So the
                # retuned pass serves as an upper bound and the same pass at T without retune decides "reached"
                # (measured over 8 seeds at 128 GPUs: median 1.16% -> 0.66% above the fluid bound).
                res = try_pack(inst, items, target, order=order, policy=policy, retune=False)
                passes += 1
                value = max_kvpr(inst, res.assign) if res.complete else math.inf
                if not math.isfinite(value):
                    continue
                if value < best:
                    best, best_assign = value, res.assign
            if res.complete:
                reached = True
                if c < len(cands):
                    cands.insert(0, cands.pop(c))  # the winner goes first next time
                break
        if cut:
            hi = min(hi, best)
            break
        if reached:
            hi = min(best, target)
        else:
            lo = target
            hi = min(hi, best)
        if lo > hi:
            lo = hi
        on_step(best)
    return BisectionResult(best_assign, best, lo, iterations, passes, evaluated, retunes)
