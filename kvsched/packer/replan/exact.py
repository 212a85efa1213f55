"""Exact re-planning on tiny instances: the fewest moves within a target, or the lowest peak within a number of
moves, by branch and bound.
Called by: `kvsched.packer.replan.strategy` (re-plans of at most a dozen replicas).
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from kvsched.packer.instance import Instance, IntArray
from kvsched.packer.kvpr import kvpr, within
from kvsched.packer.replan.running import moves_of


def exact_replan(inst: Instance, items: Sequence[int], running: dict[int, list[int]], *, target: float | None,
                 max_moves: int | None, node_limit: int, incumbent: IntArray | None) -> IntArray | None:
    """Exact branch and bound for tiny instances: every item of `items` placed, replicas of a model apart.

    With `target`: the fewest moves with every KVPR within target, ties to the lower max KVPR. With `max_moves`:
    the lowest max KVPR with at most that many moves, ties to fewer moves. Moves are counted per model: a model
    of r replicas running on the GPUs R moves max(0, b - max(0, r - |R|)) replicas when b of its replicas land
    off R (the first r - |R| of those are new replicas). The incumbent (if valid) seeds the bound. Returns the
    best found (None if none): optimal when the node limit was not reached. O(G^n) worst case.
    """
    size_of: dict[int, int] = {}
    for i in items:
        size_of[int(inst.item_group[i])] = size_of.get(int(inst.item_group[i]), 0) + 1
    homes = {grp: set(gpus) for grp, gpus in running.items()}
    free_off = {grp: max(0, count - len(homes.get(grp, ()))) for grp, count in size_of.items()}
    off = {grp: 0 for grp in size_of}
    order = sorted(items, key=lambda i: (-(inst.item_load[i] + inst.item_size[i]), i))
    n, g_count = len(order), inst.n_gpus
    load = [0.0] * g_count
    weights = [0.0] * g_count
    memory = [float(x) for x in inst.gpu_memory]
    groups: list[set[int]] = [set() for _ in range(g_count)]
    assign = np.full(inst.n_items, -1, dtype=np.int64)
    limit_target = target if target is not None else math.inf
    limit_moves = max_moves if max_moves is not None else n

    def key(moves: int, peak: float) -> tuple[float, float]:
        return (moves, peak) if target is not None else (peak, moves)

    best_key: tuple[float, float] = (math.inf, math.inf)
    best: IntArray | None = None
    if incumbent is not None and all(incumbent[i] >= 0 for i in items):
        peak = max((kvpr(*_totals(inst, incumbent, g)) for g in range(g_count)), default=0.0)
        moves = moves_of(inst, running, incumbent)
        if within(peak, limit_target) and moves <= limit_moves:
            best_key, best = key(moves, peak), incumbent.copy()
    nodes = 0

    def dfs(k: int, moves: int, peak: float) -> None:
        nonlocal best_key, best, nodes
        nodes += 1
        if nodes > node_limit or key(moves, peak) >= best_key:
            return
        if k == n:
            best_key, best = key(moves, peak), assign.copy()
            return
        i = order[k]
        n_i, m_i, grp = float(inst.item_load[i]), float(inst.item_size[i]), int(inst.item_group[i])
        home = homes.get(grp, set())
        off_cost = 1 if off[grp] >= free_off[grp] else 0
        options: list[tuple[tuple[float, float], int, float, int]] = []
        for g in range(g_count):
            if grp in groups[g]:
                continue
            value = kvpr(load[g] + n_i, weights[g] + m_i, memory[g])
            cost = 0 if g in home else off_cost
            if not math.isfinite(value) or not within(value, limit_target) or moves + cost > limit_moves:
                continue
            options.append((key(cost, value), cost, value, g))
        options.sort()
        for _, cost, value, g in options:
            load[g] += n_i
            weights[g] += m_i
            groups[g].add(grp)
            assign[i] = g
            shift = 0 if g in home else 1
            off[grp] += shift
            dfs(k + 1, moves + cost, max(peak, value))
            off[grp] -= shift
            assign[i] = -1
            groups[g].discard(grp)
            load[g] -= n_i
            weights[g] -= m_i

    dfs(0, 0, 0.0)
    return best


def _totals(inst: Instance, assign: IntArray, g: int) -> tuple[float, float, float]:
    on = assign == g
    return float(inst.item_load[on].sum()), float(inst.item_size[on].sum()), float(inst.gpu_memory[g])
