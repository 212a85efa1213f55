"""Migrations: which running replicas the plan moves, in what order, and whether the next eviction may start.

A move is a running pod of model X on a GPU that is not one of X's planned GPUs while one of X's planned slots
is free (replicas are interchangeable). Evicting the pod lets its ReplicaSet create a replacement, which the
extender binds to the free slot. An eviction stops the old replica before the new one starts, so a step whose
target GPU lacks memory for X until someone else leaves is `stop_first`. The packer's ordered steps
(`Plan.steps`) give the order: carried out one at a time, no GPU ever holds more weights than its memory (an
eviction stops the old replica before the new one starts, which only frees memory earlier). Moves the packer
does not list come after, those with room first. One eviction at a time, cluster-wide:
the next only when no managed pod is terminating, no replacement that could bind is still unbound, and every
bound managed pod is Ready. A pod whose eviction was refused (PodDisruptionBudget, API error) waits out its
backoff; the shell keeps that record and passes it in.
Each step is a kvsched.api.records.Eviction, built from the packer's MigrationStep and the pod it moves; the
Decision carries the same records (`steps`, and `eviction`, the one to start now).
Called by: kvsched.controller.decide.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Mapping, Sequence

from kvsched.api.objects import ObjectKey, PodObj
from kvsched.api.records import Eviction
from kvsched.packer import GpuId, MigrationStep


@dataclass(frozen=True)
class RunningPod:
    """A live managed pod of `model` holding GPU `gpu` (node + `kvsched.io/gpu`)."""

    model: str
    pod: PodObj
    gpu: GpuId


@dataclass(frozen=True)
class Blocked:
    """An eviction refused at `since` (injected clock, s): not retried before `retry_at`; why, for the condition."""

    reason: str
    message: str
    retry_at: float


@dataclass(frozen=True)
class MigrationState:
    """Steps still to do, the one to start now (None: wait), and per model why it cannot progress (if so)."""

    steps: tuple[Eviction, ...]
    next_step: Eviction | None
    waiting: str | None
    stuck: Mapping[str, Blocked]


def plan_steps(planned: Mapping[str, Sequence[GpuId]], running: Sequence[RunningPod],
               size_gib: Mapping[str, float], memory_gib: Mapping[GpuId, float],
               order: Sequence[MigrationStep] = ()) -> list[Eviction]:
    """Ordered steps from planned GPUs per model and the running pods. O(pods log pods).

    `order`: the packer's ordered steps (`Plan.steps`); moves it lists come first, in its order, with its
    target and `stop_first`. Moves it does not list (a pod the packer saw as a planned slot only) follow,
    those with room first.
    """
    held_weights: dict[GpuId, float] = defaultdict(float)
    for r in running:
        held_weights[r.gpu] += size_gib.get(r.model, 0.0)
    by_model: dict[str, list[RunningPod]] = defaultdict(list)
    for r in running:
        by_model[r.model].append(r)
    steps: list[Eviction] = []
    for model in sorted(planned):
        targets = set(planned[model])
        pods = sorted(by_model.get(model, []), key=lambda r: (r.pod.deleting, r.pod.name))
        held = {r.gpu for r in pods}
        free = sorted(targets - held)
        misplaced = [r for r in pods if r.gpu not in targets and not r.pod.deleting]
        for r, target in zip(misplaced, free):
            room = memory_gib.get(target, 0.0) - held_weights[target]
            stop_first = room < size_gib.get(model, 0.0) - 1e-9
            steps.append(Eviction(model, r.pod, r.gpu, target, stop_first))
    steps.sort(key=lambda s: (s.stop_first, s.model, s.pod.name))
    by_source = {(s.model, s.source): s for s in steps}
    ordered: list[Eviction] = []
    for planned_step in order:
        if planned_step.source is None:
            continue
        step = by_source.pop((planned_step.model, planned_step.source), None)
        if step is None:
            continue
        open_slots = set(planned.get(step.model, ())) - {r.gpu for r in by_model.get(step.model, [])}
        target = planned_step.target if planned_step.target in open_slots else step.target
        ordered.append(Eviction(step.model, step.pod, step.source, target, planned_step.stop_first))
    taken = {(s.model, s.target) for s in ordered}
    rest = [s for s in steps if (s.model, s.source) in by_source and (s.model, s.target) not in taken]
    return ordered + rest


def choose_next(steps: Sequence[Eviction], managed: Sequence[PodObj], pending_can_bind: Sequence[PodObj],
                blocked: Mapping[ObjectKey, Blocked], now: float) -> MigrationState:
    """The step to start now, or why none may start.

    `managed`: every live managed pod; `pending_can_bind`: unbound managed pods the slot rule would bind now
    (`decide.bindable_pods`: a replacement on its way). Steps whose pod is in backoff are skipped.
    """
    stuck = {s.model: blocked[s.pod.key] for s in steps if s.pod.key in blocked and blocked[s.pod.key].retry_at > now}
    if not steps:
        return MigrationState((), None, None, {})
    terminating = sorted(p.name for p in managed if p.deleting)
    if terminating:
        return MigrationState(tuple(steps), None, f"waiting for pod {terminating[0]} to terminate", stuck)
    if pending_can_bind:
        return MigrationState(tuple(steps), None,
                              f"waiting for pod {sorted(p.name for p in pending_can_bind)[0]} to be bound", stuck)
    unready = sorted(p.name for p in managed if p.node is not None and not p.ready)
    if unready:
        return MigrationState(tuple(steps), None, f"waiting for pod {unready[0]} to be Ready", stuck)
    for step in steps:
        refused = blocked.get(step.pod.key)
        if refused is None or refused.retry_at <= now:
            return MigrationState(tuple(steps), step, None, stuck)
    return MigrationState(tuple(steps), None, "every step waits for its eviction to be retried", stuck)
