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
from typing import Literal, Mapping, Sequence

import numpy as np
from sortedcontainers import SortedList

from kvsched.packer.instance import FloatArray, Instance, IntArray
from kvsched.packer.kvpr import kvpr_array
from kvsched.packer.repair import repair

Order = Literal["weight", "density", "ratio"]
Policy = Literal["best_fit", "min_kvpr", "hybrid", "fill"]
ORDERS: tuple[Order, ...] = ("weight", "density", "ratio")
POLICIES: tuple[Policy, ...] = ("fill", "best_fit", "min_kvpr", "hybrid")

# Items checked exactly by the per-model part of the residual bound; the rest are dominated in practice and
# skipping them keeps a checkpoint O(K * G) instead of O(n * G). Skipping only ever lowers the bound.
_RESIDUAL_SAMPLE = 32
_EPS = 1e-12


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
        key = load + target * size
    elif order == "density":
        free = float(inst.gpu_memory.max()) - size
        key = np.where(free > 0, load / np.where(free > 0, free, 1.0), np.inf)
    else:
        key = load / size
    keyed = key.tolist()
    return sorted(items, key=lambda i: (-keyed[i], i))


def residual_bound(inst: Instance, remaining: Sequence[int], gpu_load: FloatArray, gpu_weights: FloatArray,
                   group_gpus: Mapping[int, list[int]], target: float) -> float:
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
            need[taken] = np.inf
        per_item = max(per_item, float(need.min()))
    total_load = float(load.sum())
    total_size = float(size.sum())
    # Start from the per-item part: when no GPU can take even the lightest item at T, the GPUs it opens up
    # are the ones the remaining total must fit.
    fluid = max(target, per_item) if math.isfinite(per_item) else target
    for _ in range(4):
        smallest = float((load + fluid * size).min())
        usable = fluid * free - gpu_load >= smallest - _EPS * fluid * inst.gpu_memory
        denominator = float(free[usable].sum()) - total_size
        if denominator <= 0:
            fluid = math.inf
            break
        nxt = (float(gpu_load[usable].sum()) + total_load) / denominator
        if nxt <= fluid * (1 + 1e-9):
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
        return PassResult(state.assign, target, 0, 0, not items)
    queue = order_items(inst, items, order, target)
    marks = sorted({min(len(queue), max(1, math.ceil(c * len(queue)))) for c in checkpoints}) if retune else []
    if policy == "fill":
        overflow = _fill(state, queue, order, marks, retune_threshold_ratio)
        return _finish(state, overflow)
    overflow = []
    pos = 0
    while pos < len(queue):
        if marks and pos == marks[0]:
            marks.pop(0)
            if state.checkpoint(queue[pos:], retune_threshold_ratio) and order == "weight":
                queue[pos:] = order_items(inst, queue[pos:], order, state.target)
            continue
        i = queue[pos]
        spread = policy == "min_kvpr" or (policy == "hybrid" and pos < inst.n_gpus)
        g = state.least_kvpr(i) if spread else state.bins.best_fit(state.weight(i), state.groups_on, state.group[i])
        if g < 0:
            overflow.append(i)
        else:
            state.place(i, g)
        pos += 1
    return _finish(state, overflow)


def _finish(state: _PassState, overflow: list[int]) -> PassResult:
    """The pass's result once every item was tried: items no GPU took are placed by `repair` when it can."""
    if not overflow:
        return PassResult(state.assign, state.target, state.retunes, state.checkpoints, True)
    fixed = repair(state.inst, state.assign, state.target, overflow)
    if fixed is None:
        return PassResult(state.assign, state.target, state.retunes, state.checkpoints, False)
    return PassResult(fixed, state.target, state.retunes, state.checkpoints, True)


class _ByWeight:
    """Remaining items sorted by transformed weight: parallel plain lists, which beat a SortedList here
    (C-level bisect and memmove on a few thousand entries)."""

    def __init__(self, state: _PassState, items: Sequence[int]) -> None:
        pairs = sorted((state.weight(i), i) for i in items)
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
    gpus = sorted(range(inst.n_gpus), key=lambda g: (-inst.gpu_memory[g], g))
    done = [False] * inst.n_items
    head = 0  # queue[:head] are all placed
    by_weight = _ByWeight(state, queue)
    residual = state.bins.residual
    slack = state.bins.slack
    for g in gpus:
        while len(by_weight):
            if marks and inst.n_items - len(by_weight) >= marks[0]:
                marks.pop(0)
                rest = [i for i in queue[head:] if not done[i]]
                if state.checkpoint(rest, threshold):
                    residual, slack = state.bins.residual, state.bins.slack
                    by_weight = _ByWeight(state, rest)
                    queue, head = (order_items(inst, rest, order, state.target) if order == "weight" else rest), 0
                continue
            if not state.groups_on[g]:
                while done[queue[head]]:
                    head += 1
                chosen = []
                for at in range(head, len(queue)):
                    i = queue[at]
                    if not done[i] and state.weight(i) <= residual[g] + slack[g]:
                        chosen = [i]
                        break
            else:
                chosen = _best_completion(state, by_weight, residual[g] + slack[g], state.groups_on[g])
            if not chosen:
                break
            for i in chosen:
                by_weight.remove(state.weight(i), i)
                state.place(i, g)
                done[i] = True
        if not by_weight:
            break
    return list(by_weight.ids)


