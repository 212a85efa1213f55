"""The baseline greedy of the Prism paper: heaviest load first, onto the GPU with the lowest current KVPR that fits.

It is what kvsched is measured against (bench/) and the upper bound the bisection starts from.
Called by: `optimise`, bench, tests.
"""

from __future__ import annotations

import heapq

import numpy as np

from kvsched.packer.instance import Instance, IntArray
from kvsched.packer.kvpr import fits, kvpr


def greedy(inst: Instance) -> IntArray:
    """Assignment item -> GPU index (-1 when no GPU has room). Items by load descending, ties by input order.

    GPUs are kept in a heap keyed by (current KVPR, GPU index); GPUs that do not fit the item are popped and
    pushed back after. Replicas of one model never share a GPU. O(items * GPUs * log GPUs) worst case,
    O(items * log GPUs) when the lowest-KVPR GPU usually fits.
    """
    assign = np.full(inst.n_items, -1, dtype=np.int64)
    load = [0.0] * inst.n_gpus
    weights = [0.0] * inst.n_gpus
    memory = [float(x) for x in inst.gpu_memory]
    groups_on: list[set[int]] = [set() for _ in range(inst.n_gpus)]
    heap = [(0.0, g) for g in range(inst.n_gpus)]
    heapq.heapify(heap)
    order = sorted(range(inst.n_items), key=lambda i: (-inst.item_load[i], i))
    for i in order:
        n_i = float(inst.item_load[i])
        m_i = float(inst.item_size[i])
        grp = int(inst.item_group[i])
        skipped = []
        while heap:
            entry = heapq.heappop(heap)
            g = entry[1]
            if grp not in groups_on[g] and fits(n_i, m_i, weights[g], memory[g], load[g]):
                assign[i] = g
                load[g] += n_i
                weights[g] += m_i
                groups_on[g].add(grp)
                heapq.heappush(heap, (kvpr(load[g], weights[g], memory[g]), g))
                break
            skipped.append(entry)
        for entry in skipped:
            heapq.heappush(heap, entry)
    return assign
