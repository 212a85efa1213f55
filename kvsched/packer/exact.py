"""`prove_or_improve`: exact branch and bound for small instances, to reach and prove the optimum.

At a target T the question "is there a placement with max KVPR <= T" is the transformed bin packing (weights
n + T*m, capacities T*M). `pack_exactly` answers it by depth-first search: items by weight descending, each
tried on the bins in best-fit order; bins that are interchangeable (same memory, same residual, and the same
models' groups when a model has replicas) are tried once; a branch dies when the remaining weight exceeds the
room that can still take the lightest item; identical items take GPUs in index order. `prove_or_improve`
asks it at T just below the best known max KVPR, again and again, each success lowering the best, until a
search is exhausted (the best is optimal) or the node budget is spent (the best stands, unproven).
Called by: `planner` (`_optimise`) for instances with at most `exact_max_items` replicas, and `lns`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from kvsched.packer.evaluate import max_kvpr
from kvsched.packer.instance import Instance, IntArray

_BELOW = 1 - 1e-9
_NO_GROUPS: frozenset[int] = frozenset()


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
                 out_of_time: Callable[[], bool] = lambda: False) -> tuple[IntArray | None, int]:
    """A placement of `items` with every KVPR <= target, or None if none exists. Raises _Budget when spent.

    Returns (assignment or None, nodes visited). Worst case exponential; bounded by node_limit.
    """
    load = inst.item_load.tolist()
    size = inst.item_size.tolist()
    group = inst.item_group.tolist()
    memory = inst.gpu_memory.tolist()
    weight = {i: load[i] + target * size[i] for i in items}
    order = sorted(items, key=lambda i: (-weight[i], i))
    residual = [target * m for m in memory]
    slack = [1e-12 * target * m + 1e-15 for m in memory]
    groups_on: list[set[int]] = [set() for _ in memory]
    assign = np.full(inst.n_items, -1, dtype=np.int64)
    suffix = [0.0] * (len(order) + 1)
    for pos in range(len(order) - 1, -1, -1):
        suffix[pos] = suffix[pos + 1] + weight[order[pos]]
    nodes = 0
    gpus = range(len(memory))
    lightest = (weight[order[-1]] - 1e-12 * target * max(memory)) if order else 0.0
    # Without replicas, GPUs of equal memory and residual are interchangeable whatever models they hold.
    replicas = len(set(group[i] for i in items)) < len(items)
    twin = [pos > 0 and not replicas and load[order[pos]] == load[order[pos - 1]]
            and size[order[pos]] == size[order[pos - 1]] for pos in range(len(order))]

    def dfs(pos: int) -> bool:
        nonlocal nodes
        if pos == len(order):
            return True
        nodes += 1
        if nodes > node_limit or (nodes & 1023 == 0 and out_of_time()):
            raise _Budget
        i = order[pos]
        w = weight[i]
        # room smaller than the lightest item (the last in order) can never be used
        if suffix[pos] > sum(r for r in residual if r >= lightest) + 1e-9 * target:
            return False
        tried: set[tuple[float, float, frozenset[int]]] = set()
        # identical items (same load and size, no replicas) are interchangeable: keep their GPUs in index order
        first = int(assign[order[pos - 1]]) if twin[pos] else 0
        fitting = [g for g in gpus[first:] if w <= residual[g] + slack[g] and group[i] not in groups_on[g]]
        fitting.sort(key=lambda g: (residual[g], g))
        for g in fitting:
            key = (memory[g], round(residual[g], 9), frozenset(groups_on[g]) if replicas else _NO_GROUPS)
            if key in tried:
                continue
            tried.add(key)
            residual[g] -= w
            groups_on[g].add(group[i])
            assign[i] = g
            if dfs(pos + 1):
                return True
            assign[i] = -1
            groups_on[g].discard(group[i])
            residual[g] += w
        return False

    found = dfs(0)
    return (assign if found else None), nodes


def prove_or_improve(inst: Instance, items: Sequence[int], assign: IntArray, lower: float, node_limit: int,
                     out_of_time: Callable[[], bool] = lambda: False) -> ExactResult:
    """Lower the max KVPR of `assign` exactly until it is proven optimal or the budget is spent.

    Stops at once when the best already meets `lower` (a valid lower bound), which proves it optimal.
    """
    best = assign
    value = max_kvpr(inst, assign)
    used = 0
    while True:
        if value <= lower * (1 + 1e-9):
            return ExactResult(best, value, True, used)
        try:
            found, nodes = pack_exactly(inst, items, value * _BELOW, node_limit - used, out_of_time)
        except _Budget:
            return ExactResult(best, value, False, node_limit)
        used += nodes
        if found is None:
            return ExactResult(best, value, True, used)
        best, value = found, max_kvpr(inst, found)
