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


def kv_memory_left(inst: Instance, assign: IntArray) -> FloatArray:
    """F_g = M_g - R_g - sum over its replicas of (m + o + c): per GPU, the memory left for KV cache (GiB, never
    below 0). The denominator of KVPR. O(items)."""
    _, w = gpu_totals(inst, assign)
    return np.maximum(inst.gpu_memory - w, 0.0)


def memory_shares(inst: Instance, assign: IntArray) -> tuple[FloatArray, FloatArray]:
    """Per item, (f, kv): the share of its GPU's memory its serving engine may use (`--gpu-memory-utilization`)
    and the GiB of KV cache that share leaves it.

    kv_j = F_g * n_j / N_g (by weights m_j / sum m when the GPU carries no load), with F_g = `kv_memory_left`;
    f_j = (m_j + o_j + kv_j) / M_g: its weights, its engine's overhead and its part of the KV memory left, over
    the GPU's memory. So on every GPU  sum_j f_j * M_g + k * c + R_g = M_g  (k replicas): the fractions leave
    exactly the reserve and one CUDA context per replica outside them, and every engine's start-up check
    (free >= f * total, with the engines already running and its own context) passes in any start order when
    R_g covers the driver's reservation plus the gap between M_g and the total the device reports
    (docs/packer.md, "Memory on a real GPU"). With no headroom the fractions sum to 1, as before.
    f_j * M_g - m_j = o_j + kv_j >= o_j. Unplaced items get (0, 0). O(items).
    """
    n, _ = gpu_totals(inst, assign)
    left = kv_memory_left(inst, assign)
    weights = inst.weights()
    fractions = np.zeros(inst.n_items, dtype=np.float64)
    kv = np.zeros(inst.n_items, dtype=np.float64)
    placed = np.nonzero(assign >= 0)[0]
    if placed.size == 0:
        return fractions, kv
    g = assign[placed]
    raw = np.bincount(assign[placed], weights=weights[placed], minlength=inst.n_gpus)
    share = np.where(n[g] > 0, inst.item_load[placed] / np.where(n[g] > 0, n[g], 1.0),
                     weights[placed] / raw[g])
    kv[placed] = left[g] * share
    fractions[placed] = (weights[placed] + inst.overheads()[placed] + kv[placed]) / inst.total_memory()[g]
    return fractions, kv


def memory_fractions(inst: Instance, assign: IntArray) -> FloatArray:
    """The fractions of `memory_shares` alone."""
    return memory_shares(inst, assign)[0]
