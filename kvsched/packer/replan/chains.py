"""Ejection chains: place an item that fits no GPU at a target T by taking one replica off a GPU to make room,
that replica going where it fits or taking one more off another GPU (a chain of at most two ejections).

A replica taken off the GPU it runs on is a move; one that is new or moved already (free) costs nothing, so the
chain that costs the fewest moves wins. `fewest_moves`' shed route calls `place_by_chain` for the items tightest
fit could not place, before handing the rest to `repair` (which sheds by single moves and swaps: measured on
bench.churn's 128-GPU many-small cluster, a replica added to the hottest model, repair made 6 moves where a chain
of two does).
Called by: `kvsched.packer.replan.fewest`.
"""

from __future__ import annotations

import numpy as np

from kvsched.packer.instance import FloatArray, IntArray
from kvsched.packer.kvpr import IMPROVEMENT_RATIO, within
from kvsched.packer.state import GpuState

# Candidates a chain may try per leftover item (pairs of a GPU and the replica it sheds): bounds the cost at
# 1024 GPUs, where an item that fits nowhere has thousands of them.
_MAX_PAIRS = 400
# GPUs of the most residual a chain's last replica is checked against (found exactly when applied): enough for
# models of up to this many replicas less one.
_TOP_GPUS = 8


def place_by_chain(state: GpuState, x: int, run: IntArray, target: float) -> bool:
    """Put unplaced item `x` on a GPU at `target` by an ejection chain of at most two replicas, the chain that
    moves the fewest running replicas (ties: the shorter, then GPU and item order); applied to `state` (a
    `GpuState.totals_only`) and True when found, `state` unchanged and False otherwise.
    O(pairs * (G + n)) vectorised, pairs <= _MAX_PAIRS.
    """
    inst = state.inst
    weight: FloatArray = inst.item_load + target * inst.item_size
    residual: FloatArray = target * inst.gpu_memory - (state.load + target * state.weights)
    tol = IMPROVEMENT_RATIO * target * inst.gpu_memory
    assign = state.assign
    placed = assign >= 0
    on = np.where(placed, assign, 0)
    top = np.argsort(-residual, kind="stable")[:_TOP_GPUS].tolist()
    # For each placed item: does it fit, as things stand, on one of the roomiest GPUs other than its own?
    fits_away = np.zeros(inst.n_items, dtype=bool)
    for h in top:
        fits_away |= ((assign != h) & (weight <= residual[h] + tol[h]) &
                      ~np.isin(inst.item_group, list(state.groups_on[h])))
    fits_away &= placed
    x_group = int(inst.item_group[x])
    pairs: list[tuple[int, float, int, int]] = []
    for g in range(inst.n_gpus):
        if x_group in state.groups_on[g]:
            continue
        need = weight[x] - residual[g] - tol[g]
        for y in state.on_gpu[g]:
            if weight[y] >= need:
                pairs.append((int(run[y] == g), float(weight[y]), g, y))
    pairs.sort()
    best: tuple[int, int, list[tuple[int, int]]] | None = None  # (moves, length, [(item, gpu), ...])
    for cost_y, _, g, y in pairs[:_MAX_PAIRS]:
        if best is not None and best[0] <= cost_y:
            break
        y_group = int(inst.item_group[y])
        ok = (residual + tol >= weight[y])
        ok[g] = False
        holders = list(state.gpus_of.get(y_group, ()))
        ok[holders] = False
        if ok.any():
            h = int(np.argmin(np.where(ok, residual - weight[y], np.inf)))
            best = (cost_y, 1, [(y, h), (x, g)])
            continue
        # Two ejections: y goes to h in place of z, which fits somewhere else.
        cand = placed & fits_away & (on != g) & (weight >= weight[y] - residual[on] - tol[on])
        cand[y] = False
        if holders:
            cand &= ~np.isin(on, holders)
        for z in np.nonzero(cand)[0].tolist():
            h = int(assign[z])
            cost = cost_y + int(run[z] == h)
            if best is not None and (best[0], best[1]) <= (cost, 2):
                continue
            if int(inst.item_group[z]) == y_group:
                continue
            best = (cost, 2, [(z, -1), (y, h), (x, g)])
    if best is None:
        return False
    return _apply(state, best[2], target)


def _apply(state: GpuState, chain: list[tuple[int, int]], target: float) -> bool:
    """Apply the chain, its last replica first taken off (-1: to the GPU where it fits tightest, found now);
    undone and False when a GPU it touches ends over target."""
    done: list[tuple[int, int]] = []  # (item, GPU it came from; -1: unplaced)
    for item, _ in chain:
        if state.assign[item] >= 0:
            done.append((item, int(state.assign[item])))
            state.take(item)
        else:
            done.append((item, -1))
    touched: set[int] = set()
    ok = True
    for item, g in chain:
        if g < 0:
            values = state.kvprs_with(item)
            values[[src for _, src in done if src >= 0]] = np.inf
            fit = np.isfinite(values) & (values <= target * (1 + IMPROVEMENT_RATIO))
            if not fit.any():
                ok = False
                break
            g = int(np.argmax(np.where(fit, values, -np.inf)))
        if int(state.inst.item_group[item]) in state.groups_on[g]:
            ok = False
            break
        state.put(item, g)
        touched.add(g)
    if ok and all(within(state.kvpr(g), target) for g in touched):
        return True
    for item, _ in chain:
        if state.assign[item] >= 0:
            state.take(item)
    for item, src in done:
        if src >= 0:
            state.put(item, src)
    return False
