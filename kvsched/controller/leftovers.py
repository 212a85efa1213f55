"""Leftovers: running replicas the plan leaves unplaced, and which of them must stop for the plan to fit.

A re-plan may leave a running replica unplaced (its model has more replicas than the plan places) and give the
memory it holds to other models' replicas. The packer orders its steps as if such replicas stop before the first
one (kvsched.packer.steps), but nothing moves them: their model has no free planned slot, so no move is made
(kvsched.controller.migrations), and they are not planned where they run, so no share restart either
(kvsched.controller.shares). Left alone, such a pod keeps its GPU, and the replicas planned there (restarted
with larger shares, or new) wait for it for ever.

A leftover stops (is evicted, its replacement stays pending: its model has no slot for it) only when the GPU's
planned replicas do not fit beside it: their footprints plus the leftovers' within the GPU's memory less its
reserve, and their planned shares plus the shares the leftovers hold within the GPU's bound (the slot rule's
test, kvsched.controller.headroom). Those holding the largest share stop first, as few as make the plan fit. A
leftover whose GPU has room keeps serving (a cordoned node's replicas with nowhere to go, say). A model with more
live pods than replicas (a scale-down its ReplicaSet is carrying out) and the old pods of make-before-break moves
are left to their controllers.
Pure; called by kvsched.controller.decide.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Collection, Mapping, Sequence

from kvsched.api.names import SHARE_EPSILON
from kvsched.api.objects import ObjectKey
from kvsched.api.records import Eviction
from kvsched.controller.headroom import share_bound
from kvsched.controller.migrations import RunningPod
from kvsched.controller.shares import Memory, held_share
from kvsched.packer import GpuId

_SLACK_GIB = 1e-9


def leftovers(planned: Mapping[str, Sequence[GpuId]], running: Sequence[RunningPod],
              replicas: Mapping[str, int], moved: Collection[ObjectKey],
              leaving: Collection[ObjectKey] = ()) -> list[RunningPod]:
    """Live pods running off their model's planned GPUs (`planned`, packer name -> GPUs) that no step in `moved`
    (pod keys) moves, of models with at most `replicas` live pods, old pods of make-before-break moves
    (`leaving`) excluded. O(pods)."""
    live: dict[str, int] = defaultdict(int)
    for r in running:
        if not r.pod.deleting:
            live[r.model] += 1
    return [r for r in running
            if not r.pod.deleting and r.pod.key not in moved and r.pod.key not in leaving
            and r.gpu not in set(planned.get(r.model, ())) and live[r.model] <= replicas.get(r.model, 0)]


def stop_steps(shares: Mapping[tuple[str, GpuId], float], left: Sequence[RunningPod], mem: Memory,
               footprint: Mapping[str, float], usable: Mapping[GpuId, float]) -> list[Eviction]:
    """Evictions of the leftovers `left` (`leftovers`) that must stop so that each GPU's planned replicas fit
    beside the rest (see the module docstring), by GPU, largest held share first. `shares`: (model, GPU) ->
    planned share (as written in status); `footprint`: per model one replica's GiB on its GPU (weights, overhead,
    context); `usable`: per GPU its memory less its reserve, GiB. Each step has source == target (the pod's GPU)
    and `stop_first`. O(pods log pods + slots)."""
    on: dict[GpuId, list[RunningPod]] = defaultdict(list)
    for r in left:
        on[r.gpu].append(r)
    plan_gib: dict[GpuId, float] = defaultdict(float)
    plan_share: dict[GpuId, float] = defaultdict(float)
    contexts: dict[GpuId, float] = defaultdict(float)
    for (model, gpu), share in shares.items():
        if gpu in on:
            plan_gib[gpu] += footprint.get(model, 0.0)
            plan_share[gpu] += share
            contexts[gpu] += mem.context.get(model, 0.0)
    steps: list[Eviction] = []
    for gpu in sorted(on):
        if gpu not in plan_share:  # nothing planned here: the leftovers keep serving
            continue
        pods = sorted(on[gpu], key=lambda r: (-held_share(r, shares, mem), r.pod.name))
        gib = plan_gib[gpu] + sum(footprint.get(r.model, 0.0) for r in pods)
        used = plan_share[gpu] + sum(held_share(r, shares, mem) for r in pods)
        context = contexts[gpu] + sum(mem.context.get(r.model, 0.0) for r in pods)
        for r in pods:
            bound = share_bound(mem.memory.get(gpu, 0.0), mem.reserve.get(gpu, 0.0), context)
            if gib <= usable.get(gpu, 0.0) + _SLACK_GIB and used <= bound + SHARE_EPSILON:
                break
            steps.append(Eviction(r.model, r.pod, gpu, gpu, stop_first=True, stop=True))
            gib -= footprint.get(r.model, 0.0)
            used -= held_share(r, shares, mem)
            context -= mem.context.get(r.model, 0.0)
    return steps
