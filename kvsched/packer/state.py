"""`GpuState`: the per-GPU state of an assignment, in both views the search uses, kept in sync item by item.

Totals: N_g (summed load), W_g (summed weights, GiB), the items and model groups on each GPU, and the GPUs
holding each group, with the KVPRs they give (now, or with an item added or taken off). Bin packing at a target T: each item weighs w_j = n_j + T * m_j and each GPU has the
residual r_g = T * M_g - N_g - T * W_g of its capacity (formulas in `kvpr`). Optionally, a sorted index of the
residuals answers best-fit queries in O(log G).
Called by: `try_pack` (a pass), `repair` (moves at a fixed T), `improve` and the `replan` modules (totals and
KVPRs only).
"""

from __future__ import annotations

import math

import numpy as np
from sortedcontainers import SortedList

from kvsched.packer.instance import FloatArray, Instance, IntArray
from kvsched.packer.kvpr import CAPACITY_SLACK_RATIO, capacity, capacity_slack, kvpr, kvpr_array, transformed_weight


class GpuState:
    """An assignment (item -> GPU index, -1 unplaced) with per-GPU totals and residuals at target T.

    Invariants, kept by `put` and `take` (the only ways to change the assignment):
    load[g] = sum of n_j and weights[g] = sum of m_j over items j on g; residual[g] = T * M_g - sum of w_j over
    them (up to rounding); on_gpu, groups_on and gpus_of list exactly the placed items. Mutable, not shared:
    each pass or repair owns its own. `assign` is the array given (not copied).
    """

    def __init__(self, inst: Instance, assign: IntArray, target: float, *, sorted_residuals: bool = False) -> None:
        self.inst = inst
        self.assign = assign
        self.target = target
        self.item_load: list[float] = inst.item_load.tolist()
        self.item_size: list[float] = inst.item_size.tolist()
        self.group: list[int] = inst.item_group.tolist()
        self.item_group: IntArray = inst.item_group
        placed = assign >= 0
        on = assign[placed]
        self.load: FloatArray = np.bincount(on, weights=inst.item_load[placed], minlength=inst.n_gpus).astype(
            np.float64)
        self.weights: FloatArray = np.bincount(on, weights=inst.item_size[placed], minlength=inst.n_gpus).astype(
            np.float64)
        self.on_gpu: list[list[int]] = [[] for _ in range(inst.n_gpus)]
        self.groups_on: list[set[int]] = [set() for _ in range(inst.n_gpus)]
        self.gpus_of: dict[int, set[int]] = {}
        for i in np.nonzero(placed)[0].tolist():
            g = int(assign[i])
            self.on_gpu[g].append(i)
            self.groups_on[g].add(self.group[i])
            self.gpus_of.setdefault(self.group[i], set()).add(g)
        self.item_weight: FloatArray = transformed_weight(inst.item_load, inst.item_size, target)
        self.capacity: FloatArray = capacity(inst.gpu_memory, target)
        self.slack: FloatArray = capacity_slack(self.capacity)
        used = np.bincount(on, weights=self.item_weight[placed], minlength=inst.n_gpus)
        self.residual: FloatArray = self.capacity - used
        self._sorted: SortedList | None = None
        if sorted_residuals:
            self._sorted = SortedList((r, g) for g, r in enumerate(self.residual.tolist()))

    @classmethod
    def empty(cls, inst: Instance, target: float, *, sorted_residuals: bool = False) -> GpuState:
        """Nothing placed yet."""
        return cls(inst, np.full(inst.n_items, -1, dtype=np.int64), target, sorted_residuals=sorted_residuals)

    @classmethod
    def totals_only(cls, inst: Instance, assign: IntArray) -> GpuState:
        """A copy of `assign` for the totals and KVPR queries alone (no target: the residuals are not used)."""
        return cls(inst, assign.copy(), 0.0)

    def kvpr(self, g: int) -> float:
        """KVPR of GPU g now."""
        return kvpr(float(self.load[g]), float(self.weights[g]), float(self.inst.gpu_memory[g]))

    def kvprs(self) -> FloatArray:
        """KVPR of every GPU now. O(G)."""
        return kvpr_array(self.load, self.weights, self.inst.gpu_memory)

    def kvpr_with(self, i: int, g: int) -> float:
        """KVPR of GPU g with item i added (whether its model is there already is not checked)."""
        return kvpr(float(self.load[g] + self.inst.item_load[i]), float(self.weights[g] + self.inst.item_size[i]),
                    float(self.inst.gpu_memory[g]))

    def kvpr_without(self, i: int) -> float:
        """KVPR of placed item i's GPU with item i taken off."""
        g = int(self.assign[i])
        return kvpr(float(self.load[g] - self.inst.item_load[i]), float(self.weights[g] - self.inst.item_size[i]),
                    float(self.inst.gpu_memory[g]))

    def kvprs_with(self, i: int) -> FloatArray:
        """KVPR of every GPU with item i added; inf where its model already runs (i's own GPU included). O(G)."""
        out = kvpr_array(self.load + self.inst.item_load[i], self.weights + self.inst.item_size[i],
                         self.inst.gpu_memory)
        holders = self.gpus_of.get(self.group[i])
        if holders:
            out[list(holders)] = math.inf
        return out

    def weight(self, i: int) -> float:
        """w_i at the current T, as a Python float (the hot loops compare many of them)."""
        return self.item_load[i] + self.target * self.item_size[i]

    def put(self, i: int, g: int) -> None:
        """Place unplaced item i on GPU g (no check: callers ask `fits` or know it fits)."""
        if self._sorted is not None:
            self._sorted.remove((float(self.residual[g]), g))
        self.assign[i] = g
        self.residual[g] -= self.weight(i)
        self.load[g] += self.item_load[i]
        self.weights[g] += self.item_size[i]
        self.on_gpu[g].append(i)
        self.groups_on[g].add(self.group[i])
        self.gpus_of.setdefault(self.group[i], set()).add(g)
        if self._sorted is not None:
            self._sorted.add((float(self.residual[g]), g))

    def take(self, i: int) -> None:
        """Unplace item i from its GPU."""
        g = int(self.assign[i])
        if self._sorted is not None:
            self._sorted.remove((float(self.residual[g]), g))
        self.assign[i] = -1
        self.residual[g] += self.weight(i)
        self.load[g] -= self.item_load[i]
        self.weights[g] -= self.item_size[i]
        self.on_gpu[g].remove(i)
        self.groups_on[g].discard(self.group[i])
        self.gpus_of[self.group[i]].discard(g)
        if self._sorted is not None:
            self._sorted.add((float(self.residual[g]), g))

    def fits(self, i: int, g: int) -> bool:
        """Whether item i fits GPU g at T: its weight within g's residual (plus slack), no replica of its model."""
        return bool(self.item_weight[i] <= self.residual[g] + self.slack[g]) and self.group[i] not in self.groups_on[g]

    def gpus_with_group(self, group: int) -> list[int]:
        """GPUs holding a replica of model group `group`, ascending."""
        return sorted(self.gpus_of.get(group, ()))

    def retarget(self, target: float) -> None:
        """Move to a new T: item weights, capacities, slack and residuals are recomputed from the totals. O(n + G log G)."""
        self.target = target
        self.item_weight = transformed_weight(self.inst.item_load, self.inst.item_size, target)
        self.capacity = capacity(self.inst.gpu_memory, target)
        self.slack = capacity_slack(self.capacity)
        self.residual = self.capacity - self.load - target * self.weights
        if self._sorted is not None:
            self._sorted = SortedList((r, g) for g, r in enumerate(self.residual.tolist()))

    def best_fit(self, i: int) -> int:
        """The GPU with the least residual >= w_i not holding i's model, ties by index; -1 when none. O(log G)
        plus the GPUs skipped for holding the model. Needs `sorted_residuals=True`."""
        assert self._sorted is not None, "best_fit needs a GpuState built with sorted_residuals=True"
        w = self.weight(i)
        group = self.group[i]
        at = self._sorted.bisect_left((w - CAPACITY_SLACK_RATIO * max(w, 1.0), -1))
        while at < len(self._sorted):
            r, g = self._sorted[at]
            if group not in self.groups_on[g] and w <= r + self.slack[g]:
                return int(g)
            at += 1
        return -1

    def least_kvpr(self, i: int, kvprs_after: FloatArray) -> int:
        """Of `kvprs_after` (each GPU's KVPR were it to take item i), the least among GPUs without i's model
        and at most T (within rounding), ties by index; -1 when none. O(G)."""
        limit = self.target * (1 + CAPACITY_SLACK_RATIO)
        kv = np.where(kvprs_after <= limit, kvprs_after, np.inf)
        taken = self.gpus_of.get(self.group[i])
        if taken:
            kv[list(taken)] = np.inf
        g = int(np.argmin(kv))
        return g if np.isfinite(kv[g]) else -1
