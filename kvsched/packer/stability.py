"""Stability: keep the current assignment when it is good enough, otherwise move as few replicas as possible.

`stabilize` compares the current assignment's max KVPR with the new plan's. Within the threshold, the current
one stays (no churn). Otherwise the new plan is first relabelled: GPUs of equal memory are interchangeable, so
each of the new plan's GPU contents is matched to the physical GPU already holding most of it. Then moved
replicas are put back where they run now, one at a time, while the max KVPR stays at the new plan's.
Called by: `solve` when a current assignment is given.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from kvsched.packer.evaluate import gpu_totals, max_kvpr
from kvsched.packer.greedy import fits
from kvsched.packer.instance import Instance, IntArray
from kvsched.packer.kvpr import kvpr


@dataclass(frozen=True, eq=False)
class Stabilized:
    """The assignment to use, and whether it is the current one unchanged."""

    assign: IntArray
    kept_current: bool


def is_valid(inst: Instance, assign: IntArray, items: Sequence[int]) -> bool:
    """Every item of `items` placed, no GPU over memory (or at infinite KVPR), no two replicas of a model together."""
    idx = np.asarray(items, dtype=np.int64)
    if idx.size and (assign[idx] < 0).any():
        return False
    seen: set[tuple[int, int]] = set()
    for i in np.nonzero(assign >= 0)[0].tolist():
        key = (int(inst.item_group[i]), int(assign[i]))
        if key in seen:
            return False
        seen.add(key)
    return max_kvpr(inst, assign) < float("inf")


def relabel(inst: Instance, current: IntArray, new: IntArray) -> IntArray:
    """`new` with its GPUs permuted among GPUs of equal memory to keep as many replicas in place as possible.

    Greedy matching on overlap counts, largest first, ties by GPU index. O(n + P log P), P overlapping pairs.
    """
    overlap: dict[tuple[int, int], int] = defaultdict(int)
    for i in range(inst.n_items):
        a, b = int(new[i]), int(current[i])
        if a >= 0 and b >= 0 and inst.gpu_memory[a] == inst.gpu_memory[b]:
            overlap[(a, b)] += 1
    mapping: dict[int, int] = {}
    taken: set[int] = set()
    for (a, b), _ in sorted(overlap.items(), key=lambda kv: (-kv[1], kv[0])):
        if a not in mapping and b not in taken:
            mapping[a] = b
            taken.add(b)
    # GPUs of the new plan left unmatched take the unmatched physical GPUs of the same memory, in index order.
    free_by_memory: dict[float, list[int]] = defaultdict(list)
    for g in range(inst.n_gpus):
        if g not in taken:
            free_by_memory[float(inst.gpu_memory[g])].append(g)
    for a in range(inst.n_gpus):
        if a not in mapping:
            mapping[a] = free_by_memory[float(inst.gpu_memory[a])].pop(0)
    out = new.copy()
    placed = new >= 0
    out[placed] = np.asarray([mapping[int(g)] for g in new[placed]], dtype=np.int64)
    return out


def revert_moves(inst: Instance, current: IntArray, new: IntArray, limit: float) -> IntArray:
    """Put moved replicas back on their current GPU while every KVPR stays <= limit. O(rounds * moved)."""
    out = new.copy()
    load, weights = gpu_totals(inst, out)
    groups_on: list[set[int]] = [set() for _ in range(inst.n_gpus)]
    for i in np.nonzero(out >= 0)[0].tolist():
        groups_on[out[i]].add(int(inst.item_group[i]))
    changed = True
    while changed:
        changed = False
        for i in range(inst.n_items):
            src, dst = int(out[i]), int(current[i])
            if src < 0 or dst < 0 or src == dst:
                continue
            n, m, grp = float(inst.item_load[i]), float(inst.item_size[i]), int(inst.item_group[i])
            if grp in groups_on[dst] or not fits(n, m, weights[dst], float(inst.gpu_memory[dst]), load[dst]):
                continue
            if kvpr(load[dst] + n, weights[dst] + m, float(inst.gpu_memory[dst])) > limit:
                continue
            out[i] = dst
            load[src] -= n
            weights[src] -= m
            load[dst] += n
            weights[dst] += m
            groups_on[src].discard(grp)
            groups_on[dst].add(grp)
            changed = True
    return out


def stabilize(inst: Instance, items: Sequence[int], current: IntArray, new: IntArray,
              threshold_ratio: float) -> Stabilized:
    """Keep `current` when valid and max KVPR <= new's * (1 + threshold); else `new` with fewest moves."""
    new_value = max_kvpr(inst, new)
    if is_valid(inst, current, items) and max_kvpr(inst, current) <= new_value * (1 + threshold_ratio):
        return Stabilized(current.copy(), True)
    relabelled = relabel(inst, current, new)
    return Stabilized(revert_moves(inst, current, relabelled, new_value * (1 + 1e-12)), False)
