"""The formulas of the packer, in one place: KVPR, its transformed form, the memory-fit rule and the tolerances.

KVPR_g = N_g / (M_g - W_g) with N_g the summed load and W_g the summed weights (GiB) on GPU g.
KVPR_g <= T  <=>  N_g + T * W_g <= T * M_g  (for M_g > W_g), the bin-packing form used at a target T: a GPU is a
bin of capacity T * M_g (`capacity`) and a replica j weighs n_j + T * m_j (`transformed_weight`).
A GPU that carries load needs memory left for KV cache (M_g - W_g > 0); an idle one may be filled exactly.

Every comparison that floating point can tip goes through one of the tolerances below, so that two modules never
disagree about whether a GPU is over memory, a bin over capacity or a plan better than another.
Called by: every packer module that computes a KVPR, a fit or a comparison of plans.
"""

from __future__ import annotations

import math
from typing import overload

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float64]

# Weights may exceed memory by this share of the GPU's memory before it counts as over memory: summing sizes in
# another order moves the total by a few ulps, and a GPU filled exactly must not flip to "over".
MEMORY_TOLERANCE_RATIO = 1e-9
# A bin takes an item whose transformed weight exceeds its residual by at most this share of its capacity, plus
# an absolute floor for T close to 0: residuals are running sums of n + T * m and drift by a few ulps.
CAPACITY_SLACK_RATIO = 1e-12
CAPACITY_SLACK_FLOOR = 1e-15
# A max KVPR counts as lower than another only below it by more than this ratio (a move that gains less is
# floating-point noise, and accepting it could cycle); and one within it of a lower bound counts as at the bound.
IMPROVEMENT_RATIO = 1e-9
# A summed load at or below this is zero: a running sum from which a replica's load was subtracted keeps a few
# ulps, and an idle GPU filled exactly must not read as infinitely pressed because of them.
ZERO_LOAD = 1e-15


def kvpr(load: float, weights_gib: float, memory_gib: float) -> float:
    """N / (M - W). 0 for an idle GPU whose weights fit; inf when weights leave no memory but load is carried.

    Raises nothing; a GPU with W > M (beyond MEMORY_TOLERANCE_RATIO) gets inf (over memory is never acceptable).
    """
    free = memory_gib - weights_gib
    if free < -MEMORY_TOLERANCE_RATIO * memory_gib:
        return math.inf
    if load <= ZERO_LOAD:
        return 0.0
    if free <= 0:
        return math.inf
    return load / free


def kvpr_array(load: np.ndarray, weights_gib: np.ndarray, memory_gib: np.ndarray) -> FloatArray:
    """Elementwise `kvpr` over GPUs: N / (M - W), 0 where N == 0 and W <= M, inf where weights leave no room."""
    free = memory_gib - weights_gib
    with np.errstate(divide="ignore", invalid="ignore"):
        out = np.where(free > 0, load / np.where(free > 0, free, 1.0), np.inf)
    out = np.where((load <= ZERO_LOAD) & (free >= -MEMORY_TOLERANCE_RATIO * memory_gib), 0.0, out)
    return np.asarray(out, dtype=np.float64)


def kvpr_of_free(load: FloatArray, free_gib: FloatArray, memory_gib: FloatArray | float,
                 zero_loads: bool = True) -> FloatArray:
    """`kvpr_array` from load and free memory F = M - W, for callers that keep F (the local search's sweeps).

    `zero_loads=False` promises that no load in `load` is 0 (no item has zero load), which skips a mask.
    """
    out = np.full(np.shape(load), np.inf)
    np.divide(load, free_gib, out=out, where=free_gib > 0)
    if zero_loads:
        out[(load <= ZERO_LOAD) & (free_gib >= -MEMORY_TOLERANCE_RATIO * np.asarray(memory_gib))] = 0.0
    return out


def fits(load: float, size_gib: float, weights_gib: float, memory_gib: float, gpu_load: float = 0.0) -> bool:
    """The memory-fit rule: an item of `size_gib` fits a GPU holding `weights_gib` when the weights stay within
    memory, with memory left over for KV cache once the GPU carries any load (its own or the item's)."""
    free_after = memory_gib - weights_gib - size_gib
    return free_after > 0 if load + gpu_load > ZERO_LOAD else free_after >= 0


@overload
def transformed_weight(load: float, size_gib: float, target: float) -> float: ...
@overload
def transformed_weight(load: FloatArray, size_gib: FloatArray, target: float) -> FloatArray: ...
def transformed_weight(load: float | FloatArray, size_gib: float | FloatArray, target: float) -> float | FloatArray:
    """w_j(T) = n_j + T * m_j: the item's weight in the bin packing at target T (elementwise on arrays)."""
    return load + target * size_gib


@overload
def capacity(memory_gib: float, target: float) -> float: ...
@overload
def capacity(memory_gib: FloatArray, target: float) -> FloatArray: ...
def capacity(memory_gib: float | FloatArray, target: float) -> float | FloatArray:
    """C_g(T) = T * M_g: the GPU's bin capacity at target T (elementwise on arrays)."""
    return target * memory_gib


@overload
def capacity_slack(capacity_value: float) -> float: ...
@overload
def capacity_slack(capacity_value: FloatArray) -> FloatArray: ...
def capacity_slack(capacity_value: float | FloatArray) -> float | FloatArray:
    """How far a bin of this capacity may be overfilled by rounding (see CAPACITY_SLACK_RATIO); elementwise."""
    return CAPACITY_SLACK_RATIO * capacity_value + CAPACITY_SLACK_FLOOR


def improves(value: float, best: float) -> bool:
    """Whether a max KVPR of `value` is strictly better than `best` (by more than IMPROVEMENT_RATIO)."""
    return value < best * (1 - IMPROVEMENT_RATIO)


def below(value: float) -> float:
    """The largest target that counts as an improvement on `value`: asking for it forces a strictly better plan."""
    return value * (1 - IMPROVEMENT_RATIO)


def reaches(value: float, bound: float) -> bool:
    """Whether a max KVPR of `value` meets the lower bound `bound` (is at it up to IMPROVEMENT_RATIO)."""
    return value <= bound * (1 + IMPROVEMENT_RATIO)


def within(value: float, target: float) -> bool:
    """Whether a max KVPR of `value` is at most `target` up to float noise (`reaches`); any value is within an
    infinite target."""
    return reaches(value, target) if math.isfinite(target) else True
