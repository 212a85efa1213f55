"""Re-planning: from the replicas running now to a plan that moves as few of them as its quality allows.

A *move* is a running replica whose GPU is no longer one of its model's GPUs. Replicas of one model are
interchangeable, so replica numbers do not matter: `align` gives every replica that stays the GPU it runs on.
The pieces, in the order `solve` uses them:
1. `running_gpus`, `running_assignment`: the running slots as item -> GPU (-1: not running); `rematch` pairs
   them with the final plan (so a model that lost replicas keeps the ones the plan keeps).
2. `repair_around`: keep every running replica where it is; evict the fewest from each GPU that can no longer
   hold them (a model grew); place new, orphaned and evicted replicas around the rest, each on the GPU where its
   KVPR ends lowest. Nothing else moves.
3. `fewest_moves`: reach a target T (every GPU's KVPR <= T) from an assignment with few moves: free replicas
   (new, or already moved) leave an over-T GPU first, then as few running ones as cover its excess, heaviest
   first; the evicted go where they fit tightest; what fits nowhere goes to `repair`; then `revert` puts moved
   replicas back home where T allows. `exact_replan` solves the same problem exactly on tiny instances.
4. `relabel`: a plan from scratch with its GPUs permuted among GPUs of equal memory to keep most models in place.
5. `lowest_within`: under a cap on moves, the lowest target the fewest-moves heuristic reaches within it.
6. `reduce_moves`: undo a move and repair around it, while that saves moves (after a search from scratch).
7. `within_budget`: a low peak reachable with at most k more moves (greedy: the best move off the hottest
   GPU, again and again).
8. `polish`: moves that cost nothing (new replicas, replicas already moving) lower the peak further.
9. `pinned_mask`: the replicas on a GPU where their model runs (moving one is a move); the rest move for free.
   `place_around`: the free replicas placed around fixed ones, on a guide GPU (a relabelled plan from scratch,
   the `planned` hint) where it has room, else where their KVPR ends lowest. `planned_assignment`: the
   caller's last plan for replicas that do not run yet, as a hint (slots of a world that moved on ignored).
Called by: `kvsched.packer.planner.solve`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import numpy.typing as npt

from kvsched.packer.deadline import NEVER, Deadline
from kvsched.packer.domain import Slot
from kvsched.packer.errors import InvalidInput
from kvsched.packer.instance import Instance, IntArray
from kvsched.packer.kvpr import IMPROVEMENT_RATIO, improves, kvpr, kvpr_array, reaches
from kvsched.packer.improve import descend, improve
from kvsched.packer.repair import repair
from kvsched.packer.state import GpuState

def within(value: float, target: float) -> bool:
    """value <= target up to float noise (kvpr.reaches; any value is within an infinite target)."""
    return reaches(value, target) if math.isfinite(target) else True


def running_gpus(inst: Instance, current: Sequence[Slot]) -> dict[int, list[int]]:
    """Model group -> the GPU indices its replicas run on, by replica number; slots of unknown models or GPUs are
    skipped (they describe what no longer exists), as is a second replica of one model on one GPU.
    Raises InvalidInput for a replica listed twice. O(slots)."""
    group_of: dict[str, int] = {}
    for i in range(inst.n_items):
        group_of.setdefault(inst.item_model[i], int(inst.item_group[i]))
    gpu_of = {inst.gpu_id(g): g for g in range(inst.n_gpus)}
    seen: set[tuple[str, int]] = set()
    slots: dict[int, list[tuple[int, int]]] = {}
    for k, slot in enumerate(current):
        key = (slot.model, slot.replica)
        if key in seen:
            raise InvalidInput(f"current[{k}]", "replica", slot.replica,
                               f"replica {slot.replica} of model {slot.model!r} is listed twice")
        seen.add(key)
        g = gpu_of.get(slot.gpu)
        if slot.model in group_of and g is not None:
            slots.setdefault(group_of[slot.model], []).append((slot.replica, g))
    out: dict[int, list[int]] = {}
    for grp, pairs in slots.items():
        gpus: list[int] = []
        for _, g in sorted(pairs):
            if g not in gpus:
                gpus.append(g)
        out[grp] = gpus
    return out


def running_assignment(inst: Instance, running: dict[int, list[int]]) -> IntArray:
    """Item -> GPU index of the replica running there, -1 for replicas not running.

    Replicas of a model take its running GPUs in order. When more run than the model now wants, those on the
    GPUs of highest KVPR (all running replicas counted) are left out: they stop, unless `rematch` finds the plan
    keeps them. O(items + G).
    """
    out = np.full(inst.n_items, -1, dtype=np.int64)
    members: dict[int, list[int]] = {}
    for i in range(inst.n_items):
        members.setdefault(int(inst.item_group[i]), []).append(i)
    load = np.zeros(inst.n_gpus)
    weights = np.zeros(inst.n_gpus)
    for grp, gpus in running.items():
        i = members[grp][0]
        load[gpus] += inst.item_load[i]
        weights[gpus] += inst.item_size[i]
    kv = kvpr_array(load, weights, inst.gpu_memory)
    for grp, gpus in running.items():
        mine = members.get(grp, [])
        if len(gpus) > len(mine):  # fewer replicas wanted: keep those on the least pressed GPUs
            gpus = sorted(gpus, key=lambda g: (kv[g], g))[:len(mine)]
        for i, g in zip(mine, gpus):
            out[i] = g
    return out


def rematch(inst: Instance, running: dict[int, list[int]], assign: IntArray) -> IntArray:
    """The running replicas matched to the final plan, item -> GPU it runs on now (-1: starts new): a replica
    planned on a GPU where its model runs stays; the model's other running replicas are matched, in order, to
    its other planned replicas (moves); running replicas left over stop. O(items)."""
    out = np.full(inst.n_items, -1, dtype=np.int64)
    members: dict[int, list[int]] = {}
    for i in range(inst.n_items):
        members.setdefault(int(inst.item_group[i]), []).append(i)
    for grp, gpus in running.items():
        placed = [i for i in members.get(grp, []) if assign[i] >= 0]
        planned = {int(assign[i]) for i in placed}
        spare = [g for g in gpus if g not in planned]
        runs_here = set(gpus)
        others = [i for i in placed if int(assign[i]) not in runs_here]
        for i in placed:
            if int(assign[i]) in runs_here:
                out[i] = assign[i]
        for i, g in zip(others, spare):
            out[i] = g
    return out


def count_moves(run: IntArray, assign: IntArray) -> int:
    """Running items placed on another GPU than their own (after `align`, this is the number of moves)."""
    return int(((run >= 0) & (assign >= 0) & (assign != run)).sum())


def align(inst: Instance, run: IntArray, assign: IntArray) -> IntArray:
    """`assign` with GPUs permuted among the replicas of each model so that every running replica whose GPU is
    still one of its model's GPUs stays there; placed GPUs go to running replicas before new ones. O(items)."""
    out = assign.copy()
    group = inst.item_group
    if group.size == 0:
        return out
    shared = np.bincount(group)[group] > 1  # single-replica models need no permuting
    by_group: dict[int, list[int]] = {}
    for i in np.nonzero(shared)[0].tolist():
        by_group.setdefault(int(group[i]), []).append(i)
    for members in by_group.values():
        gpus = [int(assign[i]) for i in members if assign[i] >= 0]
        planned = set(gpus)
        stay = [i for i in members if run[i] >= 0 and int(run[i]) in planned]
        kept = {int(run[i]) for i in stay}
        rest = [g for g in gpus if g not in kept]
        staying = set(stay)
        others = [i for i in members if i not in staying]
        others.sort(key=lambda i: run[i] < 0)  # running replicas first: they move rather than stop
        for i in stay:
            out[i] = run[i]
        for k, i in enumerate(others):
            out[i] = rest[k] if k < len(rest) else -1
    return out


