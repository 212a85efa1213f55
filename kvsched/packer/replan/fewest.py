"""Fewest moves to a target T (every GPU's KVPR <= T): `fewest_moves` from an assignment, `reduce_moves`
to undo moves one at a time while that saves moves (after a search from scratch).

Free replicas (new, or already moved) leave an over-T GPU first, then as few running ones as cover its excess,
heaviest first; the evicted go where they fit tightest; what fits nowhere goes to `repair` (at most
_CHAIN_MAX_LEFTOVER of them also to ejection chains, `kvsched.packer.replan.chains`; the fewer moves win); then
`revert` puts moved replicas back home where T allows.
Called by: `kvsched.packer.replan.strategy`, `kvsched.packer.replan.budget` (`lowest_within`).
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from kvsched.packer.deadline import NEVER, Deadline
from kvsched.packer.improve import descend, improve
from kvsched.packer.instance import Instance, IntArray
from kvsched.packer.kvpr import IMPROVEMENT_RATIO, within
from kvsched.packer.repair import repair
from kvsched.packer.replan.chains import place_by_chain
from kvsched.packer.replan.relabel import revert
from kvsched.packer.replan.running import align, count_moves, max_kvpr_of
from kvsched.packer.state import GpuState


# The shed route tries ejection chains (`place_by_chain`) when tightest fit leaves at most this many items: one
# chain per item touches two or three GPUs, so many (a lost GPU's replicas) cost share restarts. Measured on
# bench.churn's 128-GPU many-small cluster: a replica added, 1 item left, 6 -> 2 moves (4 -> 2 share restarts);
# a GPU lost, 14 items left, chains for all: 28 -> 23 moves but 26 -> 41 share restarts.
_CHAIN_MAX_LEFTOVER = 2


def fewest_moves(inst: Instance, items: Sequence[int], run: IntArray, start: IntArray, target: float, *,
                 deadline: Deadline = NEVER, with_repair: bool = True) -> IntArray | None:
    """An assignment of every item of `items` with every GPU's KVPR <= target, moving few running replicas of
    `start` (whose unplaced items must be placed); None when the heuristic cannot reach the target.

    Routes, each tried when the ones before fail. Shed: over-target GPUs shed free items first (new ones, or
    running ones `start` already moved), then the fewest running ones that cover the excess, heaviest first,
    putting back the lightest that need not leave; the shed items go, heaviest first, where they fit the
    tightest, and the rest go to `repair` (or, when few, ejection chains: the fewer moves win). Repair: `repair`
    at the target straight from `start` (it sheds by single moves and swaps). Descent: local search off the peak, then `descend`. The result goes through
    `revert`. `with_repair` False: the shed route with ejection chains for every item left, nothing else.
    O(G + shed * G) plus repair's bounded steps (each O(n) vectorised).
    """
    unplaced = [i for i in items if start[i] < 0]
    routes = [_shed_route(inst, items, run, start, target, deadline, with_repair)]
    # The other routes run only when shedding fails: measured on scale instances they never moved fewer
    # (repair: the same moves, at twice the time; descent: 1.3-1.8x the moves).
    if routes[0] is None and 0 < target < math.inf and with_repair:
        routes.append(_repair(inst, start, target, unplaced, deadline))
        if not unplaced and routes[-1] is None:
            routes.append(_descend_route(inst, start, target, deadline))
    found = [revert(inst, run, align(inst, run, a), target) for a in routes if a is not None]
    if not found:
        return None
    return min(found, key=lambda a: (count_moves(run, a), max_kvpr_of(inst, a)))


def _descend_route(inst: Instance, start: IntArray, target: float,
                   deadline: Deadline) -> IntArray | None:
    """Local search off the peak (`improve`, one move or swap at a time) until every KVPR is within target."""
    assign = start
    chunk = 1
    while not within(max_kvpr_of(inst, assign), target) and not deadline.expired():
        # Chunks that double: each call of improve costs O(n) to set up, and revert undoes the overshoot.
        step = improve(inst, assign, max_steps=chunk, deadline=deadline)
        if step.steps == 0:
            break
        assign, chunk = step.assign, chunk * 2
    if within(max_kvpr_of(inst, assign), target):
        return assign
    lowered = descend(inst, assign, target, deadline=deadline).assign
    return lowered if within(max_kvpr_of(inst, lowered), target) else None


def _repair(inst: Instance, assign: IntArray, target: float, trash: list[int],
            deadline: Deadline) -> IntArray | None:
    fixed = repair(inst, assign, target, trash=trash, deadline=deadline)
    if fixed is None:
        fixed = repair(inst, assign, target, trash=trash, shed_first=False, deadline=deadline)
    return fixed


def _shed_route(inst: Instance, items: Sequence[int], run: IntArray, start: IntArray, target: float,
                deadline: Deadline, with_repair: bool = True) -> IntArray | None:
    state = GpuState.totals_only(inst, start)
    pending = [i for i in items if state.assign[i] < 0]
    kv = state.kvprs()
    for g in np.argsort(-kv, kind="stable").tolist():
        if within(float(kv[g]), target):
            break
        pending.extend(_shed(state, int(g), run, target))
    weight = inst.item_load + (target if math.isfinite(target) else 1.0) * inst.item_size
    pending.sort(key=lambda i: (-weight[i], i))
    leftover: list[int] = []
    for i in pending:
        values = state.kvprs_with(i)
        ok = np.isfinite(values) & (values <= target * (1 + IMPROVEMENT_RATIO))
        if not ok.any():
            leftover.append(i)
            continue
        # Tightest fit: the GPU whose KVPR ends closest to the target keeps the roomy GPUs for big items.
        g = int(np.argmax(np.where(ok, values, -np.inf)))
        state.put(i, g)
    if not leftover:
        return state.assign
    if not 0 < target < math.inf:
        return None
    if not with_repair:
        # Chains alone (no repair: its bounded steps are what costs), for every item left.
        return state.assign if all(place_by_chain(state, i, run, target) for i in leftover) else None
    if len(leftover) > _CHAIN_MAX_LEFTOVER:
        return _repair(inst, state.assign, target, leftover, deadline)
    repaired = _repair(inst, state.assign.copy(), target, leftover, deadline)
    # Ejection chains take a replica or two off to make room; repair sheds by single moves and swaps: the
    # fewer moves wins (repair's plan on ties, as before chains).
    rest = [i for i in leftover if not place_by_chain(state, i, run, target)]
    chained = state.assign if not rest else _repair(inst, state.assign, target, rest, deadline)
    found = [a for a in (repaired, chained) if a is not None]
    return min(found, key=lambda a: count_moves(run, a)) if found else None


def _shed(state: GpuState, g: int, run: IntArray, target: float) -> list[int]:
    """Take items off GPU g until its KVPR is within target: free ones first, then running ones, heaviest
    first; then put back the lightest that need not have left. Returns the items taken."""
    inst = state.inst
    weight = inst.item_load + (target if math.isfinite(target) else 1.0) * inst.item_size

    def key(i: int) -> tuple[bool, float, int]:
        return (run[i] == g, -weight[i], i)

    taken: list[int] = []
    for i in sorted(state.on_gpu[g], key=key):
        if within(state.kvpr(g), target):
            break
        state.take(i)
        taken.append(i)
    for i in sorted(taken, key=lambda i: (run[i] != g, weight[i], i)):  # running ones back first, then light
        if within(state.kvpr_with(i, g), target):
            state.put(i, g)
            taken.remove(i)
    return taken


def reduce_moves(inst: Instance, items: Sequence[int], run: IntArray, assign: IntArray, target: float, *,
                 max_attempts: int, quick: bool = False) -> IntArray:
    """Fewer moves by undoing one and repairing around it: put a moved replica back home (a replica of its
    model moved in there leaves) and let `fewest_moves` shed the free replicas that now overfill it. Kept when
    the moves drop (or stay, with a lower peak); repeated, largest replicas first, until a round finds nothing
    or `max_attempts` (a count, so the plan does not depend on the machine's speed) are spent. `quick`: only
    replicas whose home holds a free replica are tried, and `fewest_moves` without repair (shed route and ejection
    chains; repair's steps are most of an attempt's cost at 128 GPUs).
    O(attempts * fewest_moves).
    """
    best = assign
    key = (count_moves(run, best), max_kvpr_of(inst, best))
    attempts = 0
    improved = True
    while improved and attempts < max_attempts:
        improved = False
        moved = np.nonzero((run >= 0) & (best >= 0) & (best != run))[0].tolist()
        if quick:
            free_on = set(best[(best >= 0) & (best != run)].tolist())
            moved = [i for i in moved if int(run[i]) in free_on]
        for i in sorted(moved, key=lambda i: (-inst.item_size[i], i)):
            if attempts >= max_attempts:
                break
            attempts += 1
            trial = best.copy()
            home = int(run[i])
            trial[(trial == home) & (inst.item_group == inst.item_group[i])] = -1
            trial[i] = home
            found = fewest_moves(inst, items, run, trial, target, with_repair=not quick)
            if found is None:
                continue
            found_key = (count_moves(run, found), max_kvpr_of(inst, found))
            if found_key < key:
                best, key, improved = found, found_key, True
                break
    return best
