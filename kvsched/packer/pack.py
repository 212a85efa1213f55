"""`try_pack`: one packing pass at a target T, with mid-pack retuning. The heart of the packer.

At T every GPU is a bin of capacity T * M_g and item j weighs w_j(T) = n_j + T * m_j; a bin within capacity
has KVPR <= T. Items go in a fixed order (by w(T), by n / (max M - m), or by n / m, all descending) onto a bin
chosen by a policy (best fit on the transformed residual, smallest resulting KVPR, or a hybrid that spreads the
first G items by KVPR and best-fits the rest).

Retune: after fractions `checkpoints` of the items are placed, `residual_bound` computes from the *actual partial
placement* how high T must at least be for the rest to fit. When it beats T by more than the threshold, T is
raised to it, every bin's capacity and used capacity are recomputed, and (for the weight order) the remaining
items are re-sorted by the new w(T). The pass then finishes at the raised T: a pass headed for failure becomes a
valid placement at a slightly higher T, judged by the T it reached.
Called by: `search` (bisection), bench (ablation), tests.
"""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass
from typing import Collection, Literal, Mapping, Sequence

import numpy as np

from kvsched.packer.instance import FloatArray, Instance, IntArray
from kvsched.packer.kvpr import CAPACITY_SLACK_RATIO, IMPROVEMENT_RATIO, kvpr_array, transformed_weight
from kvsched.packer.repair import repair
from kvsched.packer.state import GpuState

Order = Literal["weight", "density", "ratio"]
Policy = Literal["best_fit", "min_kvpr", "hybrid", "fill"]
ORDERS: tuple[Order, ...] = ("weight", "density", "ratio")
POLICIES: tuple[Policy, ...] = ("fill", "best_fit", "min_kvpr", "hybrid")

# Items checked exactly by the per-model part of the residual bound; the rest are dominated in practice and
# skipping them keeps a checkpoint O(K * G) instead of O(n * G). Skipping only ever lowers the bound.
_RESIDUAL_SAMPLE = 32
# Rounds of the fluid part of the residual bound (each lets in the GPUs the last raise of T opened up); the
# bound only rises with each round and is valid after any number of them (4 is the seed's choice, not tuned).
_FLUID_ROUNDS = 4
# Pair candidates tried by `fill` per completion step, heaviest first; each costs a bisection, and the pair
# search stops earlier once no lighter pair can beat the best (see `_best_completion`).
_PAIR_CANDIDATES = 48


@dataclass(frozen=True, eq=False)
class PassResult:
    """Outcome of one pass. `assign[i]` is the GPU of item i or -1; complete means every item was placed.

    target is the T the pass ended at (>= the T it started at; higher after retunes); every GPU's KVPR is <= it.
    """

    assign: IntArray
    target: float
    retunes: int
    checkpoints: int
    complete: bool


def order_items(inst: Instance, items: Sequence[int], order: Order, target: float) -> list[int]:
    """Items sorted descending by the order's key, ties by item index. O(n log n)."""
    load = inst.item_load
    size = inst.item_size
    if order == "weight":
        key = transformed_weight(load, size, target)
    elif order == "density":
        free = float(inst.gpu_memory.max()) - size
        key = np.where(free > 0, load / np.where(free > 0, free, 1.0), np.inf)
    else:
        key = load / size
    keyed = key.tolist()
    return sorted(items, key=lambda i: (-keyed[i], i))