_PAIR_CANDIDATES = 48


def _best_completion(state: _PassState, by_weight: _ByWeight, room: float, taken: set[int]) -> list[int]:
    """The single item or pair of remaining items of weight <= room leaving the least room; [] when none.

    Singles: the heaviest that fits. Pairs: for up to _PAIR_CANDIDATES first items, heaviest first, the heaviest
    partner that fits beside it (a bisection). Items of a model in `taken`, or twice the same model, are skipped.
    Stops early at a fill within 1e-9 of the room. O(_PAIR_CANDIDATES * log n).
    """
    ws = by_weight.w
    ids = by_weight.ids
    group = state.group
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
    perfect = room * (1 - 1e-9)
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
    """The partial placement of one pass: per-GPU load and weights, model groups per GPU, residuals at T."""

    def __init__(self, inst: Instance, target: float) -> None:
        self.inst = inst
        self.target = target
        self.assign = np.full(inst.n_items, -1, dtype=np.int64)
        self.gpu_load = np.zeros(inst.n_gpus)
        self.gpu_weights = np.zeros(inst.n_gpus)
        self.groups_on: list[set[int]] = [set() for _ in range(inst.n_gpus)]
        self.group_gpus: dict[int, list[int]] = {}
        self.load: list[float] = inst.item_load.tolist()
        self.size: list[float] = inst.item_size.tolist()
        self.group: list[int] = inst.item_group.tolist()
        self.bins = _Bins(inst.gpu_memory, target)
        self.retunes = 0
        self.checkpoints = 0

    def weight(self, i: int) -> float:
        return self.load[i] + self.target * self.size[i]

    def place(self, i: int, g: int) -> None:
        self.bins.take(g, self.weight(i))
        self.assign[i] = g
        self.gpu_load[g] += self.load[i]
        self.gpu_weights[g] += self.size[i]
        self.groups_on[g].add(self.group[i])
        self.group_gpus.setdefault(self.group[i], []).append(g)

    def checkpoint(self, rest: Sequence[int], threshold: float) -> bool:
        """Retune when the residual bound of `rest` beats T by more than `threshold`; True when T was raised."""
        self.checkpoints += 1
        need = residual_bound(self.inst, rest, self.gpu_load, self.gpu_weights, self.group_gpus, self.target)
        if not (need > self.target * (1 + threshold) and math.isfinite(need)):
            return False
        self.target = need
        self.retunes += 1
        self.bins = _Bins(self.inst.gpu_memory, need, self.gpu_load, self.gpu_weights)
        return True

    def least_kvpr(self, i: int) -> int:
        return _least_kvpr(self.load[i], self.size[i], self.gpu_load, self.gpu_weights, self.inst.gpu_memory,
                           self.target, self.group_gpus.get(self.group[i]))


class _Bins:
    """Residual transformed capacity r_g = T * (M_g - W_g) - N_g of every GPU, sorted for best-fit lookups."""

    def __init__(self, memory: FloatArray, target: float, load: FloatArray | None = None,
                 weights: FloatArray | None = None) -> None:
        residual = target * memory
        if load is not None and weights is not None:
            residual = residual - load - target * weights
        self.residual = residual.tolist()
        self.slack = (_EPS * target * memory + 1e-15).tolist()
        self.sorted = SortedList((r, g) for g, r in enumerate(self.residual))

    def best_fit(self, weight: float, groups_on: Sequence[set[int]], group: int) -> int:
        """The GPU with the least residual >= weight not holding `group`, ties by index; -1 when none."""
        at = self.sorted.bisect_left((weight - 1e-12 * max(weight, 1.0), -1))
        while at < len(self.sorted):
            r, g = self.sorted[at]
            if group not in groups_on[g] and weight <= r + self.slack[g]:
                return int(g)
            at += 1
        return -1

    def take(self, g: int, weight: float) -> None:
        self.sorted.remove((self.residual[g], g))
        self.residual[g] -= weight
        self.sorted.add((self.residual[g], g))


def _least_kvpr(load: float, size: float, gpu_load: FloatArray, gpu_weights: FloatArray, memory: FloatArray,
                target: float, taken: list[int] | None) -> int:
    """The GPU whose KVPR after taking the item is smallest and <= T, ties by index; -1 when none. O(G)."""
    kv = kvpr_array(gpu_load + load, gpu_weights + size, memory)
    limit = target * (1 + 1e-12)
    kv = np.where(kv <= limit, kv, np.inf)
    if taken:
        kv[taken] = np.inf
    g = int(np.argmin(kv))
    return g if math.isfinite(kv[g]) else -1
