"""`improve`: local search off the peak GPU. Moves and swaps that strictly lower the max KVPR.

Each step takes the GPU p with the largest KVPR and, for every item i on it, evaluates in one vectorised sweep
every move of i to another GPU and every swap of i with an item k elsewhere, by the exact KVPRs of the two GPUs
afterwards. It applies the candidate whose larger new KVPR is smallest, provided that is below the current peak;
otherwise p is a local optimum and the search stops. Replicas of one model never end up on one GPU.
`descend` lowers the max KVPR by asking `repair` for a slightly lower target, again and again.
Called by: `optimise` after bisection (and on the GPUs below a proven peak), `lns` after each kick and re-pack,
and the `replan` modules (the descent route of `fewest_moves`; local search around pinned running replicas).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import numpy.typing as npt

from kvsched.packer.deadline import NEVER, Deadline
from kvsched.packer.evaluate import max_kvpr
from kvsched.packer.instance import Instance, IntArray
from kvsched.packer.kvpr import below, kvpr_array, kvpr_of_free
from kvsched.packer.repair import repair
from kvsched.packer.state import GpuState

# `descend` asks first for a max KVPR this share below the current one; the step grows by half after a success
# and halves after a failure (values as first written, not tuned since).
DESCEND_FIRST_STEP_RATIO = 0.004
# `descend` stops when the step it would ask for falls below this share: each failed try costs a full repair,
# and this is 100x finer than the default bisection tolerance (2e-3).
DESCEND_MIN_STEP_RATIO = 2e-5


@dataclass(frozen=True, eq=False)
class Improved:
    """Result of `improve`: the new assignment, its max KVPR and how many moves/swaps were applied."""

    assign: IntArray
    max_kvpr: float
    steps: int


def improve(inst: Instance, assign: IntArray, *, max_steps: int = 1_000_000,
            deadline: Deadline = NEVER, frozen: Sequence[int] = (),
            pinned: npt.NDArray[np.bool_] | None = None) -> Improved:
    """Local search from `assign` (every item placed or -1; unplaced items stay unplaced).

    Never raises the max KVPR. GPUs in `frozen` keep their replicas and take none: with the GPUs at a proven
    optimal peak frozen, the search balances the rest below it. Items where `pinned` (a mask over items) is
    True neither move nor swap, but their GPUs take other items: a re-plan optimises the replicas that do not
    run yet around the running ones. The search stops when the peak GPU holds nothing that may move.
    Each step is O(|items on p| * (G + n))
    vectorised. Stops at a local optimum, after max_steps, or when the deadline expires (checked every step).
    """
    state = GpuState.totals_only(inst, assign)
    assign = state.assign
    memory = inst.gpu_memory
    load = inst.item_load
    size = inst.item_size
    group = inst.item_group
    n_gpus = inst.n_gpus
    zero_loads = bool((load <= 0).any())
    placed = assign >= 0
    gpu_load, gpu_weights = state.load, state.weights
    kv = kvpr_array(gpu_load, gpu_weights, memory)
    on_gpu, gpus_of = state.on_gpu, state.gpus_of
    gpu_of_item = np.where(placed, assign, 0)
    frozen_list = list(frozen)
    movable = placed.copy()
    if frozen_list:
        movable &= ~np.isin(assign, frozen_list)
    if pinned is not None:
        movable &= ~pinned
    steps = 0
    while steps < max_steps and n_gpus > 1 and not deadline.expired():
        ranked = kv.copy()
        ranked[frozen_list] = -np.inf
        p = int(np.argmax(ranked))
        peak = float(kv[p])
        if peak <= 0 or not math.isfinite(peak):
            break
        best = (below(peak), -1, -1, -1)  # (new max of the two GPUs, item i, target GPU b, swap item k)
        free = memory - gpu_weights
        k_load = gpu_load[gpu_of_item]
        k_free = free[gpu_of_item]
        k_memory = memory[gpu_of_item]
        swappable = movable & (assign != p)
        for j in on_gpu[p]:
            swappable &= group != group[j]  # k's model must not already be on p (nor be i's own model)
        for i in on_gpu[p]:
            if not movable[i]:
                continue
            n_i = float(load[i])
            m_i = float(size[i])
            holders = list(gpus_of[int(group[i])])
            # moves of i to b
            new_p = float(kvpr_of_free(np.array([gpu_load[p] - n_i]), np.array([free[p] + m_i]), memory[p],
                                       zero_loads)[0])
            new_b = kvpr_of_free(gpu_load + n_i, free - m_i, memory, zero_loads)
            new_b[holders] = np.inf
            new_b[frozen_list] = np.inf
            b = int(np.argmin(new_b))
            cand = max(new_p, float(new_b[b]))
            if cand < best[0]:
                best = (cand, i, b, -1)
            # swaps of i with k on another GPU b = assign[k]
            worst = np.maximum(kvpr_of_free(gpu_load[p] - n_i + load, free[p] + m_i - size, memory[p], zero_loads),
                               kvpr_of_free(k_load - load + n_i, k_free + size - m_i, k_memory, zero_loads))
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
        state.take(i)
        state.put(i, b)
        if k >= 0:
            state.take(k)
            state.put(k, p)
            gpu_of_item[k] = p
        gpu_of_item[i] = b
        kv[p] = kvpr_array(gpu_load[p:p + 1], gpu_weights[p:p + 1], memory[p:p + 1])[0]
        kv[b] = kvpr_array(gpu_load[b:b + 1], gpu_weights[b:b + 1], memory[b:b + 1])[0]
        steps += 1
    return Improved(assign, float(kv.max()) if n_gpus else 0.0, steps)


def descend(inst: Instance, assign: IntArray, lower: float, *,
            first_step_ratio: float = DESCEND_FIRST_STEP_RATIO, min_step_ratio: float = DESCEND_MIN_STEP_RATIO,
            deadline: Deadline = NEVER) -> Improved:
    """Lower the max KVPR by asking `repair` for the current assignment at T = max KVPR * (1 - step).

    A repair that succeeds is kept and the step grows by half; a failure halves the step. Stops below
    min_step_ratio, at the lower bound, or when the deadline expires. Never raises the max KVPR. Each try is one
    `repair` (bounded steps, O(n) each).
    """
    value = max_kvpr(inst, assign)
    if not math.isfinite(value):
        return Improved(assign, value, 0)
    step = first_step_ratio
    tries = 0
    while step >= min_step_ratio and value > lower * (1 + min_step_ratio) and not deadline.expired():
        target = max(value * (1 - step), lower)
        tries += 1
        fixed = repair(inst, assign, target, deadline=deadline)
        if fixed is None:
            fixed = repair(inst, assign, target, shed_first=False, deadline=deadline)
        if fixed is not None and max_kvpr(inst, fixed) < value:
            assign, value = fixed, max_kvpr(inst, fixed)
            step *= 1.5
        else:
            step /= 2
    return Improved(assign, value, tries)