@dataclass(frozen=True, eq=False)
class Repaired:
    """`repair_around`'s result: the assignment, and items it could not place without moving others."""

    assign: IntArray
    leftover: tuple[int, ...]


def repair_around(inst: Instance, items: Sequence[int], run: IntArray) -> Repaired:
    """Keep running replicas; evict the fewest (largest first) from GPUs that can no longer hold them; place
    new, orphaned and evicted items around the rest on the GPU of least resulting KVPR, heaviest load first.

    O(evicted + placed * G) vectorised.
    """
    keep = np.full(inst.n_items, -1, dtype=np.int64)
    idx = np.asarray(items, dtype=np.int64)
    if idx.size:
        keep[idx] = run[idx]
    state = GpuState.totals_only(inst, keep)
    pool = [i for i in items if state.assign[i] < 0]
    for g in range(inst.n_gpus):
        if math.isfinite(state.kvpr(g)):
            continue
        evicted: list[int] = []
        for i in sorted(state.on_gpu[g], key=lambda i: (-inst.item_size[i], i)):
            state.take(i)
            evicted.append(i)
            if math.isfinite(state.kvpr(g)):
                break
        for i in sorted(evicted, key=lambda i: (inst.item_size[i], i)):  # put back what need not leave
            if math.isfinite(state.kvpr_with(i, g)) and int(inst.item_group[i]) not in state.groups_on[g]:
                state.put(i, g)
                evicted.remove(i)
        pool.extend(evicted)
    pool.sort(key=lambda i: (-inst.item_load[i], -inst.item_size[i], i))
    leftover: list[int] = []
    for i in pool:
        values = state.kvprs_with(i)
        g = int(np.argmin(values))
        if math.isfinite(float(values[g])):
            state.put(i, g)
        else:
            leftover.append(i)
    return Repaired(state.assign, tuple(leftover))


