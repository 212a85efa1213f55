"""What runs now, as the search sees it: the running slots as item -> GPU, and moves counted against them.

Replicas of one model are interchangeable, so replica numbers do not matter: `running_gpus` and
`running_assignment` turn the running slots into item -> GPU (-1: not running), `align` gives every replica that
stays the GPU it runs on, `rematch` pairs the running replicas with the final plan (so a model that lost replicas
keeps the ones the plan keeps), and `count_moves` / `moves_of` count the moves.
Called by: `kvsched.packer.planner.solve`, every module of `kvsched.packer.replan`.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from kvsched.packer.domain import Slot
from kvsched.packer.errors import InvalidInput
from kvsched.packer.instance import FloatArray, Instance, IntArray
from kvsched.packer.kvpr import kvpr_array


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


def running_shares(inst: Instance, current: Sequence[Slot]) -> dict[tuple[str, int], float]:
    """(model, GPU index) -> the memory share the replica there runs with, for the slots of `current` that say
    (`Slot.memory_fraction`) and name a known model and GPU. Raises InvalidInput for a share that is not a
    number in (0, 1]. O(slots)."""
    models = set(inst.item_model)
    gpu_of = {inst.gpu_id(g): g for g in range(inst.n_gpus)}
    out: dict[tuple[str, int], float] = {}
    for k, slot in enumerate(current):
        f = slot.memory_fraction
        if f is None:
            continue
        if not isinstance(f, (int, float)) or isinstance(f, bool) or not (0.0 < float(f) <= 1.0):
            raise InvalidInput(f"current[{k}]", "memory_fraction", f,
                               f"the memory share of replica {slot.replica} of model {slot.model!r} must be a "
                               f"number in (0, 1]")
        g = gpu_of.get(slot.gpu)
        if slot.model in models and g is not None:
            out[(slot.model, g)] = float(f)
    return out


def share_array(inst: Instance, shares: dict[tuple[str, int], float], run: IntArray) -> FloatArray:
    """Item -> the share it runs with on `run[i]` (NaN when not running or not known). O(items)."""
    out = np.full(inst.n_items, np.nan)
    if not shares:
        return out
    for i in np.nonzero(run >= 0)[0].tolist():
        f = shares.get((inst.item_model[i], int(run[i])))
        if f is not None:
            out[i] = f
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


def max_kvpr_of(inst: Instance, assign: IntArray) -> float:
    """Largest KVPR over the GPUs (0 without GPUs)."""
    placed = assign >= 0
    load = np.bincount(assign[placed], weights=inst.item_load[placed], minlength=inst.n_gpus)
    weights = np.bincount(assign[placed], weights=inst.item_size[placed], minlength=inst.n_gpus)
    return float(kvpr_array(load, weights, inst.gpu_memory).max()) if inst.n_gpus else 0.0


def moves_of(inst: Instance, running: dict[int, list[int]], assign: IntArray) -> int:
    """Moves of `assign` by the model-level definition: sum over models of min(|R|, |P|) - |R & P|."""
    return count_moves(rematch(inst, running, assign), assign)
