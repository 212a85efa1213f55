"""Steering a plan towards the running replicas: `revert` brings moved replicas back home where a target
allows; `relabel` permutes a plan from scratch among GPUs of equal memory to keep most models in place; `relink`
walks from a plan towards a guide plan (path relinking) until a target is reached.
Called by: `kvsched.packer.replan.strategy`, `kvsched.packer.replan.fewest` (`revert`).
"""

from __future__ import annotations

import math

import numpy as np

from kvsched.packer.instance import Instance, IntArray
from kvsched.packer.kvpr import IMPROVEMENT_RATIO, within
from kvsched.packer.replan.running import align, max_kvpr_of
from kvsched.packer.state import GpuState


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
