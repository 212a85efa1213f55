"""`repack_peak`: large-neighbourhood search. Re-solve the peak GPU together with a few others exactly.

Moves and swaps (`improve`) stop when no single exchange lowers the peak. Here the peak GPU p and k partner
GPUs (those of lowest KVPR, then random sets among the lowest quarter, from the generator passed in) are cut out
with their replicas, and the exact branch and bound (`exact.prove_or_improve`) finds their best arrangement.
If it puts every one of them below the current peak, the arrangement is applied and the next peak is taken.
The search stops when a peak survives all its partner sets, or when the deadline expires.
`iterated_search` kicks the best plan with random swaps and improves and re-packs it again, keeping what is better;
`polish` chains re-packing, local search, descent and the iterated search (the improving phases of `solve`).
Called by: `optimise` after `improve`, for any instance size (each attempt touches only k + 1 GPUs).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from kvsched.packer.deadline import NEVER, Deadline
from kvsched.packer.evaluate import gpu_totals, max_kvpr
from kvsched.packer.exact import prove_or_improve
from kvsched.packer.improve import descend, improve
from kvsched.packer.instance import Instance, IntArray
from kvsched.packer.kvpr import below, improves, kvpr_array

# Re-packing: the peak GPU with this many partners (4 GPUs at once); the exact search's cost grows
# exponentially with the replicas of the GPUs cut out, so the sub-problems stay small.
REPACK_PARTNERS = 3
# Partner sets tried for one peak before it counts as settled: the lowest-KVPR set, then random ones.
REPACK_ATTEMPTS = 12
# Node budget of one exact sub-problem (about 0.1 s of Python at 20-50 us a node), so that a hopeless set
# costs little next to a solve.
REPACK_NODE_LIMIT = 4000
# A peak counts as settled after this many partner sets in a row whose exact search ran out of nodes undecided.
# Sub-problems of many small replicas are never proven infeasible within the budget, so without this cap every
# settled peak cost REPACK_ATTEMPTS full budgets (50-115 replicas of 2.5-8 GiB on 5-11 GPUs: 548 of 827 exact
# searches ran out, and re-packing took 90% of a 10-27 s solve); at 128 GPUs of the scale suite 1 of 349 did.
REPACK_UNDECIDED_IN_A_ROW = 2
# Random partner sets come from the lowest-KVPR quarter of the GPUs, and from at least this many times the
# partners (on small clusters a quarter is too few to choose from).
_POOL_PARTNERS_FACTOR = 4
# Kicks swap replicas of GPUs in the hottest tenth (at least two GPUs) with random GPUs.
_KICK_HOT_SHARE = 10

# Iterated local search: kicks of 8 random swaps off the hottest GPUs, each followed by local search and
# exact re-packing; it stops after 20 kicks in a row that found nothing better, or after a number of kicks that
# shrinks with the instance (each costs O(n) per local-search step), so the result does not depend on the
# machine's speed. Measured over 8 seeds at 128 GPUs: median 0.58% -> 0.37% above the fluid bound, worst
# 1.01% -> 0.54%, at most 0.84 s a solve; 16 GPUs: median 0.63% -> 0.44%.
KICK_SWAPS = 8
KICK_PATIENCE = 20
KICK_WORK = 6_000  # replicas x kicks
# Bounds on the number of kicks: at least a few even on huge instances, at most 40 on small ones, where
# 20 misses in a row end the search long before anyway.
KICK_ROUNDS_MIN = 4
KICK_ROUNDS_MAX = 40
# Replicas per GPU up to which a kick costs O(replicas) (the scale instances have 3); see `iterated_search`.
KICK_DENSITY_REFERENCE = 3.0


@dataclass(frozen=True, eq=False)
class Repacked:
    """Result of `repack_peak`: the assignment, its max KVPR, and how many sub-problems improved it."""

    assign: IntArray
    max_kvpr: float
    improvements: int
    attempts: int


def sub_instance(inst: Instance, gpus: Sequence[int], items: Sequence[int]) -> Instance:
    """The instance restricted to `gpus` (in that order) and `items`; model groups keep their numbers."""
    picked = inst.subset(items)
    idx = np.asarray(gpus, dtype=np.int64)
    memory = np.array(inst.gpu_memory[idx], dtype=np.float64)
    memory.setflags(write=False)
    reserve = None
    if inst.gpu_reserve is not None:
        reserve = np.array(inst.gpu_reserve[idx], dtype=np.float64)
        reserve.setflags(write=False)
    return Instance(
        models=inst.models,
        gpus=tuple(inst.gpus[g] for g in gpus),
        item_model=picked.item_model,
        item_replica=picked.item_replica,
        item_group=picked.item_group,
        item_load=picked.item_load,
        item_size=picked.item_size,
        gpu_memory=memory,
        item_weight=picked.item_weight,
        item_overhead=picked.item_overhead,
        item_context=picked.item_context,
        gpu_reserve=reserve,
    )


def partner_sets(kv: np.ndarray, peak: int, k: int, attempts: int, rng: np.random.Generator) -> list[list[int]]:
    """The k GPUs of lowest KVPR first, then random k-sets from the lowest-KVPR quarter (at least 4k GPUs).

    Never the peak itself. (Choosing by transformed room at the peak's T instead was tried: over 8 seeds at
    128 GPUs it left a worse worst case, 1.77% against 0.99% above the fluid bound.)
    """
    order = [int(g) for g in np.argsort(kv, kind="stable") if int(g) != peak]
    k = min(k, len(order))
    if k == 0:
        return []
    sets = [order[:k]]
    pool = order[: max(_POOL_PARTNERS_FACTOR * k, len(order) // 4)]
    for _ in range(attempts - 1):
        if len(pool) <= k:
            break
        sets.append(sorted(int(g) for g in rng.choice(pool, size=k, replace=False)))
    return sets


def repack_peak(inst: Instance, assign: IntArray, rng: np.random.Generator, *, partners: int = REPACK_PARTNERS,
                attempts: int = REPACK_ATTEMPTS, node_limit: int = REPACK_NODE_LIMIT,
                deadline: Deadline = NEVER) -> Repacked:
    """Lower the max KVPR by exact re-packing of the peak GPU with `partners` others at a time.

    Never raises the max KVPR; deterministic for a given state of `rng` (which it advances). Each attempt is
    O(G) to pick partners plus an exact search bounded by node_limit nodes.
    """
    assign = assign.copy()
    load, weights = gpu_totals(inst, assign)
    kv = kvpr_array(load, weights, inst.gpu_memory)
    improvements = tried = 0
    while inst.n_gpus > 1 and not deadline.expired():
        p = int(np.argmax(kv))
        peak = float(kv[p])
        if peak <= 0 or not np.isfinite(peak):
            break
        improved = False
        undecided = 0
        for others in partner_sets(kv, p, partners, attempts, rng):
            if undecided >= REPACK_UNDECIDED_IN_A_ROW:
                break
            tried += 1
            gpus = [p, *others]
            local = {g: k for k, g in enumerate(gpus)}
            items = [int(i) for i in np.nonzero(np.isin(assign, gpus))[0]]
            sub = sub_instance(inst, gpus, items)
            start = np.asarray([local[int(assign[i])] for i in items], dtype=np.int64)
            # The first arrangement below the peak is enough: the next peak is taken from there.
            best = prove_or_improve(sub, list(range(len(items))), start, 0.0, node_limit, deadline,
                                    good_enough=below(peak))
            undecided = 0 if best.optimal else undecided + 1
            if improves(best.max_kvpr, peak):
                for j, i in enumerate(items):
                    assign[i] = gpus[int(best.assign[j])]
                sub_load, sub_weights = gpu_totals(sub, best.assign)
                load[gpus] = sub_load
                weights[gpus] = sub_weights
                kv[gpus] = kvpr_array(sub_load, sub_weights, sub.gpu_memory)
                improvements += 1
                improved = True
                break
        if not improved:
            break
    return Repacked(assign, float(kv.max()) if inst.n_gpus else 0.0, improvements, tried)


def kick(inst: Instance, assign: IntArray, rng: np.random.Generator, swaps: int) -> IntArray:
    """A perturbed copy of `assign`: up to `swaps` swaps between a GPU in the top tenth by KVPR and a random
    GPU, each kept only if both GPUs keep their weights within memory and no model twice. O(swaps * n)."""
    out = assign.copy()
    load, weights = gpu_totals(inst, out)
    kv = kvpr_array(load, weights, inst.gpu_memory)
    top = np.argsort(-kv, kind="stable")[: max(2, inst.n_gpus // _KICK_HOT_SHARE)]
    for _ in range(swaps):
        p, q = int(rng.choice(top)), int(rng.integers(inst.n_gpus))
        on_p, on_q = np.nonzero(out == p)[0], np.nonzero(out == q)[0]
        if p == q or on_p.size == 0 or on_q.size == 0:
            continue
        i, k = int(rng.choice(on_p)), int(rng.choice(on_q))
        gi, gk = inst.item_group[i], inst.item_group[k]
        if gi == gk or (inst.item_group[on_q] == gi).any() or (inst.item_group[on_p] == gk).any():
            continue
        dp = float(inst.item_size[k] - inst.item_size[i])
        if weights[p] + dp >= inst.gpu_memory[p] or weights[q] - dp >= inst.gpu_memory[q]:
            continue
        out[i], out[k] = q, p
        weights[p] += dp
        weights[q] -= dp
    return out


def iterated_search(inst: Instance, assign: IntArray, rng: np.random.Generator,
                    deadline: Deadline = NEVER, good_enough: float = -math.inf) -> IntArray:
    """Kick the best plan, improve and re-pack it, keep what is better (see the KICK_ constants above).

    Never raises the max KVPR; deterministic for a given state of `rng`. At most KICK_ROUNDS_MAX kicks, each
    one `kick`, two `improve` runs and one `repack_peak`; stops early when the deadline expires or the best max
    KVPR is at most `good_enough` (for callers that need a plan only that good).
    """
    # A kick's re-packing works on the replicas of a few GPUs: past KICK_DENSITY_REFERENCE replicas per GPU its
    # cost grows with their number, so the kicks and each sub-problem's node budget shrink with it.
    density = max(1.0, inst.n_items / max(inst.n_gpus, 1) / KICK_DENSITY_REFERENCE)
    rounds = min(KICK_ROUNDS_MAX, max(KICK_ROUNDS_MIN, int(KICK_WORK / (max(inst.n_items, 1) * density))))
    best, value = assign, max_kvpr(inst, assign)
    misses = 0
    for _ in range(rounds):
        if misses >= KICK_PATIENCE or deadline.expired() or value <= good_enough:
            break
        cand = improve(inst, kick(inst, best, rng, KICK_SWAPS), deadline=deadline).assign
        repacked = repack_peak(inst, cand, rng, node_limit=int(REPACK_NODE_LIMIT / density), deadline=deadline)
        cand = improve(inst, repacked.assign, deadline=deadline).assign
        cand_value = max_kvpr(inst, cand)
        if improves(cand_value, value):
            best, value, misses = cand, cand_value, 0
        else:
            misses += 1
    return best


def polish(inst: Instance, assign: IntArray, lower: float, rng: np.random.Generator,
           deadline: Deadline = NEVER, good_enough: float = -math.inf) -> tuple[IntArray, int]:
    """The improving phases after the first local search: re-pack the peak, local search, descend towards
    `lower` (a valid lower bound), local search, then `iterated_search`. Returns the assignment and the moves
    made. Never raises the max KVPR; deterministic for a given state of `rng`; stops when the deadline expires,
    and skips or ends the iterated search once the max KVPR is at most `good_enough`.
    """
    repacked = repack_peak(inst, assign, rng, deadline=deadline)
    again = improve(inst, repacked.assign, deadline=deadline)
    lowered = descend(inst, again.assign, lower, deadline=deadline)
    best = improve(inst, lowered.assign, deadline=deadline)
    steps = repacked.improvements + again.steps + lowered.steps + best.steps
    return iterated_search(inst, best.assign, rng, deadline, good_enough), steps
