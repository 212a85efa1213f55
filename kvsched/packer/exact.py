"""`prove_or_improve`: exact branch and bound for small instances, to reach and prove the optimum.

At a target T the question "is there a placement with max KVPR <= T" is the transformed bin packing (weights
n + T*m, capacities T*M). `pack_exactly` answers it by depth-first search: items by weight descending, each
tried on the bins in best-fit order; bins that are interchangeable (same memory, same residual, and the same
models' groups when a model has replicas) are tried once; a branch dies when the remaining weight exceeds the
room that can still take the lightest item; identical items take GPUs in index order. `prove_or_improve`
asks it at T just below the best known max KVPR, again and again, each success lowering the best, until a
search is exhausted (the best is optimal) or the node budget is spent (the best stands, unproven).
Called by: `optimise` for instances with at most `exact_max_items` replicas, and `repack_peak` (lns)
on a few GPUs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from kvsched.packer.deadline import NEVER, Deadline
from kvsched.packer.evaluate import max_kvpr
from kvsched.packer.instance import Instance, IntArray
from kvsched.packer.kvpr import (
    CAPACITY_SLACK_RATIO,
    IMPROVEMENT_RATIO,
    below,
    capacity,
    capacity_slack,
    reaches,
    transformed_weight,
)

_NO_GROUPS: frozenset[int] = frozenset()
# The clock is read every 1024 nodes (this mask): 1024 nodes are tens of milliseconds in Python, so the search
# stops close to the deadline without paying for a clock read at every node.
_CLOCK_EVERY_MASK = 1023
# Residuals are compared as equal (interchangeable GPUs) when they agree to this many decimals.
_RESIDUAL_DECIMALS = 9


@dataclass(frozen=True, eq=False)
class ExactResult:
    """Best assignment known after the exact search, its max KVPR, whether it is proven optimal, nodes used."""

    assign: IntArray
    max_kvpr: float
    optimal: bool
    nodes: int


class _Budget(Exception):
    """Raised inside the search when the node budget or the time is spent."""


def pack_exactly(inst: Instance, items: Sequence[int], target: float, node_limit: int,
                 deadline: Deadline = NEVER) -> tuple[IntArray | None, int]:
    """A placement of `items` with every KVPR <= target, or None if none exists. Raises _Budget when spent.

    Returns (assignment or None, nodes visited). Worst case exponential; bounded by node_limit.
    """
    load = inst.item_load.tolist()
    size = inst.item_size.tolist()
    group = inst.item_group.tolist()
    memory = inst.gpu_memory.tolist()
    weight = {i: transformed_weight(load[i], size[i], target) for i in items}
    order = sorted(items, key=lambda i: (-weight[i], i))
    residual = [capacity(m, target) for m in memory]
    slack = [capacity_slack(r) for r in residual]
    groups_on: list[set[int]] = [set() for _ in memory]
    where = [-1] * inst.n_items  # a plain list: the search reads and writes it at every node
    suffix = [0.0] * (len(order) + 1)
    for pos in range(len(order) - 1, -1, -1):
        suffix[pos] = suffix[pos + 1] + weight[order[pos]]
    nodes = 0
    gpus = range(len(memory))
    lightest = (weight[order[-1]] - CAPACITY_SLACK_RATIO * target * max(memory)) if order else 0.0
    tolerance = IMPROVEMENT_RATIO * target
    # Without replicas, GPUs of equal memory and residual are interchangeable whatever models they hold.
    replicas = len(set(group[i] for i in items)) < len(items)
    twin = [pos > 0 and not replicas and load[order[pos]] == load[order[pos - 1]]
            and size[order[pos]] == size[order[pos - 1]] for pos in range(len(order))]

    def dfs(pos: int) -> bool:
        nonlocal nodes
        if pos == len(order):
            return True
        nodes += 1
        if nodes > node_limit or (nodes & _CLOCK_EVERY_MASK == 0 and deadline.expired()):
            raise _Budget
        i = order[pos]
        w = weight[i]
        gi = group[i]
        # room smaller than the lightest item (the last in order) can never be used
        if suffix[pos] > sum([r for r in residual if r >= lightest]) + tolerance:
            return False
        # identical items (same load and size, no replicas) are interchangeable: keep their GPUs in index order
        first = where[order[pos - 1]] if twin[pos] else 0
        fitting = [g for g in gpus[first:] if w <= residual[g] + slack[g] and gi not in groups_on[g]]
        if len(fitting) > 1:
            fitting.sort(key=lambda g: (residual[g], g))
        tried: set[tuple[float, float, frozenset[int]]] = set()
        for g in fitting:
            if len(fitting) > 1:
                key = (memory[g], round(residual[g], _RESIDUAL_DECIMALS),
                       frozenset(groups_on[g]) if replicas else _NO_GROUPS)
                if key in tried:
                    continue
                tried.add(key)
            residual[g] -= w
            groups_on[g].add(gi)
            where[i] = g
            if dfs(pos + 1):
                return True
            where[i] = -1
            groups_on[g].discard(gi)
            residual[g] += w
        return False

    if not dfs(0):
        return None, nodes
    return np.asarray(where, dtype=np.int64), nodes


def prove_or_improve(inst: Instance, items: Sequence[int], assign: IntArray, lower: float, node_limit: int,
                     deadline: Deadline = NEVER, good_enough: float = 0.0) -> ExactResult:
    """Lower the max KVPR of `assign` exactly until it is proven optimal or the budget is spent.

    Stops at once when the best already meets `lower` (a valid lower bound), which proves it optimal, and
    (unproven) as soon as the best is below `good_enough`, for callers that only need some improvement.
    """
    best = assign
    value = max_kvpr(inst, assign)
    used = 0
    while True:
        if reaches(value, lower):
            return ExactResult(best, value, True, used)
        if value < good_enough:
            return ExactResult(best, value, False, used)
        try:
            found, nodes = pack_exactly(inst, items, below(value), node_limit - used, deadline)
        except _Budget:
            return ExactResult(best, value, False, node_limit)
        used += nodes
        if found is None:
            return ExactResult(best, value, True, used)
        best, value = found, max_kvpr(inst, found)
