"""Restarts a re-plan costs beyond its moves: pods that stay on their GPU but that the controller restarts so that
they run with their new memory share (kvsched/controller/shares.py, docs/controller.md "Memory shares").

A pod's share (`--gpu-memory-utilization`) is fixed when it starts. After a re-plan, the pods that stay run with
the shares of the plan before; the moved and new replicas start with the new plan's shares. The controller's own
rule (`resize_steps`) is applied until it asks for nothing more, each restarted pod then running with its planned
share. Counted: the distinct pods restarted that way (each restarts at most once).
Called by: bench/churn.py.
"""

from __future__ import annotations

from typing import Sequence

from kvsched.api.names import MEMORY_FRACTION_ANNOTATION, SHARE_EPSILON
from kvsched.api.objects import PodObj
from kvsched.controller.headroom import plan_shares, share_bound
from kvsched.controller.migrations import RunningPod
from kvsched.controller.shares import Memory, held_share, resize_steps
from kvsched.packer import Gpu, GpuId, Model, Plan


def share_restarts(models: Sequence[Model], gpus: Sequence[Gpu], before: Plan, after: Plan,
                   threshold: float) -> int:
    """Pods on a GPU in both `before` and `after` (by model) that the controller restarts for their share.

    Simulated in waves, as the controller and the extender act: first the plan's own `resize` steps
    (`after.steps`, which the controller carries out: kvsched.controller.shares.plan_resizes), then the restarts
    `resize_steps` asks for; then every waiting replica (new, moved, or restarted) whose planned share fits what
    the pods on its GPU hold binds with it; again until neither happens."""
    return len(restarted_pods(models, gpus, before, after, threshold))


def restarted_pods(models: Sequence[Model], gpus: Sequence[Gpu], before: Plan, after: Plan,
                   threshold: float) -> set[tuple[str, GpuId]]:
    """The (model, GPU) of the pods `share_restarts` counts."""
    old = plan_shares(before, models)  # the shares the controller writes (kvsched.controller.headroom)
    planned = plan_shares(after, models)
    running = {key: share for key, share in old.items() if key in planned}
    waiting = sorted(set(planned) - set(running))
    mem = Memory(inside={m.name: m.size_gib + m.overhead_gib for m in models},
                 context={m.name: m.context_gib for m in models},
                 memory={g.id: g.memory_gib for g in gpus}, reserve={g.id: g.reserve_gib for g in gpus})
    load = {m.name: m.replica_load for m in models}
    # What the shares on a GPU may sum to with its planned replicas' contexts (the slot rule's bound).
    limit: dict[GpuId, float] = {}
    for g in gpus:
        contexts = sum(mem.context.get(model, 0.0) for (model, gpu) in planned if gpu == g.id)
        limit[g.id] = share_bound(g.memory_gib, g.reserve_gib, contexts)
    restarted: set[tuple[str, GpuId]] = set()
    for step in after.steps:  # the plan's restarts in place come first, as the controller orders them
        key = (step.model, step.target)
        if step.is_resize and key in running:
            restarted.add(key)
            del running[key]
            waiting.append(key)
    while True:
        pods = [RunningPod(model, PodObj("bench", f"{model}@{gpu.node}/{gpu.index}",
                                         annotations={MEMORY_FRACTION_ANNOTATION: f"{share:.3f}"}), gpu)
                for (model, gpu), share in running.items()]
        steps = resize_steps(planned, pods, mem, load, after.max_kvpr, threshold)
        for step in steps:
            key = (step.model, step.source)
            restarted.add(key)
            del running[key]
            waiting.append(key)
        free: dict[GpuId, float] = {}  # the bound less the shares the pods on a GPU hold, as the slot rule counts
        for pod in pods if not steps else []:
            free[pod.gpu] = free.get(pod.gpu, limit.get(pod.gpu, 1.0)) - held_share(pod, planned, mem)
        bound = []
        for key in waiting if not steps else []:
            room = free.get(key[1], limit.get(key[1], 1.0))
            if planned[key] <= room + SHARE_EPSILON:
                free[key[1]] = room - planned[key]
                running[key] = planned[key]
                bound.append(key)
        waiting = [key for key in waiting if key not in bound]
        if not steps and not bound:
            return restarted
