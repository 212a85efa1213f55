"""Evaluate an assignment (item -> GPU index, -1 for unplaced): per-GPU load, weights, KVPR and memory fractions.

Called by: `optimise`, `search`, `exact`, `improve`, `lns` and the `replan` modules (to judge candidates),
`result` (to report a plan), bench. The tests recompute these numbers on their own (tests/packer/brute.py).
"""

from __future__ import annotations

import numpy as np

from kvsched.packer.instance import FloatArray, Instance, IntArray
from kvsched.packer.kvpr import kvpr_array


def gpu_totals(inst: Instance, assign: IntArray) -> tuple[FloatArray, FloatArray]:
    """(N_g, W_g): summed load and summed weights (GiB) per GPU. Unplaced items (-1) count nowhere. O(items)."""
    placed = assign >= 0
    n = np.bincount(assign[placed], weights=inst.item_load[placed], minlength=inst.n_gpus)
    w = np.bincount(assign[placed], weights=inst.item_size[placed], minlength=inst.n_gpus)
    return n.astype(np.float64), w.astype(np.float64)


def gpu_kvprs(inst: Instance, assign: IntArray) -> FloatArray:
    """KVPR of every GPU under `assign`."""
    n, w = gpu_totals(inst, assign)
    return kvpr_array(n, w, inst.gpu_memory)


def max_kvpr(inst: Instance, assign: IntArray) -> float:
    """Largest KVPR over GPUs (0 with no GPUs)."""
    if inst.n_gpus == 0:
        return 0.0
    return float(gpu_kvprs(inst, assign).max())


def memory_fractions(inst: Instance, assign: IntArray) -> FloatArray:
    """Per item, the share of its GPU's memory its serving engine may use (`--gpu-memory-utilization`).

    f_j = (m_j + F_g * n_j / N_g) / M_g with F_g = M_g - W_g the memory left after weights: each replica gets its
    weights plus a share of the free memory proportional to its load (by weight when the GPU carries no load).
    On every GPU the fractions sum to W_g/M_g + F_g/M_g = 1. Unplaced items get 0. O(items).
    """
    n, w = gpu_totals(inst, assign)
    out = np.zeros(inst.n_items, dtype=np.float64)
    placed = np.nonzero(assign >= 0)[0]
    if placed.size == 0:
        return out
    g = assign[placed]
    free = np.maximum(inst.gpu_memory[g] - w[g], 0.0)
    share = np.where(n[g] > 0, inst.item_load[placed] / np.where(n[g] > 0, n[g], 1.0),
                     inst.item_size[placed] / w[g])
    out[placed] = (inst.item_size[placed] + free * share) / inst.gpu_memory[g]
    return out