def residual_bound(inst: Instance, remaining: Sequence[int], gpu_load: FloatArray, gpu_weights: FloatArray,
                   group_gpus: Mapping[int, Collection[int]], target: float) -> float:
    """The least T the remaining items need given what is already placed (a bound on *this* partial packing).

    Two parts, the larger wins:
    - each remaining item must fit some GPU next to what is there:  max_j min_g (N_g + n_j) / (F_g - m_j),
      F_g = M_g - W_g, over GPUs without a replica of j's model (checked for the _RESIDUAL_SAMPLE items of
      largest size and of largest load);
    - the remaining total must fit the GPUs that can still take the smallest remaining item at T':
      T' >= (N_U + n_R) / (F_U - m_R) over those GPUs U, from T' = max(T, first part), iterated while
      raising T' lets more GPUs in.
    Either can exceed T, unlike a bound on the remaining items alone. O(K * G + n).
    """
    if not remaining:
        return 0.0
    idx = np.asarray(remaining, dtype=np.int64)
    load = inst.item_load[idx]
    size = inst.item_size[idx]
    free = inst.gpu_memory - gpu_weights
    k = min(_RESIDUAL_SAMPLE, idx.size)
    sample = np.unique(np.concatenate((np.argsort(-size, kind="stable")[:k], np.argsort(-load, kind="stable")[:k])))
    per_item = 0.0
    for s in sample.tolist():
        room = free - size[s]
        need = np.where(room > 0, (gpu_load + load[s]) / np.where(room > 0, room, 1.0), np.inf)
        if load[s] <= 0:
            need = np.where(room >= 0, 0.0, np.inf)
        taken = group_gpus.get(int(inst.item_group[idx[s]]))
        if taken:
            need[list(taken)] = np.inf
        per_item = max(per_item, float(need.min()))
    total_load = float(load.sum())
    total_size = float(size.sum())
    # Start from the per-item part: when no GPU can take even the lightest item at T, the GPUs it opens up
    # are the ones the remaining total must fit.
    fluid = max(target, per_item) if math.isfinite(per_item) else target
    for _ in range(_FLUID_ROUNDS):
        smallest = float(transformed_weight(load, size, fluid).min())
        usable = fluid * free - gpu_load >= smallest - CAPACITY_SLACK_RATIO * fluid * inst.gpu_memory
        denominator = float(free[usable].sum()) - total_size
        if denominator <= 0:
            fluid = math.inf
            break
        nxt = (float(gpu_load[usable].sum()) + total_load) / denominator
        if nxt <= fluid * (1 + IMPROVEMENT_RATIO):
            break
        fluid = nxt
    fluid_part = fluid if fluid > target else 0.0
    return max(per_item, fluid_part)


def try_pack(
    inst: Instance,
    items: Sequence[int],
    target: float,
    *,
    order: Order = "weight",
    policy: Policy = "best_fit",
    checkpoints: Sequence[float] = (0.4, 0.75),
    retune_threshold_ratio: float = 0.02,
    retune: bool = True,
) -> PassResult:
    """Pack `items` at target T; stops at the first item no GPU can take (complete=False).

    Item policies place items one by one in `order`: best_fit is O(n log G); min_kvpr and hybrid are O(n * G)
    (vectorised). The bin policy `fill` fills GPUs one at a time, largest memory first: it seeds a GPU with the
    first remaining item in `order`, then repeatedly adds whichever of the best-filling single item or pair of
    items leaves the least residual, O(n * K log n) with K pair candidates per step. Replicas of one model
    never share a GPU. Each checkpoint costs O(K * G + n) and, when it retunes, O(G log G + n log n).
    """
    state = _PassState(inst, target)
    if inst.n_gpus == 0:
        return PassResult(state.gpus.assign, target, 0, 0, not items)
    queue = order_items(inst, items, order, target)
    marks = sorted({min(len(queue), max(1, math.ceil(c * len(queue)))) for c in checkpoints}) if retune else []
    if policy == "fill":
        overflow = _fill(state, queue, order, marks, retune_threshold_ratio)
        return _finish(state, overflow)
    overflow = []
    gpus = state.gpus
    pos = 0
    while pos < len(queue):
        if marks and pos == marks[0]:
            marks.pop(0)
            if state.checkpoint(queue[pos:], retune_threshold_ratio) and order == "weight":
                queue[pos:] = order_items(inst, queue[pos:], order, gpus.target)
            continue
        i = queue[pos]
        spread = policy == "min_kvpr" or (policy == "hybrid" and pos < inst.n_gpus)
        g = state.least_kvpr(i) if spread else gpus.best_fit(i)
        if g < 0:
            overflow.append(i)
        else:
            gpus.put(i, g)
        pos += 1
    return _finish(state, overflow)


def _finish(state: _PassState, overflow: list[int]) -> PassResult:
    """The pass's result once every item was tried: items no GPU took are placed by `repair` when it can."""
    gpus = state.gpus
    if not overflow:
        return PassResult(gpus.assign, gpus.target, state.retunes, state.checkpoints, True)
    fixed = repair(state.inst, gpus.assign, gpus.target, overflow)
    if fixed is None:
        return PassResult(gpus.assign, gpus.target, state.retunes, state.checkpoints, False)
    return PassResult(fixed, gpus.target, state.retunes, state.checkpoints, True)


class _ByWeight:
    """Remaining items sorted by transformed weight: parallel plain lists, which beat a SortedList here
    (C-level bisect and memmove on a few thousand entries)."""

    def __init__(self, gpus: GpuState, items: Sequence[int]) -> None:
        pairs = sorted((gpus.weight(i), i) for i in items)
        self.w = [w for w, _ in pairs]
        self.ids = [i for _, i in pairs]

    def __len__(self) -> int:
        return len(self.ids)

    def remove(self, w: float, i: int) -> None:
        at = bisect.bisect_left(self.w, w)
        while self.ids[at] != i:
            at += 1
        del self.w[at]
        del self.ids[at]


