"""Brute-force oracle for tiny instances: every assignment of items to GPUs, the least max KVPR."""

from __future__ import annotations

import itertools
import math

import numpy as np

from kvsched.packer.evaluate import max_kvpr
from kvsched.packer.greedy import fits
from kvsched.packer.instance import Instance


def brute_force_optimum(inst: Instance) -> float:
    """min over all valid complete assignments of the max KVPR; inf when none is valid. O(G^n)."""
    best = math.inf
    for combo in itertools.product(range(inst.n_gpus), repeat=inst.n_items):
        assign = np.asarray(combo, dtype=np.int64)
        if not valid(inst, assign):
            continue
        best = min(best, max_kvpr(inst, assign))
    return best


def valid(inst: Instance, assign: np.ndarray) -> bool:
    """No GPU over memory (with room for KV cache when it carries load), no two replicas of a model together."""
    seen: set[tuple[int, int]] = set()
    load = np.zeros(inst.n_gpus)
    weights = np.zeros(inst.n_gpus)
    for i, g in enumerate(assign.tolist()):
        if g < 0:
            continue
        key = (int(inst.item_group[i]), g)
        if key in seen:
            return False
        seen.add(key)
        load[g] += inst.item_load[i]
        weights[g] += inst.item_size[i]
    for g in range(inst.n_gpus):
        if weights[g] > 0 and not fits(float(load[g]), float(weights[g]), 0.0, float(inst.gpu_memory[g])):
            return False
    return True