def fewest_moves(inst: Instance, items: Sequence[int], run: IntArray, start: IntArray, target: float, *,
                 deadline: Deadline = NEVER) -> IntArray | None:
    """An assignment of every item of `items` with every GPU's KVPR <= target, moving few running replicas of
    `start` (whose unplaced items must be placed); None when the heuristic cannot reach the target.

    Routes, each tried when the ones before fail. Shed: over-target GPUs shed free items first (new ones, or
    running ones `start` already moved), then the fewest running ones that cover the excess, heaviest first,
    putting back the lightest that need not leave; the shed items go, heaviest first, where they fit the
    tightest, and the rest go to `repair`. Repair: `repair` at the target straight from `start` (it sheds by
    single moves and swaps). Descent: local search off the peak, then `descend`. The result goes through
    `revert`.
    O(G + shed * G) plus repair's bounded steps (each O(n) vectorised).
    """
    unplaced = [i for i in items if start[i] < 0]
    routes = [_shed_route(inst, items, run, start, target, deadline)]
    # The other routes run only when shedding fails: measured on scale instances they never moved fewer
    # (repair: the same moves, at twice the time; descent: 1.3-1.8x the moves).
    if routes[0] is None and 0 < target < math.inf:
        routes.append(_repair(inst, start, target, unplaced, deadline))
        if not unplaced and routes[-1] is None:
            routes.append(_descend_route(inst, start, target, deadline))
    found = [revert(inst, run, align(inst, run, a), target) for a in routes if a is not None]
    if not found:
        return None
    return min(found, key=lambda a: (count_moves(run, a), max_kvpr_of(inst, a)))


def max_kvpr_of(inst: Instance, assign: IntArray) -> float:
    """Largest KVPR over the GPUs (0 without GPUs)."""
    placed = assign >= 0
    load = np.bincount(assign[placed], weights=inst.item_load[placed], minlength=inst.n_gpus)
    weights = np.bincount(assign[placed], weights=inst.item_size[placed], minlength=inst.n_gpus)
    return float(kvpr_array(load, weights, inst.gpu_memory).max()) if inst.n_gpus else 0.0


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
                deadline: Deadline) -> IntArray | None:
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
    return _repair(inst, state.assign, target, leftover, deadline)


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


