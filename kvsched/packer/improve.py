"""`improve`: local search off the peak GPU. Moves and swaps that strictly lower the max KVPR.

Each step takes the GPU p with the largest KVPR and, for every item i on it, evaluates in one vectorised sweep
every move of i to another GPU and every swap of i with an item k elsewhere, by the exact KVPRs of the two GPUs
afterwards. It applies the candidate whose larger new KVPR is smallest, provided that is below the current peak;
otherwise p is a local optimum and the search stops. Replicas of one model never end up on one GPU.
Called by: `search` after bisection, and by the stability step.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np

from kvsched.packer.evaluate import max_kvpr
from kvsched.packer.instance import FloatArray, Instance, IntArray
from kvsched.packer.kvpr import kvpr_array
from kvsched.packer.repair import repair

_IMPROVE = 1 - 1e-9


@dataclass(frozen=True, eq=False)
class Improved:
    """Result of `improve`: the new assignment, its max KVPR and how many moves/swaps were applied."""

    assign: IntArray
    max_kvpr: float
    steps: int


def _ratio(load: FloatArray, free: FloatArray) -> FloatArray:
    """Elementwise KVPR from load and free memory: inf where free <= 0 and load > 0, 0 with no load."""
    with np.errstate(divide="ignore", invalid="ignore"):
        out = np.where(free > 0, load / np.where(free > 0, free, 1.0), np.inf)
    return np.where((load <= 1e-15) & (free >= -1e-9), 0.0, out)


def improve(inst: Instance, assign: IntArray, *, max_steps: int = 1_000_000,
            out_of_time: Callable[[], bool] = lambda: False) -> Improved:
    """Local search from `assign` (every item placed or -1; unplaced items stay unplaced).

    Never raises the max KVPR. Each step is O(|items on p| * (G + n)) vectorised. Stops at a local optimum,
    after max_steps, or when out_of_time() says so (checked every step).
    """
    assign = assign.copy()
    memory = inst.gpu_memory
    load = inst.item_load
    size = inst.item_size
    group = inst.item_group
    n_gpus = inst.n_gpus
    placed = assign >= 0
    gpu_load = np.bincount(assign[placed], weights=load[placed], minlength=n_gpus).astype(np.float64)
    gpu_weights = np.bincount(assign[placed], weights=size[placed], minlength=n_gpus).astype(np.float64)
    kv = kvpr_array(gpu_load, gpu_weights, memory)
    on_gpu: list[list[int]] = [[] for _ in range(n_gpus)]
    for i in np.nonzero(placed)[0].tolist():
        on_gpu[assign[i]].append(i)
    steps = 0
    while steps < max_steps and n_gpus > 1 and not out_of_time():
        p = int(np.argmax(kv))
        peak = float(kv[p])
        if peak <= 0 or not math.isfinite(peak):
            break
        best = (peak * _IMPROVE, -1, -1, -1)  # (new max of the two GPUs, item i, target GPU b, swap item k)
        free = memory - gpu_weights
        groups_p = {int(group[j]) for j in on_gpu[p]}
        others = np.nonzero((assign >= 0) & (assign != p))[0]
        k_group_on_p = np.isin(group[others], list(groups_p))
        k_gpu = assign[others]
        for i in on_gpu[p]:
            n_i = float(load[i])
            m_i = float(size[i])
            g_i = int(group[i])
            holds_i = np.zeros(n_gpus, dtype=bool)
            holds_i[[assign[j] for j in np.nonzero(group == g_i)[0].tolist() if assign[j] >= 0]] = True
            # moves of i to b
            new_p = _ratio(np.array([gpu_load[p] - n_i]), np.array([free[p] + m_i]))[0]
            new_b = _ratio(gpu_load + n_i, free - m_i)
            new_b[holds_i] = np.inf
            new_b[p] = np.inf
            b = int(np.argmin(new_b))
            cand = max(new_p, float(new_b[b]))
            if cand < best[0]:
                best = (cand, i, b, -1)
            # swaps of i with k on another GPU
            if others.size:
                n_k = load[others]
                m_k = size[others]
                sw_p = _ratio(gpu_load[p] - n_i + n_k, free[p] + m_i - m_k)
                sw_b = _ratio(gpu_load[k_gpu] - n_k + n_i, free[k_gpu] + m_k - m_i)
                worst = np.maximum(sw_p, sw_b)
                worst[k_group_on_p | holds_i[k_gpu]] = np.inf
                j = int(np.argmin(worst))
                if worst[j] < best[0]:
                    best = (float(worst[j]), i, int(k_gpu[j]), int(others[j]))
        _, i, b, k = best
        if i < 0:
            break
        _move(i, p, b, assign, on_gpu, gpu_load, gpu_weights, load, size)
        if k >= 0:
            _move(k, b, p, assign, on_gpu, gpu_load, gpu_weights, load, size)
        kv[p] = kvpr_array(gpu_load[p:p + 1], gpu_weights[p:p + 1], memory[p:p + 1])[0]
        kv[b] = kvpr_array(gpu_load[b:b + 1], gpu_weights[b:b + 1], memory[b:b + 1])[0]
        steps += 1
    return Improved(assign, float(kv.max()) if n_gpus else 0.0, steps)


def _move(i: int, src: int, dst: int, assign: IntArray, on_gpu: list[list[int]], gpu_load: FloatArray,
          gpu_weights: FloatArray, load: FloatArray, size: FloatArray) -> None:
    assign[i] = dst
    on_gpu[src].remove(i)
    on_gpu[dst].append(i)
    gpu_load[src] -= load[i]
    gpu_weights[src] -= size[i]
    gpu_load[dst] += load[i]
    gpu_weights[dst] += size[i]


def descend(inst: Instance, assign: IntArray, lower: float, *, first_step_ratio: float = 0.004,
            min_step_ratio: float = 2e-5, out_of_time: Callable[[], bool] = lambda: False) -> Improved:
    """Lower the max KVPR by asking `repair` for the current assignment at T = max KVPR * (1 - step).

    A repair that succeeds is kept and the step grows by half; a failure halves the step. Stops below
    min_step_ratio, at the lower bound, or when out_of_time(). Never raises the max KVPR. Each try is one
    `repair` (bounded steps, O(n) each).
    """
    value = max_kvpr(inst, assign)
    if not math.isfinite(value):
        return Improved(assign, value, 0)
    step = first_step_ratio
    tries = 0
    while step >= min_step_ratio and value > lower * (1 + min_step_ratio) and not out_of_time():
        target = max(value * (1 - step), lower)
        tries += 1
        fixed = repair(inst, assign, target)
        if fixed is not None and max_kvpr(inst, fixed) < value:
            assign, value = fixed, max_kvpr(inst, fixed)
            step *= 1.5
        else:
            step /= 2
    return Improved(assign, value, tries)
