"""The KV-cache pressure ratio and its transformed form. Pure formulas; every other module calls these.

KVPR_g = N_g / (M_g - W_g) with N_g the summed load and W_g the summed weights (GiB) on GPU g.
KVPR_g <= T  <=>  N_g + T * W_g <= T * M_g  (for M_g > W_g), the bin-packing form used at a target T.
"""

from __future__ import annotations

import math

import numpy as np


def kvpr(load: float, weights_gib: float, memory_gib: float) -> float:
    """N / (M - W). 0 for an idle GPU whose weights fit; inf when weights leave no memory but load is carried.

    Raises nothing; a GPU with W > M gets inf (over memory is never acceptable).
    """
    free = memory_gib - weights_gib
    if free < -1e-9 * memory_gib:
        return math.inf
    if load <= 0:
        return 0.0
    if free <= 0:
        return math.inf
    return load / free


def kvpr_array(load: np.ndarray, weights_gib: np.ndarray, memory_gib: np.ndarray) -> np.ndarray:
    """Elementwise `kvpr` over GPUs: N / (M - W), 0 where N == 0 and W <= M, inf where weights leave no room."""
    free = memory_gib - weights_gib
    with np.errstate(divide="ignore", invalid="ignore"):
        out = np.where(free > 0, load / np.where(free > 0, free, 1.0), np.inf)
    out = np.where((load <= 0) & (free >= -1e-9 * memory_gib), 0.0, out)
    return np.asarray(out, dtype=np.float64)
