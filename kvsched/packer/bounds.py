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
- item values (dual feasible functions, per memory class): at T give every item an integer value
              v_i = floor(p * w_i / (T * M_r)) for a reference memory M_r of the cluster and p = 1..P. Every GPU
              g holds items of total w <= T * M_g, hence of total value <= K(M_g), the most value any such set
              has (an exact knapsack: values are small integers, so it is a DP over value levels taking the
              lightest items of each level). Every item sits on some GPU, so sum v_i <= sum_g K(M_g); when it
              is not, no placement reaches T. This is the Farkas certificate of the configuration LP; it binds
              where items are too heavy to pair up on the large GPUs and too heavy for the small ones at all
              (the bundled example: 12.6% -> 0.8% above the bound). With `groups`, replicas of one model count
              at most once per GPU in K.
The last three are tests at a given T; `lower_bound` bisects for the largest T at which a test still fails.
Called by: `optimise`, `replan.strategy`, bench, tests (which check every bound against brute-force optima).
"""

from __future__ import annotations

import math
from typing import Callable

import numpy as np

from kvsched.packer.instance import FloatArray, IntArray

# Multipliers p = 1..DFF_MAX_MULTIPLIER of the item-value test. Values of p beyond ~6 rarely bind (the example
# and ADRS-50 are decided by p <= 4) and each costs one knapsack per memory class at every bisection step.
DFF_MAX_MULTIPLIER = 6
# Relative slack on capacities in the knapsacks: a set a hair over capacity still counts as fitting, so rounding
# can only make the test fail less often (the bound stays valid).
_FIT_SLACK = 1e-9


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


def _most_value(weights_sorted: list[float], values_sorted: list[int], capacity: float, value_cap: int) -> int:
    """The largest total value of a subset of items with total weight <= capacity (up to _FIT_SLACK).

    Items come sorted by weight with nondecreasing integer values, so the items of one value form a run and a
    best subset takes the lightest ones of each run. DP over value levels: lightest[v] = least weight reaching
    total value exactly v, for v <= value_cap, which must be at least the largest reachable total.
    O(levels * value_cap^2) after the sort, tiny: value_cap is about p * M_g / M_r.
    """
    limit = capacity * (1 + _FIT_SLACK)
    lightest = [0.0] + [math.inf] * value_cap
    start = 0
    n = len(values_sorted)
    while start < n:
        level = values_sorted[start]
        end = start
        while end < n and values_sorted[end] == level:
            end += 1
        if 0 < level <= value_cap:
            prefix = [0.0]
            for w in weights_sorted[start:min(end, start + value_cap // level)]:
                if prefix[-1] + w > limit:
                    break
                prefix.append(prefix[-1] + w)
            if len(prefix) > 1:
                new = lightest[:]
                for total in range(level, value_cap + 1):
                    for count in range(1, min(len(prefix) - 1, total // level) + 1):
                        cand = lightest[total - count * level] + prefix[count]
                        if cand < new[total]:
                            new[total] = cand
                lightest = new
        start = end
    return max(v for v in range(value_cap + 1) if lightest[v] <= limit)


def item_value_violated(load: FloatArray, size_gib: FloatArray, memory_gib: FloatArray, target: float, *,
                        groups: IntArray | None = None, max_multiplier: int = DFF_MAX_MULTIPLIER) -> bool:
    """True when for some reference memory M_r and p in 1..max_multiplier, the item values
    v_i = floor(p * w_i / (T * M_r)) sum to more than sum_g K(M_g) (see the module docstring): no placement
    reaches T. `groups` (replicas of one model share a group number and never a GPU) tightens K.

    Valid for any values: K is computed exactly (up to _FIT_SLACK, in the valid direction).
    O(n log n + classes^2 * P * (n + K)) with K the knapsack's tiny DP.
    """
    if target <= 0 or load.size == 0 or memory_gib.size == 0:
        return False
    classes, counts = np.unique(memory_gib, return_counts=True)
    return _values_exceed_supply(load, size_gib, classes.tolist(), counts.tolist(), target, groups, max_multiplier)


def _values_exceed_supply(load: FloatArray, size_gib: FloatArray, classes: list[float], counts: list[int],
                          target: float, groups: IntArray | None, max_multiplier: int) -> bool:
    """`item_value_violated` with the memory classes (distinct memories, ascending) and their GPU counts given."""
    weights = load + target * size_gib
    first = _group_representatives(load, size_gib, groups)
    if first is None:
        pick = np.argsort(weights, kind="stable")
    else:  # one item per group in the knapsacks: replicas of a model are identical and never share a GPU
        pick = first[np.argsort(weights[first], kind="stable")]
    knap_w = weights[pick]
    knap_w_list = knap_w.tolist()
    for ref in classes:
        ref_cap = target * ref
        for p in range(1, max_multiplier + 1):
            values = np.floor(p * weights / ref_cap)
            demand = int(values.sum())
            if demand <= 0:
                continue
            knap_v = np.floor(p * knap_w / ref_cap).astype(np.int64).tolist()
            supply = 0
            for memory, count in zip(classes, counts):
                # Total value on a GPU is <= p * (its w) / ref_cap <= p * memory / ref; +1 covers rounding.
                value_cap = int(p * memory / ref * (1 + _FIT_SLACK)) + 1
                supply += count * _most_value(knap_w_list, knap_v, target * memory, value_cap)
                if supply >= demand:
                    break
            if demand > supply:
                return True
    return False


def _group_representatives(load: FloatArray, size_gib: FloatArray, groups: IntArray | None) -> IntArray | None:
    """The first item of each group, or None without groups or when a group's items differ (then they are not
    interchangeable replicas and one item per group would understate what a GPU can hold)."""
    if groups is None or groups.size != load.size:
        return None
    _, first, inverse = np.unique(groups, return_index=True, return_inverse=True)
    if not (np.array_equal(load, load[first][inverse]) and np.array_equal(size_gib, size_gib[first][inverse])):
        return None
    return np.asarray(first, dtype=np.int64)


def lower_bound(load: FloatArray, size_gib: FloatArray, memory_gib: FloatArray, *,
                upper: float | None = None, iterations: int = 40, groups: IntArray | None = None) -> float:
    """The best of the bounds above: max(fluid, per-model, memory class), raised by bisecting the T-tests.

    `upper` (a known feasible max KVPR) caps the bisection; without it the search stops at 4x the closed-form
    bounds. The result is a T at which a test failed (or a closed-form bound), hence <= the optimum.
    `groups` (optional, item -> model) lets the item-value test use that replicas never share a GPU.
    O(iterations * (n log n + classes^2 * DFF_MAX_MULTIPLIER * n)).
    """
    base = max(fluid_bound(load, size_gib, memory_gib), per_model_bound(load, size_gib, memory_gib),
               memory_class_bound(load, size_gib, memory_gib))
    n_gpus = memory_gib.size
    if not math.isfinite(base) or base <= 0 or n_gpus == 0:
        return base
    max_memory = float(memory_gib.max())

    def packing_violated(t: float) -> bool:
        return (pigeonhole_violated(load, size_gib, n_gpus, max_memory, t)
                or l2_violated(load, size_gib, n_gpus, max_memory, t))

    classes, counts = np.unique(memory_gib, return_counts=True)
    class_list, count_list = classes.tolist(), counts.tolist()

    def values_violated(t: float) -> bool:
        return _values_exceed_supply(load, size_gib, class_list, count_list, t, groups, DFF_MAX_MULTIPLIER)

    hi = upper if upper is not None and math.isfinite(upper) else 4 * base
    # The cheap tests first; the item-value test (dearer) then only has to be asked above what they proved,
    # and usually answers "not violated" once.
    lo = _bisect_violated(packing_violated, base, hi, iterations)
    return _bisect_violated(values_violated, lo, hi, iterations)


def _bisect_violated(violated: Callable[[float], bool], lo: float, hi: float, iterations: int) -> float:
    """The largest T in [lo, hi) found by bisection at which `violated(T)` holds, or lo when it fails just above
    lo. Every T returned is lo or one at which the test held, so it stays a valid bound."""
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
