"""Placing around fixed replicas: `repair_around` keeps every running replica, evicting the fewest from GPUs
that can no longer hold them (a model grew), and places new, orphaned and evicted replicas around the rest;
`place_around` places the free replicas around fixed ones, on a guide GPU (a relabelled plan from scratch, the
`planned` hint) where it has room; `pinned_mask` says which replicas are pinned (moving one is a move).
Called by: `kvsched.packer.replan.strategy`, `kvsched.packer.replan.hint`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import numpy.typing as npt

from kvsched.packer.instance import Instance, IntArray
from kvsched.packer.state import GpuState


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
    return Repaired(state.assign, tuple(_place_lowest(state, pool)))


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
    return Repaired(state.assign, tuple(_place_lowest(state, rest)))


def _place_lowest(state: GpuState, items: Sequence[int]) -> list[int]:
    """Put each of `items`, in order, on the GPU where its KVPR ends lowest; returns those that fit nowhere."""
    leftover: list[int] = []
    for i in items:
        values = state.kvprs_with(i)
        g = int(np.argmin(values))
        if math.isfinite(float(values[g])):
            state.put(i, g)
        else:
            leftover.append(i)
    return leftover


def pinned_mask(inst: Instance, running: dict[int, list[int]], assign: IntArray) -> npt.NDArray[np.bool_]:
    """Items placed on a GPU where their model runs now: moving one would be a move (a pod restart); every
    other item (new, pending, orphaned, or a running replica moving anyway) moves at no cost. O(items)."""
    out = np.zeros(inst.n_items, dtype=bool)
    homes = {grp: set(gpus) for grp, gpus in running.items()}
    for i in np.nonzero(assign >= 0)[0].tolist():
        if int(assign[i]) in homes.get(int(inst.item_group[i]), ()):
            out[i] = True
    return out
