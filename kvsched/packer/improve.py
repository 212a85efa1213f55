"""`improve`: local search off the peak GPU. Moves and swaps that strictly lower the max KVPR.

Each step takes the GPU p with the largest KVPR and, for every item i on it, evaluates in one vectorised sweep
every move of i to another GPU and every swap of i with an item k elsewhere, by the exact KVPRs of the two GPUs
afterwards. It applies the candidate whose larger new KVPR is smallest, provided that is below the current peak;
otherwise p is a local optimum and the search stops. Replicas of one model never end up on one GPU.
Called by: `planner` after bisection (`_optimise`), and `replan` (the descent route of `fewest_moves`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence

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


def _ratio(load: FloatArray, free: FloatArray, zero_loads: bool) -> FloatArray:
    """Elementwise KVPR from load and free memory: inf where free <= 0; 0 with no load and free >= 0.

    `zero_loads` says whether any item has zero load; only then can a load sum be 0 and need the extra mask.
    """
    out = np.full(np.shape(load), np.inf)
    np.divide(load, free, out=out, where=free > 0)
    if zero_loads:
        out[(load <= 1e-15) & (free >= -1e-9)] = 0.0
    return out


def improve(inst: Instance, assign: IntArray, *, max_steps: int = 1_000_000,
            out_of_time: Callable[[], bool] = lambda: False, frozen: Sequence[int] = ()) -> Improved:
    """Local search from `assign` (every item placed or -1; unplaced items stay unplaced).

    Never raises the max KVPR. GPUs in `frozen` keep their replicas and take none: with the GPUs at a proven
    optimal peak frozen, the search balances the rest below it. Each step is O(|items on p| * (G + n))
    vectorised. Stops at a local optimum, after max_steps, or when out_of_time() says so (checked every step).
    """
    assign = assign.copy()
    memory = inst.gpu_memory
    load = inst.item_load
    size = inst.item_size
    group = inst.item_group
    n_gpus = inst.n_gpus
    zero_loads = bool((load <= 0).any())
    placed = assign >= 0
    gpu_load = np.bincount(assign[placed], weights=load[placed], minlength=n_gpus).astype(np.float64)
    gpu_weights = np.bincount(assign[placed], weights=size[placed], minlength=n_gpus).astype(np.float64)
    kv = kvpr_array(gpu_load, gpu_weights, memory)
    on_gpu: list[list[int]] = [[] for _ in range(n_gpus)]
    gpus_of: dict[int, set[int]] = {}
    for i in np.nonzero(placed)[0].tolist():
        on_gpu[assign[i]].append(i)
        gpus_of.setdefault(int(group[i]), set()).add(int(assign[i]))
    gpu_of_item = np.where(placed, assign, 0)
    frozen_list = list(frozen)
    movable = placed.copy()
    if frozen_list:
        movable &= ~np.isin(assign, frozen_list)
    steps = 0
    while steps < max_steps and n_gpus > 1 and not out_of_time():
        ranked = kv.copy()
        ranked[frozen_list] = -np.inf
        p = int(np.argmax(ranked))
        peak = float(kv[p])
        if peak <= 0 or not math.isfinite(peak):
            break
        best = (peak * _IMPROVE, -1, -1, -1)  # (new max of the two GPUs, item i, target GPU b, swap item k)
        free = memory - gpu_weights
        k_load = gpu_load[gpu_of_item]
        k_free = free[gpu_of_item]
        swappable = movable & (assign != p)
        for j in on_gpu[p]:
            swappable &= group != group[j]  # k's model must not already be on p (nor be i's own model)
        for i in on_gpu[p]:
            n_i = float(load[i])
            m_i = float(size[i])
            holders = list(gpus_of[int(group[i])])
            # moves of i to b
            new_p = float(_ratio(np.array([gpu_load[p] - n_i]), np.array([free[p] + m_i]), zero_loads)[0])
            new_b = _ratio(gpu_load + n_i, free - m_i, zero_loads)
            new_b[holders] = np.inf
            new_b[frozen_list] = np.inf
            b = int(np.argmin(new_b))
            cand = max(new_p, float(new_b[b]))
            if cand < best[0]:
                best = (cand, i, b, -1)
            # swaps of i with k on another GPU b = assign[k]
            worst = np.maximum(_ratio(gpu_load[p] - n_i + load, free[p] + m_i - size, zero_loads),
                               _ratio(k_load - load + n_i, k_free + size - m_i, zero_loads))
            ok = swappable
            if len(holders) > 1:
                ok = ok & ~np.isin(assign, holders)  # replicas elsewhere: rare, a handful of GPUs
            worst[~ok] = np.inf
            k = int(np.argmin(worst))
            if worst[k] < best[0]:
                best = (float(worst[k]), i, int(assign[k]), k)
        _, i, b, k = best
        if i < 0:
            break
        _move(i, p, b, assign, on_gpu, gpu_load, gpu_weights, load, size, gpus_of, group)
        if k >= 0:
            _move(k, b, p, assign, on_gpu, gpu_load, gpu_weights, load, size, gpus_of, group)
            gpu_of_item[k] = p
        gpu_of_item[i] = b
        kv[p] = kvpr_array(gpu_load[p:p + 1], gpu_weights[p:p + 1], memory[p:p + 1])[0]
        kv[b] = kvpr_array(gpu_load[b:b + 1], gpu_weights[b:b + 1], memory[b:b + 1])[0]
        steps += 1
    return Improved(assign, float(kv.max()) if n_gpus else 0.0, steps)


def _move(i: int, src: int, dst: int, assign: IntArray, on_gpu: list[list[int]], gpu_load: FloatArray,
          gpu_weights: FloatArray, load: FloatArray, size: FloatArray, gpus_of: dict[int, set[int]],
          group: IntArray) -> None:
    assign[i] = dst
    on_gpu[src].remove(i)
    on_gpu[dst].append(i)
    gpu_load[src] -= load[i]
    gpu_weights[src] -= size[i]
    gpu_load[dst] += load[i]
    gpu_weights[dst] += size[i]
    holders = gpus_of[int(group[i])]
    holders.discard(src)
    holders.add(dst)


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
        fixed = repair(inst, assign, target, out_of_time=out_of_time)
        if fixed is None:
            fixed = repair(inst, assign, target, shed_first=False, out_of_time=out_of_time)
        if fixed is not None and max_kvpr(inst, fixed) < value:
            assign, value = fixed, max_kvpr(inst, fixed)
            step *= 1.5
        else:
            step /= 2
    return Improved(assign, value, tries)
