"""Memory shares: which running pods must restart so that every GPU keeps its promise of memory.

A pod's share of its GPU's memory (`kvsched.io/gpu-memory-fraction`, its engine's `--gpu-memory-utilization`) is
fixed when it binds. A re-plan that keeps the pod where it is but changes who shares its GPU, or the loads, plans a
new share for it without restarting it. The extender admits a replica onto a GPU only when the shares the pods
there run with plus the replica's planned share add up to at most the GPU's bound, 1 - (reserve + the engines'
CUDA contexts) / memory (kvsched.controller.slots, headroom), so such drift can leave a planned replica waiting. A running pod is restarted (evicted, as a migration step; its replacement binds
with the planned share) only when:
- **blocked**: a planned replica waits for its GPU and the pods staying there hold more than the planned shares
  leave; those with the largest excess share restart first, as few as free the memory; or
- **starved**: its share is below the planned one and so small that its own KV-cache pressure (replica load / the
  KV memory its share leaves) exceeds the plan's worst KVPR by more than the stability threshold.
Otherwise a pod keeps the share it started with, so a rate change does not restart every pod next to the model.
The packer's re-plan sees each pod's share too (kvsched.packer.shares) and lists the restarts its plan needs as
`resize` steps (`Plan.steps`): `plan_resizes` adds those to the ones above, so a pod restarts when either says so
(the rules above stay the guard: a share that does not fit is always restarted).
Pure; called by kvsched.controller.decide.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass
from typing import Mapping, Sequence

from kvsched.api.names import SHARE_EPSILON
from kvsched.api.records import Eviction
from kvsched.controller.headroom import share_bound
from kvsched.controller.inventory import running_share
from kvsched.controller.migrations import RunningPod
from kvsched.controller.slots import occupied_share
from kvsched.packer import GpuId, MigrationStep


@dataclass(frozen=True)
class Memory:
    """What the share rule needs to know of models and GPUs, GiB: per model one replica's weights plus engine
    overhead (`inside`, inside its share) and CUDA context (`context`, outside it); per GPU its memory and
    reserve. A model or GPU missing counts 0."""

    inside: Mapping[str, float]
    context: Mapping[str, float]
    memory: Mapping[GpuId, float]
    reserve: Mapping[GpuId, float]


def held_share(pod: RunningPod, planned: Mapping[tuple[str, GpuId], float], mem: Memory) -> float:
    """The share of its GPU `pod` occupies (`slots.occupied_share`, the slot rule's: what it runs with, never less
    than (weights + overhead) / memory), counting a pod without a readable share annotation at its planned share.
    The slot rule counts such a pod by its least share alone, so it may admit where this would still restart,
    never the reverse."""
    share = running_share(pod.pod)
    if share is None:
        share = planned.get((pod.model, pod.gpu), 0.0)
    return occupied_share(share, mem.inside.get(pod.model, 0.0), mem.memory.get(pod.gpu, 0.0))


def resize_steps(planned: Mapping[tuple[str, GpuId], float], running: Sequence[RunningPod], mem: Memory,
                 replica_load: Mapping[str, float], max_kvpr: float, tolerance: float) -> list[Eviction]:
    """Restarts in place (source == target, `resize`), blocked ones first, by GPU (see the module docstring).

    `planned`: (model, GPU) -> planned share (as written in status); `mem`: sizes, contexts and GPUs (`Memory`);
    the bound of a GPU counts the contexts of its planned replicas. `replica_load`: per model, load of one
    replica (requests/s^2); `max_kvpr`: the plan's worst GPU KVPR; `tolerance`: the stability threshold ratio.
    Pods that are terminating or that the plan moves off their GPU are never resized. O(pods + slots).
    """
    staying: dict[GpuId, list[RunningPod]] = defaultdict(list)
    present: set[tuple[str, GpuId]] = set()
    for r in running:
        if not r.pod.deleting and (r.model, r.gpu) in planned:
            staying[r.gpu].append(r)
            present.add((r.model, r.gpu))
    waiting_need: dict[GpuId, float] = defaultdict(float)
    contexts: dict[GpuId, float] = defaultdict(float)  # of the engines staying and waiting
    for (model, gpu), share in planned.items():
        contexts[gpu] += mem.context.get(model, 0.0)
        if (model, gpu) not in present:
            waiting_need[gpu] += share
    steps: list[Eviction] = []
    chosen: set[str] = set()
    for gpu in sorted(waiting_need):
        pods = staying.get(gpu, [])
        bound = share_bound(mem.memory.get(gpu, 0.0), mem.reserve.get(gpu, 0.0), contexts[gpu])
        used = sum(held_share(r, planned, mem) for r in pods)
        over = sorted(((held_share(r, planned, mem) - planned[(r.model, r.gpu)], r) for r in pods),
                      key=lambda e: (-e[0], e[1].pod.name))
        for excess, r in over:
            if used + waiting_need[gpu] <= bound + SHARE_EPSILON or excess <= SHARE_EPSILON:
                break
            steps.append(Eviction(r.model, r.pod, gpu, gpu, stop_first=True, resize=True))
            chosen.add(r.pod.uid or r.pod.name)
            used -= excess
    worst_allowed = max_kvpr * (1.0 + tolerance)
    for gpu in sorted(staying):
        memory = mem.memory.get(gpu, 0.0)
        for r in sorted(staying[gpu], key=lambda r: r.pod.name):
            share = held_share(r, planned, mem)
            if (r.pod.uid or r.pod.name) in chosen or share >= planned[(r.model, r.gpu)] - SHARE_EPSILON:
                continue
            kv_gib = share * memory - mem.inside.get(r.model, 0.0)
            load = replica_load.get(r.model, 0.0)
            pressure = load / kv_gib if kv_gib > 0 else (math.inf if load > 0 else 0.0)
            if pressure > worst_allowed + SHARE_EPSILON:
                steps.append(Eviction(r.model, r.pod, gpu, gpu, stop_first=True, resize=True))
    return steps


def plan_resizes(order: Sequence[MigrationStep], running: Sequence[RunningPod], chosen: Sequence[Eviction],
                 planned: Mapping[tuple[str, GpuId], float]) -> list[Eviction]:
    """The packer's `resize` steps (`Plan.steps` with source == target) as restarts in place of the live pods they
    name by (model, GPU), in the packer's order, except pods already in `chosen` (`resize_steps`') and pods that
    already run with their planned share (`planned`, as written in status: restarting them would change nothing,
    and a re-plan could ask again). O(steps + pods).
    """
    taken = {(e.model, e.source) for e in chosen if e.resize}
    pods = {(r.model, r.gpu): r for r in running if not r.pod.deleting}
    out: list[Eviction] = []
    for step in order:
        if not step.is_resize or step.source is None or (step.model, step.source) in taken:
            continue
        r = pods.get((step.model, step.source))
        share = running_share(r.pod) if r is not None else None
        same = share is not None and abs(share - planned.get((step.model, step.source), -1.0)) <= SHARE_EPSILON
        if r is not None and not same:
            taken.add((step.model, step.source))
            out.append(Eviction(r.model, r.pod, r.gpu, r.gpu, stop_first=True, resize=True))
    return out
