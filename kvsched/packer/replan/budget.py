"""Under a cap on moves (`PackOptions.max_migrations`): `within_budget` lowers the peak with at most k more moves
(greedy: the best move off the hottest GPU, again and again); `lowest_within` bisects on the lowest target the
fewest-moves heuristic reaches within the cap.
Called by: `kvsched.packer.replan.strategy` (the cap).
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from kvsched.packer.deadline import NEVER, Deadline
from kvsched.packer.instance import Instance, IntArray
from kvsched.packer.kvpr import improves
from kvsched.packer.replan.fewest import fewest_moves
from kvsched.packer.replan.polish import best_move
from kvsched.packer.replan.running import align, max_kvpr_of, moves_of
from kvsched.packer.state import GpuState


def within_budget(inst: Instance, run: IntArray, start: IntArray, extra_moves: int, *,
                  deadline: Deadline = NEVER) -> IntArray:
    """From `start`, lower the peak by at most `extra_moves` more moves of running replicas (moves that cost
    nothing are free): each step applies the best move off the hottest GPU (`best_move`).
    O(steps * items on the peak * G)."""
    state = GpuState.totals_only(inst, align(inst, run, start))
    left = extra_moves
    steps = 4 * inst.n_items + 10
    while steps > 0 and inst.n_gpus > 1 and not deadline.expired():
        steps -= 1
        kv = state.kvprs()
        p = int(np.argmax(kv))
        value, i, b = best_move(state, run, p, paid=left > 0)
        if i < 0 or not improves(value, float(kv[p])):
            break
        if run[i] == p:
            left -= 1
        state.take(i)
        state.put(i, b)
        if run[i] == b:
            left += 1  # a replica back home undoes a move
    return align(inst, run, state.assign)


def lowest_within(inst: Instance, items: Sequence[int], run: IntArray, running: dict[int, list[int]],
                  start: IntArray, allowed: int, floor: float, *, steps: int = 6,
                  deadline: Deadline = NEVER) -> IntArray:
    """The lowest target T in [floor, max KVPR of start] that `fewest_moves` reaches from `start` with at most
    `allowed` moves, by bisection (geometric, `steps` probes): where single moves cannot lower the peak (a tight
    packing needs chains), chains within the cap still can. Returns start when no probe fits the cap.
    O(steps * fewest_moves)."""
    best = start
    lo, hi = floor, max_kvpr_of(inst, start)
    if not (0 < lo < hi < math.inf):
        return best
    for _ in range(steps):
        mid = math.sqrt(lo * hi)
        found = fewest_moves(inst, items, run, start, mid, deadline=deadline)
        if found is not None and moves_of(inst, running, found) <= allowed:
            best, hi = found, max_kvpr_of(inst, found)
        else:
            lo = mid
        if hi <= lo * (1 + 1e-3):
            break
    return best
