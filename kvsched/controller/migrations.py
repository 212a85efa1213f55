"""Migrations: which running replicas the plan moves, in what order, and which of them start now (a wave).

A move is a running pod of model X on a GPU that is not one of X's planned GPUs while one of X's planned slots
is free (replicas are interchangeable). Evicting the pod lets its ReplicaSet create a replacement, which the
extender binds to the free slot. An eviction stops the old replica before the new one starts, so a step whose
target GPU lacks memory for X until someone else leaves is `stop_first`. The packer's ordered steps
(`Plan.steps`) give the order: carried out in that order, no GPU ever holds more weights than its memory (an
eviction stops the old replica before the new one starts, which only frees memory earlier). Moves the packer
does not list come after, those with room first.

Waves (`choose_wave`): steps that touch disjoint GPUs start together, within a disruption budget. A GPU is *busy*
while a managed pod on it is terminating, or bound to one of its model's planned GPUs and not Ready (starting),
or while it is a free planned slot of a model whose replacement is on its way (a pending pod that could bind, or
a pod of the model terminating off its planned slots). Going through the steps in order, a step starts when
neither its source nor its target is busy or touched by an earlier step still to do (so a step never overtakes
one it may depend on, and two engines never start on one GPU at once), and the budget allows: at most
`max_restarting` pods restarting cluster-wide (per model, the larger of its pods stopping and its pods starting
or about to bind: a pod stopping and its replacement starting are one restart) and at most
`max_restarting_per_node` pods starting on the step's target node, and one replica per model at a time (a step
waits while another pod of its model stops, starts or is about to bind: a model of N replicas keeps N - 1
serving through every step that stops first). With a budget of 1 this is the old rule: one step at a time. A
pod whose eviction was refused (PodDisruptionBudget, API error) waits out its backoff; the shell keeps that
record and passes it in.
Each step is a kvsched.api.records.Eviction, built from the packer's MigrationStep and the pod it moves; the
Decision carries the same records (`steps`, and `evictions`, the wave to start now).
Called by: kvsched.controller.decide.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Collection, Mapping, Sequence

from kvsched.api.names import MODEL_LABEL
from kvsched.api.objects import ObjectKey, PodObj
from kvsched.api.records import Eviction
from kvsched.controller.inventory import held_gpu
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
class Budget:
    """The disruption budget of one wave: at most `max_restarting` managed pods restarting at once cluster-wide,
    at most `max_restarting_per_node` starting on one node (kvsched.settings says why the defaults). >= 1 each."""

    max_restarting: int = 4
    max_restarting_per_node: int = 1


@dataclass(frozen=True)
class MigrationState:
    """Steps still to do, the wave to start now (empty: wait), why nothing starts (`waiting`, when the wave is
    empty), per model why its steps wait (`waits`) or cannot progress (`stuck`), how many pods restart now, and
    per model the old pod of a make-before-break move in progress (`surging`: no longer a step, still a move)."""

    steps: tuple[Eviction, ...]
    wave: tuple[Eviction, ...]
    waiting: str | None
    stuck: Mapping[str, Blocked]
    waits: Mapping[str, str] = field(default_factory=dict)
    restarting: int = 0
    surging: Mapping[str, str] = field(default_factory=dict)  # model -> the old pod of its make-before-break move

    @property
    def next_step(self) -> Eviction | None:
        """The first step of the wave (None: none starts now)."""
        return self.wave[0] if self.wave else None


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


def _model_of(pod: PodObj) -> str:
    return f"{pod.namespace}/{pod.labels.get(MODEL_LABEL, '')}"


@dataclass(frozen=True)
class InFlight:
    """What is restarting now (see the module docstring): busy GPUs with why, pods starting per node (or about
    to, at a free planned slot of their model), and the pods restarting cluster-wide."""

    busy: Mapping[GpuId, str]
    node_load: Mapping[str, int]
    restarting: int
    models: Mapping[str, str] = field(default_factory=dict)  # model -> why it has a pod restarting (the first)


def in_flight(managed: Sequence[PodObj], pending_can_bind: Sequence[PodObj],
              planned: Mapping[str, Sequence[GpuId]], replacing: Collection[ObjectKey] = ()) -> InFlight:
    """Busy GPUs, per-node starts and the restart count from the live managed pods (`managed`), the unbound ones
    that could bind now (`pending_can_bind`), the planned GPUs per model (packer name) and the old pods of
    make-before-break moves in progress (`replacing`: they count as stopping). Deterministic: the first pod by
    name names a busy GPU. O(pods + planned slots)."""
    busy: dict[GpuId, str] = {}
    node_load: dict[str, int] = defaultdict(int)
    stopping: dict[str, int] = defaultdict(int)
    starting: dict[str, int] = defaultdict(int)
    incoming: dict[str, list[str]] = defaultdict(list)
    held: dict[str, set[GpuId]] = defaultdict(set)
    why_model: dict[str, str] = {}
    for p in sorted(managed, key=lambda p: (p.namespace, p.name)):
        model = _model_of(p)
        index = held_gpu(p)
        gpu = GpuId(p.node, index) if p.node is not None and index is not None else None
        if gpu is not None:
            held[model].add(gpu)
        if p.key in replacing and not p.deleting:
            stopping[model] += 1
            why_model.setdefault(model, f"waiting for pod {p.name}'s replacement to be Ready")
            if gpu is not None:
                busy.setdefault(gpu, f"waiting for pod {p.name}'s replacement to be Ready")
        elif p.deleting:
            stopping[model] += 1
            why_model.setdefault(model, f"waiting for pod {p.name} to terminate")
            if gpu is not None:
                busy.setdefault(gpu, f"waiting for pod {p.name} to terminate")
            if gpu is None or gpu not in planned.get(model, ()):  # a move in flight: its replacement is coming
                incoming[model].append(f"waiting for pod {p.name} to terminate")
        elif gpu is not None and not p.ready and gpu in planned.get(model, ()):
            starting[model] += 1
            node_load[gpu.node] += 1
            why_model.setdefault(model, f"waiting for pod {p.name} to be Ready")
            busy.setdefault(gpu, f"waiting for pod {p.name} to be Ready")
    bindable: dict[str, int] = defaultdict(int)
    for p in sorted(pending_can_bind, key=lambda p: (p.namespace, p.name)):
        model = _model_of(p)
        bindable[model] += 1
        why_model.setdefault(model, f"waiting for pod {p.name} to be bound")
        incoming[model].insert(0, f"waiting for pod {p.name} to be bound")
    for model, why in sorted(incoming.items()):
        free = [g for g in planned.get(model, ()) if g not in held[model]]
        per_node: dict[str, int] = defaultdict(int)
        for g in free:
            busy.setdefault(g, why[0])
            per_node[g.node] += 1
        coming = max(bindable[model], len(why) - bindable[model])
        for node, n in per_node.items():
            node_load[node] += min(n, coming)
    restarting = sum(max(stopping[m], starting[m] + bindable[m]) for m in why_model)
    return InFlight(busy, dict(node_load), restarting, why_model)


def choose_wave(steps: Sequence[Eviction], managed: Sequence[PodObj], pending_can_bind: Sequence[PodObj],
                blocked: Mapping[ObjectKey, Blocked], now: float, planned: Mapping[str, Sequence[GpuId]],
                budget: Budget = Budget(), replacing: Collection[ObjectKey] = (),
                gone: Collection[str] = ()) -> MigrationState:
    """The steps to start now (a wave, see the module docstring), or why none may start.

    `managed`: every live managed pod; `pending_can_bind`: unbound managed pods the slot rule would bind now
    (`decide.bindable_pods`: a replacement on its way); `planned`: planned GPUs per model. Steps whose pod is in
    backoff are skipped (their GPUs stay touched). `gone`: nodes that no longer exist: their pods hold no GPU and
    restart nothing (nothing finalises them until PodGC), but a surge for one is still its model's move in
    progress. O(steps + pods + planned slots).
    """
    stuck = {s.model: blocked[s.pod.key] for s in steps if s.pod.key in blocked and blocked[s.pod.key].retry_at > now}
    flight = in_flight([p for p in managed if p.node not in gone], pending_can_bind, planned, replacing)
    surging = {_model_of(p): p.name for p in sorted(managed, key=lambda p: (p.namespace, p.name), reverse=True)
               if p.key in replacing and not p.deleting}
    if not steps:
        return MigrationState((), (), None, {}, {}, flight.restarting, surging)
    touched: set[GpuId] = set(flight.busy)
    load = defaultdict(int, flight.node_load)
    wave: list[Eviction] = []
    in_wave: dict[str, str] = {}  # model -> why its next step waits for the one in this wave
    waits: dict[str, str] = {}
    first_wait: str | None = None
    for step in steps:
        gpus = (step.source, step.target)
        refused = blocked.get(step.pod.key)
        why: str | None = None
        if refused is not None and refused.retry_at > now:
            why = "its eviction waits to be retried"
        elif step.model in surging:  # one move of a model at a time while it surges (make-before-break)
            why = f"waiting for pod {surging[step.model]}'s replacement to be Ready"
        elif step.model in flight.models or step.model in in_wave:
            why = f"one replica of a model restarts at a time: {flight.models.get(step.model) or in_wave[step.model]}"
        elif any(g in touched for g in gpus):
            hit = next(g for g in gpus if g in touched)
            why = flight.busy.get(hit) or f"waiting for an earlier step on GPU {hit}"
        elif flight.restarting + len(wave) >= budget.max_restarting:
            why = (f"disruption budget: {flight.restarting + len(wave)} pod(s) restarting, at most "
                   f"{budget.max_restarting} at once")
        elif load[step.target.node] >= budget.max_restarting_per_node:
            why = (f"disruption budget: {load[step.target.node]} pod(s) starting on node {step.target.node}, "
                   f"at most {budget.max_restarting_per_node} per node")
        touched.update(gpus)
        if why is not None:
            waits.setdefault(step.model, why)
            if first_wait is None and not why.startswith("its eviction"):
                first_wait = why
            continue
        wave.append(step)
        in_wave[step.model] = f"waiting for pod {step.pod.name} to restart"
        load[step.target.node] += 1
    waiting = None if wave else (first_wait or "every step waits for its eviction to be retried")
    return MigrationState(tuple(steps), tuple(wave), waiting, stuck, waits, flight.restarting, surging)
