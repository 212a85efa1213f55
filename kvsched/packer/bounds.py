"""Lower bounds on the optimal max KVPR, valid for heterogeneous GPU memory.

Each bound is a pure function of the items (load n_j, size m_j) and the GPU memories M_g, and each is a
relaxation: it ignores that replicas of one model may not share a GPU, which can only lower it. With T* the
optimal max KVPR of a placement of all items:

- fluid:      T* >= sum n / (sum M - sum m)       (sum over GPUs of N_g <= T* (M_g - W_g))
- per-model:  T* >= n_j / (max M - m_j)           (item j sits on some GPU, at best the largest)
- memory class: T* >= n(S) / (M(U) - m(S))      (S: loaded items of m >= L, confined to U: GPUs of M > L)
- pigeonhole: at T, the k*G + 1 items of largest w(T) = n + T*m put k + 1 of them on one GPU; if even the
              k + 1 smallest of those weigh more than T * max M, no placement reaches T.  k = 1 is the pair
              bound, k >= 2 the k-prefix bounds.
- L2 (Martello-Toth) on the transformed bin packing at T with every capacity relaxed to T * max M: if it
              needs more bins than there are GPUs, no placement reaches T.
The last two are tests at a given T; `lower_bound` bisects for the largest T at which a test still fails.
Called by: `solve`, bench, tests (which check every bound against brute-force optima).
"""

from __future__ import annotations

import math

import numpy as np

from kvsched.packer.instance import FloatArray


def fluid_bound(load: FloatArray, size_gib: FloatArray, memory_gib: FloatArray) -> float:
    """sum n / (sum M - sum m); inf when the weights alone take all memory while load is carried. O(n + G)."""
    total_load = float(load.sum())
    free = float(memory_gib.sum()) - float(size_gib.sum())
    if total_load <= 0:
        return 0.0
    return total_load / free if free > 0 else math.inf


def per_model_bound(load: FloatArray, size_gib: FloatArray, memory_gib: FloatArray) -> float:
    """max_j n_j / (max M - m_j): each item alone on the largest GPU. O(n)."""
    if load.size == 0 or memory_gib.size == 0:
        return 0.0
    free = float(memory_gib.max()) - size_gib
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(free > 0, load / np.where(free > 0, free, 1.0), np.where(load > 0, np.inf, 0.0))
    return float(ratio.max())


def memory_class_bound(load: FloatArray, size_gib: FloatArray, memory_gib: FloatArray) -> float:
    """max over memory levels L of the GPUs: n(S) / (M(U) - m(S)) with S the loaded items of m >= L and U
    the GPUs of M > L, the only ones that can hold them. The fluid bound of a confined subset; it binds on
    mixed clusters where large models cannot use small GPUs. O(levels * n).
    """
    best = 0.0
    for level in np.unique(memory_gib).tolist():
        confined = (size_gib >= level) & (load > 0)
        if not confined.any():
            continue
        room = float(memory_gib[memory_gib > level].sum()) - float(size_gib[confined].sum())
        best = max(best, float(load[confined].sum()) / room if room > 0 else math.inf)
    return best


def pigeonhole_violated(load: FloatArray, size_gib: FloatArray, n_gpus: int, max_memory_gib: float,
                        target: float) -> bool:
    """True when, for some k >= 1 with k*G + 1 <= n, the k*G + 1 heaviest items at T cannot avoid a GPU over T.

    O(n * K) with K = (n - 1) // G values of k (capped at 8; larger k are rarely the binding ones).
    """
    n = load.size
    if n_gpus <= 0 or n <= n_gpus or target <= 0:
        return False
    w = load + target * size_gib
    cap = target * max_memory_gib
    desc = np.sort(w)[::-1]
    for k in range(1, min((n - 1) // n_gpus, 8) + 1):
        top = desc[: k * n_gpus + 1]
        smallest = top[-(k + 1):]
        if float(smallest.sum()) > cap * (1 + 1e-12):
            return True
    return False


def l2_violated(load: FloatArray, size_gib: FloatArray, n_gpus: int, max_memory_gib: float,
                target: float) -> bool:
    """True when Martello-Toth's L2 at T, all capacities relaxed to T * max M, exceeds the number of GPUs.

    For alpha in {0} u {w_j <= C/2}: items above C - alpha need a bin each, items in (C/2, C - alpha] too, and
    items in [alpha, C/2] must fit the room the second group leaves plus new bins. O(n log n).
    """
    cap = target * max_memory_gib
    if n_gpus <= 0 or load.size == 0 or cap <= 0:
        return False
    w = np.sort(load + target * size_gib)
    prefix = np.concatenate(([0.0], np.cumsum(w)))
    half_hi = int(np.searchsorted(w, cap / 2, side="right"))  # items with w <= C/2 are w[:half_hi]
    alphas = np.concatenate(([0.0], w[:half_hi]))
    i_alpha = np.searchsorted(w, alphas, side="left")  # first item >= alpha
    i_big = np.searchsorted(w, cap - alphas, side="right")  # items > C - alpha start here
    count1 = w.size - i_big
    count2 = i_big - half_hi
    sum2 = prefix[i_big] - prefix[half_hi]
    sum3 = prefix[half_hi] - prefix[i_alpha]
    spare = np.maximum(count2, 0) * cap - sum2
    extra = np.ceil(np.maximum(sum3 - spare, 0.0) / cap - 1e-9)
    bins = count1 + np.maximum(count2, 0) + extra
    return bool(bins.max() > n_gpus)


def lower_bound(load: FloatArray, size_gib: FloatArray, memory_gib: FloatArray, *,
                upper: float | None = None, iterations: int = 40) -> float:
    """The best of the bounds above: max(fluid, per-model, memory class), raised by bisecting the T-tests.

    `upper` (a known feasible max KVPR) caps the bisection; without it the search stops at 4x the closed-form
    bounds. The result is a T at which a test failed (or a closed-form bound), hence <= the optimum.
    O(iterations * n log n).
    """
    base = max(fluid_bound(load, size_gib, memory_gib), per_model_bound(load, size_gib, memory_gib),
               memory_class_bound(load, size_gib, memory_gib))
    n_gpus = memory_gib.size
    if not math.isfinite(base) or base <= 0 or n_gpus == 0:
        return base
    max_memory = float(memory_gib.max())

    def violated(t: float) -> bool:
        return (pigeonhole_violated(load, size_gib, n_gpus, max_memory, t)
                or l2_violated(load, size_gib, n_gpus, max_memory, t))

    lo = base
    hi = upper if upper is not None and math.isfinite(upper) else 4 * base
    if hi <= lo or not violated(lo * (1 + 1e-9)):
        return lo
    for _ in range(iterations):
        mid = math.sqrt(lo * hi)
        if violated(mid):
            lo = mid
        else:
            hi = mid
        if hi / lo - 1 < 1e-7:
            break
    return lo