def revert(inst: Instance, run: IntArray, assign: IntArray, target: float) -> IntArray:
    """Bring moved replicas back to the GPU they run on while every KVPR stays within target: straight back
    when home has room, else in exchange for a free replica on home (new, or moving anyway) that then goes
    where it fits -- the moved replica's spot included. Each success saves one move.
    O(rounds * moved * free on home * G).
    """
    state = GpuState.totals_only(inst, assign)
    changed = True
    while changed:
        changed = False
        for i in np.nonzero((run >= 0) & (state.assign >= 0) & (state.assign != run))[0].tolist():
            home, spot = int(run[i]), int(state.assign[i])
            grp = int(inst.item_group[i])
            if grp in state.groups_on[home]:
                continue
            if within(state.kvpr_with(i, home), target):
                state.take(i)
                state.put(i, home)
                changed = True
                continue
            state.take(i)
            state.put(i, home)
            for k in sorted(state.on_gpu[home], key=lambda k: (-inst.item_size[k], k)):
                if k == i or run[k] == home:
                    continue
                state.take(k)
                values = state.kvprs_with(k) if within(state.kvpr(home), target) else None
                if values is not None:
                    values[home] = math.inf
                    ok = np.isfinite(values) & (values <= target * (1 + IMPROVEMENT_RATIO))
                    if ok.any():
                        state.put(k, int(np.argmax(np.where(ok, values, -np.inf))))
                        changed = True
                        break
                state.put(k, home)
            else:
                state.take(i)
                state.put(i, spot)
    return state.assign


def relabel(inst: Instance, run: IntArray, new: IntArray) -> IntArray:
    """`new` with its GPUs permuted among GPUs of equal memory so that as many models as possible keep a GPU
    they run on, then aligned. Greedy matching on overlap counts, largest first, ties by GPU index.
    O(n + P log P), P overlapping pairs.
    """
    running_on: dict[int, list[int]] = {}
    for i in np.nonzero(run >= 0)[0].tolist():
        running_on.setdefault(int(inst.item_group[i]), []).append(int(run[i]))
    overlap: dict[tuple[int, int], int] = {}
    for i in np.nonzero(new >= 0)[0].tolist():
        a = int(new[i])
        for b in running_on.get(int(inst.item_group[i]), ()):
            if inst.gpu_memory[a] == inst.gpu_memory[b]:
                overlap[(a, b)] = overlap.get((a, b), 0) + 1
    mapping: dict[int, int] = {}
    taken: set[int] = set()
    for (a, b), _ in sorted(overlap.items(), key=lambda kv: (-kv[1], kv[0])):
        if a not in mapping and b not in taken:
            mapping[a] = b
            taken.add(b)
    free_by_memory: dict[float, list[int]] = {}
    for g in range(inst.n_gpus):
        if g not in taken:
            free_by_memory.setdefault(float(inst.gpu_memory[g]), []).append(g)
    for a in range(inst.n_gpus):
        if a not in mapping:
            mapping[a] = free_by_memory[float(inst.gpu_memory[a])].pop(0)
    out = new.copy()
    placed = new >= 0
    out[placed] = np.asarray([mapping[int(g)] for g in new[placed]], dtype=np.int64)
    return align(inst, run, out)


def relink(inst: Instance, run: IntArray, start: IntArray, guide: IntArray, target: float) -> IntArray | None:
    """Path relinking from `start` towards `guide` (a plan within target, e.g. one from scratch relabelled):
    repeatedly move the replica, among those placed differently, whose move to its guide GPU leaves the lowest
    max KVPR (ties: moves that cost nothing first), until every KVPR is within target; then `revert`.
    None when a model's replicas block each other. O(D^2) for D replicas placed differently.
    """
    state = GpuState.totals_only(inst, align(inst, run, start))
    guide = align(inst, run, guide)
    differ = [i for i in np.nonzero((state.assign >= 0) & (guide >= 0) & (state.assign != guide))[0].tolist()]
    unplaced = [i for i in np.nonzero((state.assign < 0) & (guide >= 0))[0].tolist()]
    for i in unplaced:
        if int(inst.item_group[i]) in state.groups_on[int(guide[i])]:
            return None
        state.put(i, int(guide[i]))
    while differ:
        kv = state.kvprs()
        if within(float(kv.max()), target):
            break
        top = np.argsort(-kv, kind="stable")[:3].tolist()
        best: tuple[float, bool, int] | None = None
        for i in differ:
            src, dst = int(state.assign[i]), int(guide[i])
            if int(inst.item_group[i]) in state.groups_on[dst]:
                continue
            rest = next((float(kv[g]) for g in top if g != src and g != dst), 0.0)
            value = max(rest, state.kvpr_without(i), state.kvpr_with(i, dst))
            key = (value, bool(run[i] == src), i)
            if best is None or key < best:
                best = key
        if best is None:
            return None
        i = best[2]
        state.take(i)
        state.put(i, int(guide[i]))
        differ.remove(i)
    if not within(max_kvpr_of(inst, state.assign), target):
        return None
    return revert(inst, run, align(inst, run, state.assign), target)


