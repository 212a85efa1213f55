"""The `planned` hint: the caller's last plan for replicas that do not run yet. `planned_assignment` reads it
(slots of a world that moved on ignored); `follow_hint` keeps a fresh plan there when that costs no more than
the bisection's tolerance, so re-solving the same world returns the same plan.
Called by: `kvsched.packer.planner.solve`.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from kvsched.packer.domain import Slot
from kvsched.packer.evaluate import max_kvpr
from kvsched.packer.improve import improve
from kvsched.packer.instance import Instance, IntArray
from kvsched.packer.options import PackOptions
from kvsched.packer.replan.around import place_around


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


def follow_hint(inst: Instance, items: list[int], assign: IntArray, hint: IntArray, options: PackOptions) -> IntArray:
    """Nothing runs: the plan that keeps the hinted replicas where `hint` plans them (the rest placed around
    them, then local search moving only those) when it is within `options.bisection_tolerance_ratio` of
    `assign` (the search's plan) and places as many replicas; else `assign`."""
    if not (hint >= 0).any():
        return assign
    held = place_around(inst, items, np.full(inst.n_items, -1, dtype=np.int64), hint)
    idx = np.asarray(items, dtype=np.int64)
    if len(held.leftover) > int((assign[idx] < 0).sum()):
        return assign
    kept = improve(inst, held.assign, pinned=(hint >= 0) & (held.assign == hint)).assign
    if max_kvpr(inst, kept) <= (1 + options.bisection_tolerance_ratio) * max_kvpr(inst, assign):
        return kept
    return assign