def _fill(state: _PassState, queue: list[int], order: Order, marks: list[int], threshold: float) -> list[int]:
    """The `fill` policy of `try_pack` (see there). Returns the items it could not place."""
    inst = state.inst
    gpus = state.gpus
    by_memory = sorted(range(inst.n_gpus), key=lambda g: (-inst.gpu_memory[g], g))
    done = [False] * inst.n_items
    head = 0  # queue[:head] are all placed
    by_weight = _ByWeight(gpus, queue)
    for g in by_memory:
        while len(by_weight):
            if marks and inst.n_items - len(by_weight) >= marks[0]:
                marks.pop(0)
                rest = [i for i in queue[head:] if not done[i]]
                if state.checkpoint(rest, threshold):
                    by_weight = _ByWeight(gpus, rest)
                    queue, head = (order_items(inst, rest, order, gpus.target) if order == "weight" else rest), 0
                continue
            room = float(gpus.residual[g] + gpus.slack[g])
            if not gpus.groups_on[g]:
                while done[queue[head]]:
                    head += 1
                chosen = []
                for at in range(head, len(queue)):
                    i = queue[at]
                    if not done[i] and gpus.weight(i) <= room:
                        chosen = [i]
                        break
            else:
                chosen = _best_completion(gpus, by_weight, room, gpus.groups_on[g])
            if not chosen:
                break
            for i in chosen:
                by_weight.remove(gpus.weight(i), i)
                gpus.put(i, g)
                done[i] = True
        if not by_weight:
            break
    return list(by_weight.ids)


def _best_completion(gpus: GpuState, by_weight: _ByWeight, room: float, taken: set[int]) -> list[int]:
    """The single item or pair of remaining items of weight <= room leaving the least room; [] when none.

    Singles: the heaviest that fits. Pairs: for up to _PAIR_CANDIDATES first items, heaviest first, the heaviest
    partner that fits beside it (a bisection). Items of a model in `taken`, or twice the same model, are skipped.
    Stops early at a fill within IMPROVEMENT_RATIO of the room. O(_PAIR_CANDIDATES * log n).
    """
    ws = by_weight.w
    ids = by_weight.ids
    group = gpus.group
    top = bisect.bisect_right(ws, room)
    best: list[int] = []
    best_fill = -1.0
    at = top - 1
    while at >= 0:
        if group[ids[at]] not in taken:
            best, best_fill = [ids[at]], ws[at]
            break
        at -= 1
    tried = 0
    at = top - 1
    perfect = room * (1 - IMPROVEMENT_RATIO)
    while at >= 1 and tried < _PAIR_CANDIDATES and best_fill < perfect:
        w1, i1 = ws[at], ids[at]
        if 2 * w1 < best_fill:
            break  # partners are lighter than w1, so no pair from here on can beat the best
        at -= 1
        if group[i1] in taken:
            continue
        tried += 1
        k = min(bisect.bisect_right(ws, room - w1), at + 1) - 1
        while k >= 0:
            i2 = ids[k]
            if group[i2] not in taken and group[i2] != group[i1]:
                if w1 + ws[k] > best_fill:
                    best, best_fill = [i1, i2], w1 + ws[k]
                break
            k -= 1
    return best


class _PassState:
    """One pass: the GPUs' state at the pass's current T (sorted by residual for best fit), and its counters."""

    def __init__(self, inst: Instance, target: float) -> None:
        self.inst = inst
        self.gpus = GpuState.empty(inst, target, sorted_residuals=True)
        self.retunes = 0
        self.checkpoints = 0

    def checkpoint(self, rest: Sequence[int], threshold: float) -> bool:
        """Retune when the residual bound of `rest` beats T by more than `threshold`; True when T was raised."""
        self.checkpoints += 1
        gpus = self.gpus
        need = residual_bound(self.inst, rest, gpus.load, gpus.weights, gpus.gpus_of, gpus.target)
        if not (need > gpus.target * (1 + threshold) and math.isfinite(need)):
            return False
        self.retunes += 1
        gpus.retarget(need)
        return True

    def least_kvpr(self, i: int) -> int:
        """The GPU whose KVPR after taking item i is smallest and <= T, ties by index; -1 when none. O(G)."""
        gpus = self.gpus
        after = kvpr_array(gpus.load + gpus.item_load[i], gpus.weights + gpus.item_size[i], self.inst.gpu_memory)
        return gpus.least_kvpr(i, after)
