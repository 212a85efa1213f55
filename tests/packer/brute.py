"""Brute-force oracle for tiny instances: every assignment of items to GPUs, the least max KVPR.

Independent of the production formulas on purpose: KVPR and the memory-fit rule are written out here from their
definitions (DESIGN.md), so a bug in `kvsched.packer.kvpr` cannot hide in both sides of a comparison. Only the
instance's arrays (loads, sizes, groups, memories) are shared.
"""

from __future__ import annotations

import itertools
import math
from typing import Sequence

import numpy as np

from kvsched.packer.instance import Instance

# Floating-point sums of sizes may exceed the memory they exactly fill by a few ulps.
_ROUNDING_GIB = 1e-9


def oracle_kvpr(load: float, weights_gib: float, memory_gib: float) -> float:
    """Load over the memory the weights leave free; 0 on a GPU without load; inf when nothing is left for KV cache."""
    free = memory_gib - weights_gib
    if free < -_ROUNDING_GIB:
        return math.inf
    if load == 0:
        return 0.0
    return load / free if free > 0 else math.inf


def totals(inst: Instance, assign: Sequence[int] | np.ndarray) -> tuple[list[float], list[float]]:
    """Per GPU, summed load and summed weights (GiB), by a plain loop."""
    load = [0.0] * inst.n_gpus
    weights = [0.0] * inst.n_gpus
    for i, g in enumerate(np.asarray(assign).tolist()):
        if g >= 0:
            load[g] += float(inst.item_load[i])
            weights[g] += float(inst.item_size[i])
    return load, weights


def oracle_max_kvpr(inst: Instance, assign: Sequence[int] | np.ndarray) -> float:
    """Largest KVPR over the GPUs (0 without GPUs)."""
    load, weights = totals(inst, assign)
    return max((oracle_kvpr(n, w, float(m)) for n, w, m in zip(load, weights, inst.gpu_memory)), default=0.0)


def valid(inst: Instance, assign: Sequence[int] | np.ndarray) -> bool:
    """No two replicas of a model on one GPU; on every GPU the weights fit its memory, leaving memory free for
    KV cache when it carries load."""
    seen: set[tuple[int, int]] = set()
    for i, g in enumerate(np.asarray(assign).tolist()):
        if g < 0:
            continue
        key = (int(inst.item_group[i]), g)
        if key in seen:
            return False
        seen.add(key)
    load, weights = totals(inst, assign)
    for n, w, m in zip(load, weights, inst.gpu_memory.tolist()):
        free = m - w
        if free < -_ROUNDING_GIB or (n > 0 and free <= 0):
            return False
    return True


def brute_force_optimum(inst: Instance) -> float:
    """min over all valid complete assignments of the max KVPR; inf when none is valid. O(G^n)."""
    best = math.inf
    for combo in itertools.product(range(inst.n_gpus), repeat=inst.n_items):
        if valid(inst, combo):
            best = min(best, oracle_max_kvpr(inst, combo))
    return best
