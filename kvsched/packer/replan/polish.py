"""Moves that cost nothing: `polish` lowers the peak by moving only new replicas and replicas moving anyway;
`best_move` is the best single move off a GPU, free or paid.
Called by: `kvsched.packer.replan.strategy`, `kvsched.packer.replan.budget` (`best_move`).
"""

from __future__ import annotations

import math

import numpy as np

from kvsched.packer.instance import Instance, IntArray
from kvsched.packer.kvpr import improves
from kvsched.packer.replan.running import align
from kvsched.packer.state import GpuState


def polish(inst: Instance, run: IntArray, assign: IntArray, *, max_steps: int | None = None) -> IntArray:
    """Lower the peak by moves that cost no migration (new replicas, replicas moving anyway). Never raises the
    max KVPR nor the number of moves. O(steps * items on the peak * G)."""
    state = GpuState.totals_only(inst, assign)
    steps = max_steps if max_steps is not None else 4 * inst.n_items + 10
    while steps > 0 and inst.n_gpus > 1:
        steps -= 1
        kv = state.kvprs()
        p = int(np.argmax(kv))
        value, i, b = best_move(state, run, p, paid=False)
        if i < 0 or not improves(value, float(kv[p])):
            break
        state.take(i)
        state.put(i, b)
    return align(inst, run, state.assign)


def best_move(state: GpuState, run: IntArray, p: int, paid: bool) -> tuple[float, int, int]:
    """The move off GPU p whose larger new KVPR (of p and the target) is the smallest: (value, item, GPU).

    paid False: only items whose move costs no migration (not running there). (inf, -1, -1) when none.
    """
    best = (math.inf, -1, -1)
    for i in state.on_gpu[p]:
        free = run[i] != p
        if not free and not paid:
            continue
        values = state.kvprs_with(i)
        values[p] = math.inf
        b = int(np.argmin(values))
        value = max(state.kvpr_without(i), float(values[b]))
        if value < best[0]:
            best = (value, i, b)
    return best