def reduce_moves(inst: Instance, items: Sequence[int], run: IntArray, assign: IntArray, target: float, *,
                 max_attempts: int) -> IntArray:
    """Fewer moves by undoing one and repairing around it: put a moved replica back home (a replica of its
    model moved in there leaves) and let `fewest_moves` shed the free replicas that now overfill it. Kept when
    the moves drop (or stay, with a lower peak); repeated, largest replicas first, until a round finds nothing
    or `max_attempts` (a count, so the plan does not depend on the machine's speed) are spent.
    O(attempts * fewest_moves).
    """
    best = assign
    key = (count_moves(run, best), max_kvpr_of(inst, best))
    attempts = 0
    improved = True
    while improved and attempts < max_attempts:
        improved = False
        moved = np.nonzero((run >= 0) & (best >= 0) & (best != run))[0].tolist()
        for i in sorted(moved, key=lambda i: (-inst.item_size[i], i)):
            if attempts >= max_attempts:
                break
            attempts += 1
            trial = best.copy()
            home = int(run[i])
            trial[(trial == home) & (inst.item_group == inst.item_group[i])] = -1
            trial[i] = home
            found = fewest_moves(inst, items, run, trial, target)
            if found is None:
                continue
            found_key = (count_moves(run, found), max_kvpr_of(inst, found))
            if found_key < key:
                best, key, improved = found, found_key, True
                break
    return best


def _best_move(state: GpuState, run: IntArray, p: int, paid: bool) -> tuple[float, int, int]:
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


def polish(inst: Instance, run: IntArray, assign: IntArray, *, max_steps: int | None = None) -> IntArray:
    """Lower the peak by moves that cost no migration (new replicas, replicas moving anyway). Never raises the
    max KVPR nor the number of moves. O(steps * items on the peak * G)."""
    state = GpuState.totals_only(inst, assign)
    steps = max_steps if max_steps is not None else 4 * inst.n_items + 10
    while steps > 0 and inst.n_gpus > 1:
        steps -= 1
        kv = state.kvprs()
        p = int(np.argmax(kv))
        value, i, b = _best_move(state, run, p, paid=False)
        if i < 0 or not improves(value, float(kv[p])):
            break
        state.take(i)
        state.put(i, b)
    return align(inst, run, state.assign)


def within_budget(inst: Instance, run: IntArray, start: IntArray, extra_moves: int, *,
                  deadline: Deadline = NEVER) -> IntArray:
    """From `start`, lower the peak by at most `extra_moves` more moves of running replicas (moves that cost
    nothing are free): each step applies the best move off the hottest GPU (`_best_move`).
    O(steps * items on the peak * G)."""
    state = GpuState.totals_only(inst, align(inst, run, start))
    left = extra_moves
    steps = 4 * inst.n_items + 10
    while steps > 0 and inst.n_gpus > 1 and not deadline.expired():
        steps -= 1
        kv = state.kvprs()
        p = int(np.argmax(kv))
        value, i, b = _best_move(state, run, p, paid=left > 0)
        if i < 0 or not improves(value, float(kv[p])):
            break
        if run[i] == p:
            left -= 1
        state.take(i)
        state.put(i, b)
        if run[i] == b:
            left += 1  # a replica back home undoes a move
    return align(inst, run, state.assign)


def moves_of(inst: Instance, running: dict[int, list[int]], assign: IntArray) -> int:
    """Moves of `assign` by the model-level definition: sum over models of min(|R|, |P|) - |R & P|."""
    return count_moves(rematch(inst, running, assign), assign)


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


def pinned_mask(inst: Instance, running: dict[int, list[int]], assign: IntArray) -> npt.NDArray[np.bool_]:
    """Items placed on a GPU where their model runs now: moving one would be a move (a pod restart); every
    other item (new, pending, orphaned, or a running replica moving anyway) moves at no cost. O(items)."""
    out = np.zeros(inst.n_items, dtype=bool)
    homes = {grp: set(gpus) for grp, gpus in running.items()}
    for i in np.nonzero(assign >= 0)[0].tolist():
        if int(assign[i]) in homes.get(int(inst.item_group[i]), ()):
            out[i] = True
    return out


def planned_assignment(inst: Instance, items: Sequence[int], run: IntArray, running: dict[int, list[int]],
                       current: Sequence[Slot], planned: Sequence[Slot]) -> IntArray:
    """Item -> the GPU `planned` names for it, -1 for none: the hint for replicas that do not run yet.

    Only items of `items` that do not run get a hint. Ignored (they describe a world that moved on, not an
    error): slots naming unknown models or GPUs, replica numbers beyond the model's replicas, a replica also
    listed in `current` (current wins) or listed twice, a GPU where the model runs or that another slot of the
    model already names. A model's hinted GPUs go to its non-running replicas in replica order (replicas are
    interchangeable). O(items + slots).
    """
    out = np.full(inst.n_items, -1, dtype=np.int64)
    if not planned:
        return out
    group_of: dict[str, int] = {}
    replicas_of: dict[int, int] = {}
    for i in range(inst.n_items):
        grp = int(inst.item_group[i])
        group_of.setdefault(inst.item_model[i], grp)
        replicas_of[grp] = replicas_of.get(grp, 0) + 1
    gpu_of = {inst.gpu_id(g): g for g in range(inst.n_gpus)}
    listed = {(s.model, s.replica) for s in current}
    seen: set[tuple[str, int]] = set()
    hinted: dict[int, list[int]] = {}
    for slot in sorted(planned, key=lambda s: (s.model, s.replica, s.gpu)):
        key = (slot.model, slot.replica)
        known_group = group_of.get(slot.model)
        hinted_gpu = gpu_of.get(slot.gpu)
        if (known_group is None or hinted_gpu is None or key in listed or key in seen
                or not 0 <= slot.replica < replicas_of[known_group]):
            continue
        seen.add(key)
        grp, g = known_group, hinted_gpu
        gpus = hinted.setdefault(grp, [])
        if g not in running.get(grp, ()) and g not in gpus:
            gpus.append(g)
    for i in items:
        grp = int(inst.item_group[i])
        if run[i] < 0 and hinted.get(grp):
            out[i] = hinted[grp].pop(0)
    return out


def place_around(inst: Instance, items: Sequence[int], fixed: IntArray, guide: IntArray | None = None) -> Repaired:
    """`fixed` (a valid partial assignment, kept as is) with every other item of `items` placed: on its `guide`
    GPU when that GPU has no replica of its model and room for it (heaviest load first), else on the GPU where
    its KVPR ends lowest. Items that fit nowhere are the leftover. O(placed * G) vectorised."""
    state = GpuState.totals_only(inst, fixed)
    pool = sorted((i for i in items if state.assign[i] < 0),
                  key=lambda i: (-inst.item_load[i], -inst.item_size[i], i))
    rest: list[int] = []
    for i in pool:
        g = int(guide[i]) if guide is not None else -1
        if g >= 0 and int(inst.item_group[i]) not in state.groups_on[g] and math.isfinite(state.kvpr_with(i, g)):
            state.put(i, g)
        else:
            rest.append(i)
    leftover: list[int] = []
    for i in rest:
        values = state.kvprs_with(i)
        g = int(np.argmin(values))
        if math.isfinite(float(values[g])):
            state.put(i, g)
        else:
            leftover.append(i)
    return Repaired(state.assign, tuple(leftover))
