"""The decision core: a snapshot of the world in, the smallest set of writes out. Pure (no I/O, no clock read).

    world -> models (ModelServings, annotated Deployments) + inventory (Nodes, unmanaged GPU pods)
          -> current slots (running managed pods, then the planned slots of replicas not running yet)
          -> planner (kvsched.packer.solve)
          -> statuses, template patches, owned ModelServings, a wave of evictions, PodDisruptionBudgets, events

Only what differs from the world is returned: a status equal to the one stored (but for timestamps) is not
written, a template already as needed is not patched, so an unchanged world yields no write. Bad input on one
object becomes its condition and event; every other model is still planned; a placement already made is never
dropped for bad input elsewhere (a Deployment whose annotations turn bad keeps its last good spec).
Called by: kvsched.runtime.loop, `kvsched plan --kubeconfig`, tests/controller.
"""

from __future__ import annotations

import hashlib
import json
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, Callable, Collection, Mapping, Sequence

from kvsched.api.names import API_VERSION, KIND, MODEL_LABEL, PLANNED_SLOTS_ANNOTATION, SHARE_EPSILON
from kvsched.api.objects import DeploymentObj, ModelServingObj, ObjectKey, PodObj, World
from kvsched.api.records import (
    DeploymentPatch,
    Event,
    EventTarget,
    Eviction,
    HolderChange,
    OwnedChange,
    PdbChange,
    PodNudge,
    StatusWrite,
    Surge,
)
from kvsched.controller.config import DecisionConfig
from kvsched.controller.holders import holder_changes, holder_uuids
from kvsched.controller.inventory import Inventory, build_inventory, held_gpu, is_managed, orphaned, running_share
from kvsched.controller.leftovers import leftovers, stop_steps
from kvsched.controller.pdb import PdbModel, pdb_changes
from kvsched.controller.migrations import Blocked, Budget, MigrationState, RunningPod, choose_wave, plan_steps
from kvsched.controller.headroom import plan_shares, share_bound
from kvsched.controller.models import ModelEntry, collect_models, model_size_gib
from kvsched.controller.shares import Memory, held_share, plan_resizes, resize_steps
from kvsched.controller.slots import Holder, ModelPlan, NodeGpus, PodRef, Snapshot, filter_nodes, pod_holder
from kvsched.controller.start_gate import StartGate, next_expiry
from kvsched.controller.surge import (
    SurgeRecord,
    may_surge,
    replacing,
    surge_ends,
    surge_expiry_s,
    surge_timeout_s,
)
from kvsched.controller.status import (
    conditions_by_type,
    merge_conditions,
    model_kvpr,
    placement_conditions,
    planned_slots,
    slots_of,
    status_changed,
)
from kvsched.controller.template import affinity_terms, template_patch, touches_template
from kvsched.packer import Gpu, GpuId, MigrationStep, Model, Placement, Plan, Slot, Unplaced
from kvsched.units import timestamp_s

# (models, GPUs, current, planned) -> Plan: `current` are the replicas a move would restart, `planned` the
# planned slots of replicas that do not run yet (see `current_slots`); kvsched.packer.solve's arguments.
Planner = Callable[[Sequence[Model], Sequence[Gpu], Sequence[Slot], Sequence[Slot]], Plan]


@dataclass(frozen=True)
class Decision:
    """Everything one decision wants written, and what it saw (for metrics, logs and `kvsched plan`)."""

    plan: Plan | None
    statuses: tuple[StatusWrite, ...] = ()
    deployment_patches: tuple[DeploymentPatch, ...] = ()
    owned_changes: tuple[OwnedChange, ...] = ()
    evictions: tuple[Eviction, ...] = ()  # the wave of migration steps to start now (kvsched.controller.migrations)
    events: tuple[Event, ...] = ()
    nudges: tuple[PodNudge, ...] = ()
    model_states: Mapping[str, int] = field(default_factory=dict)
    steps: tuple[Eviction, ...] = ()
    waiting: str | None = None
    inventory: Inventory | None = None
    gate_expiry_s: float | None = None  # earliest start-gate timeout among pods starting now (epoch s), if any
    gate_waiting: int = 0               # pending managed pods whose only usable slots wait at a start gate
    shares: Mapping[tuple[str, GpuId], float] = field(default_factory=dict)  # written per placement (plan_shares)
    holders: tuple[HolderChange, ...] = ()
    restarting: int = 0  # managed pods restarting now (stopping or starting; the disruption budget's count)
    surges: tuple[Surge, ...] = ()  # make-before-break moves to start now (kvsched.controller.surge)
    surge_expiry_s: float | None = None  # when the earliest surge in force is undone if unfinished (epoch s)
    pdbs: tuple[PdbChange, ...] = ()  # PodDisruptionBudgets to create, patch, delete (kvsched.controller.pdb)

    @property
    def eviction(self) -> Eviction | None:
        """The first eviction of the wave (None: none now)."""
        return self.evictions[0] if self.evictions else None

    @property
    def wake_at_s(self) -> float | None:
        """When this decision goes stale with no event (epoch s): the earliest start-gate timeout, or the end of a
        NotReady node's grace period (kvsched.controller.inventory); None: never."""
        grace = self.inventory.grace_ends_s if self.inventory is not None else None
        times = [t for t in (self.gate_expiry_s, grace, self.surge_expiry_s) if t is not None]
        return min(times, default=None)

    @property
    def writes(self) -> int:
        """API writes this decision asks for (events not counted)."""
        return (len(self.statuses) + len(self.deployment_patches) + len(self.owned_changes)
                + len(self.nudges) + len(self.holders) + len(self.evictions) + 2 * len(self.surges)
                + len(self.pdbs))


def ms_target(ms: ModelServingObj) -> EventTarget:
    return EventTarget(KIND, API_VERSION, ms.namespace, ms.name, ms.uid)


def deployment_target(dep: DeploymentObj) -> EventTarget:
    return EventTarget("Deployment", "apps/v1", dep.namespace, dep.name, dep.uid)


def node_target(name: str, uid: str) -> EventTarget:
    return EventTarget("Node", "v1", "", name, uid)


def running_pods(world: World, entries: Sequence[ModelEntry], config: DecisionConfig) -> list[RunningPod]:
    """Live managed pods holding a GPU, with the packer name of their model (pods of unknown models skipped)."""
    known = {e.ms.key for e in entries}
    out = []
    for pod in world.pods:
        if not is_managed(pod, config):
            continue
        gpu = held_gpu(pod)
        key = ObjectKey(pod.namespace, pod.labels[MODEL_LABEL])
        if gpu is None or key not in known or pod.node is None:
            continue
        out.append(RunningPod(f"{key.namespace}/{key.name}", pod, GpuId(pod.node, gpu)))
    return out


def current_slots(entries: Sequence[ModelEntry], running: Sequence[RunningPod],
                  leaving: Collection[ObjectKey] = ()) -> tuple[list[Slot], list[Slot]]:
    """Where each model's replicas are now, split as the packer needs it: (`current`, `planned`).

    `current`: replicas whose GPU is settled, so that moving them costs a restart: the live pods (oldest first),
    a terminating pod's slot when its replacement comes back to the same GPU (a restart in place, a rollout),
    and the destination of a move in flight (a terminating pod off every planned slot: its replacement counts
    as being at a planned slot no live pod holds, so a re-plan mid-migration does not send it elsewhere).
    `planned`: the other planned slots in status, of replicas that do not run yet: free to move, a hint that
    keeps equal plans equal. At most `replicas` slots per model in all, one per GPU; the old pods of
    make-before-break moves (`leaving`) come last, so that their replacements count, not they.
    """
    by_model: dict[str, list[RunningPod]] = defaultdict(list)
    for r in running:
        by_model[r.model].append(r)
    current: list[Slot] = []
    planned: list[Slot] = []
    for entry in entries:
        if entry.model is None:
            continue
        name = entry.model.name
        wanted = entry.model.replicas
        status_gpus: list[GpuId] = []
        for s in planned_slots(entry.ms.status)[0]:
            gpu = GpuId(s.node, s.gpu)
            if gpu not in status_gpus:
                status_gpus.append(gpu)
        pods = sorted(by_model.get(name, []), key=lambda r: (r.pod.key in leaving, r.pod.created, r.pod.name))
        settled: list[GpuId] = []
        for r in pods:
            if not r.pod.deleting and r.gpu not in settled:
                settled.append(r.gpu)
        free = [g for g in status_gpus if g not in settled]
        for r in pods:
            if not r.pod.deleting or r.gpu in settled:
                continue
            if r.gpu in status_gpus:  # its replacement comes back here
                settled.append(r.gpu)
                free.remove(r.gpu)
            elif free:  # a move in flight: its replacement is bound for a free planned slot
                settled.append(free.pop(0))
        settled = settled[:wanted]
        # The share each settled pod runs with (its annotation): the re-plan lets it keep that where it fits.
        share = {r.gpu: running_share(r.pod) for r in pods if not r.pod.deleting}
        current.extend(Slot(name, i, g, share.get(g)) for i, g in enumerate(settled))
        planned.extend(Slot(name, len(settled) + i, g)
                       for i, g in enumerate(free[:max(0, wanted - len(settled))]))
    return current, planned


def decide(world: World, config: DecisionConfig, planner: Planner, *, now: str, clock_s: float = 0.0,
           blocked: Mapping[ObjectKey, Blocked] | None = None) -> Decision:
    """One decision over `world` (see the module docstring). `now` is the RFC 3339 time for condition
    transitions; `clock_s` and `blocked` (refused evictions by pod) drive the eviction backoff. Never raises
    for bad values in the world; the planner's InvalidInput (a bug) propagates."""
    blocked = blocked or {}
    model_set = collect_models(world, config.headroom())
    entries = model_set.entries
    sized = {e.ms.model_name for e in entries if e.size_gib is not None}
    inventory = build_inventory(world.nodes, world.pods, config, timestamp_s(now), sized)
    running = running_pods(world, entries, config)
    leaving = replacing(world.deployments)
    models = [e.model for e in entries if e.model is not None]
    plan = planner(models, inventory.gpus, *current_slots(entries, running, leaving)) if models else None

    placements: dict[str, list[Placement]] = defaultdict(list)
    unplaced: dict[str, list[Unplaced]] = defaultdict(list)
    gpu_kvpr: dict[GpuId, float] = {}
    if plan is not None:
        for p in plan.placements:
            placements[p.model].append(p)
        for u in plan.unplaced:
            unplaced[u.model].append(u)
        gpu_kvpr = {g.gpu: g.kvpr for g in plan.gpus}

    shares = plan_shares(plan, models) if plan is not None else {}
    slots_by_model = {e.ms.model_name: slots_of(placements.get(e.ms.model_name, []), shares) for e in entries}
    gate = start_gate_at(now, config)
    held = holders_by_gpu(world)
    can_bind = bindable_pods(world, entries, slots_by_model, inventory, config, gate)
    ungated = bindable_pods(world, entries, slots_by_model, inventory, config) if gate is not None else can_bind
    migration = _migrations(world, entries, inventory, running, placements, shares, config, blocked, clock_s, plan,
                            can_bind, leaving)
    events: list[Event] = []
    nodes_by_name = {n.name: n for n in world.nodes}
    for problem in inventory.problems:
        node = nodes_by_name[problem.node]
        events.append(Event(node_target(node.name, node.uid), "Warning", problem.reason, problem.message))
    for dp in model_set.deployment_problems:
        events.append(Event(deployment_target(dp.deployment), "Warning", dp.problem.reason, dp.problem.message))
    for change in model_set.owned_changes:
        dep = next(d for d in world.deployments if d.key == change.key)
        verb = {"create": "ModelServingCreated", "patch": "ModelServingUpdated", "delete": "ModelServingDeleted"}
        events.append(Event(deployment_target(dep), "Normal", verb[change.action],
                            f"{change.action} ModelServing {change.key} from the kvsched.io annotations"))

    pods_by_model: dict[str, list[PodObj]] = defaultdict(list)
    for r in running:
        pods_by_model[r.model].append(r.pod)
    statuses: list[StatusWrite] = []
    patches: list[DeploymentPatch] = []
    states: dict[str, int] = defaultdict(int)
    for entry in entries:
        name = entry.ms.model_name
        mine = placements.get(name, [])
        missing = unplaced.get(name, [])
        planned_gpus = {p.gpu for p in mine}
        ready = sum(1 for r in running if r.model == name and r.pod.ready and not r.pod.deleting
                    and r.gpu in planned_gpus)
        moving = _migrating_condition(name, migration)
        invalid = (entry.invalid.reason, entry.invalid.message) if entry.invalid else None
        conditions = placement_conditions(entry.replicas, len(mine), missing, entry.model is not None,
                                          invalid, moving)
        status = {
            "observedGeneration": entry.ms.generation,
            "replicas": entry.replicas,
            "placedReplicas": len(mine),
            "readyReplicas": ready,
            "kvpr": model_kvpr([gpu_kvpr[g] for g in planned_gpus if g in gpu_kvpr]),
            "slots": slots_by_model[name],
            "conditions": merge_conditions(conditions, entry.ms.status.get("conditions"),
                                           entry.ms.generation, now),
        }
        states[_state(entry, len(mine), moving)] += 1
        if status_changed(entry.ms.status, status):
            statuses.append(StatusWrite(entry.ms.key, status))
            events.extend(_transition_events(entry.ms, conditions))
        if entry.deployment is not None and entry.size_gib is not None:
            terms = affinity_terms(entry.size_gib + entry.overhead_gib + entry.context_gib, inventory.pool, config)
            patch = template_patch(entry.deployment, entry.ms.name, terms, config)
            if patch is not None:
                rollout = touches_template(patch)
                patches.append(DeploymentPatch(entry.deployment.key, patch, rollout))
                events.append(Event(deployment_target(entry.deployment), "Normal", "TemplatePatched",
                                    "pod template set for kvsched (scheduler, GPU affinity, env)" if rollout
                                    else "strategy set to RollingUpdate with maxSurge 0"))
    states["invalid"] += len(model_set.deployment_problems)

    room = _room_now(entries, inventory, running, shares)
    evictions, surges = _split_wave(migration.wave, entries, config, timestamp_s(now), room)
    by_model = {e.ms.model_name: e for e in entries}
    for eviction in evictions:
        if eviction.stop:
            text = (f"evicting pod {eviction.pod.name}, a replica the plan leaves unplaced, from GPU "
                    f"{eviction.source} so that the replicas planned there fit")
        else:
            text = (f"evicting pod {eviction.pod.name} from GPU {eviction.source} so that its replacement "
                    + ("runs there with its planned memory share" if eviction.resize
                       else f"takes GPU {eviction.target}"))
        events.append(Event(ms_target(by_model[eviction.model].ms), "Normal", "Migrating", text))
    for surge in surges:
        events.append(Event(ms_target(by_model[surge.step.model].ms), "Normal", "Migrating",
                            f"starting a replica for GPU {surge.step.target} before pod {surge.step.pod.name} leaves "
                            f"GPU {surge.step.source} (Deployment {surge.deployment.name} scaled to "
                            f"{surge.replicas + 1} meanwhile)"))
    timeout = surge_timeout_s(config.start_timeout_s)
    model_of = {e.deployment.key: e.ms.model_name for e in entries if e.deployment is not None}
    for end in surge_ends(world.deployments, model_of, world.pods, timestamp_s(now), timeout):
        patches.append(end.patch)
        dep = next(d for d in world.deployments if d.key == end.patch.key)
        if end.outcome == "finished":
            events.append(Event(deployment_target(dep), "Normal", "SurgeFinished",
                                f"the replacement of pod {end.pod} is Ready: scaled back, pod {end.pod} goes"))
        elif end.outcome == "undone":
            events.append(Event(deployment_target(dep), "Warning", "SurgeUndone",
                                f"the replacement of pod {end.pod} was not Ready within {timeout:.0f}s: scaled "
                                f"back; its move will evict pod {end.pod} first"))
    pdbs, pdb_problems = pdb_changes([PdbModel(e.ms, e.deployment) for e in entries], world.pdbs, world.pods,
                                     config)
    for pdb_problem in pdb_problems:
        if pdb_problem.kind == "Deployment":
            dep = next(d for d in world.deployments if d.key == pdb_problem.key)
            target = deployment_target(dep)
        else:
            target = ms_target(next(e.ms for e in entries if e.ms.key == pdb_problem.key))
        events.append(Event(target, pdb_problem.type, pdb_problem.reason, pdb_problem.message))
    expiry = next_expiry([h for hs in held.values() for h in hs], gate) if gate is not None else None
    return Decision(plan, tuple(statuses), tuple(patches), model_set.owned_changes, evictions, tuple(events),
                    _nudges(can_bind, slots_by_model, held, gate), dict(states), migration.steps,
                    migration.waiting, inventory, expiry, len(ungated) - len(can_bind), shares,
                    holder_changes(_held_or_planned(world, placements, config), world.pods, config),
                    migration.restarting, surges, surge_expiry_s(world.deployments, timeout), pdbs)


def _room_now(entries: Sequence[ModelEntry], inventory: Inventory, running: Sequence[RunningPod],
              shares: Mapping[tuple[str, GpuId], float]) -> Callable[[str, GpuId], bool]:
    """Whether a new replica of a model would fit a GPU now, beside every pod holding it (terminating ones and the
    old pod of its own move included): footprints within the GPU's memory less its reserve, and the shares they
    run with plus its planned share within the GPU's bound (the slot rule's test; kvsched.controller.headroom)."""
    models = {e.model.name: e.model for e in entries if e.model is not None}
    gpus = {g.id: g for g in inventory.gpus}
    mem = Memory(inside={m.name: m.size_gib + m.overhead_gib for m in models.values()},
                 context={m.name: m.context_gib for m in models.values()},
                 memory={g.id: g.memory_gib for g in inventory.gpus},
                 reserve={g.id: g.reserve_gib for g in inventory.gpus})
    on: dict[GpuId, list[RunningPod]] = defaultdict(list)
    for r in running:
        on[r.gpu].append(r)

    def fits(model: str, gpu: GpuId) -> bool:
        m, g = models.get(model), gpus.get(gpu)
        if m is None or g is None or (model, gpu) not in shares:
            return False
        here = on.get(gpu, [])
        footprint = sum(models[r.model].footprint_gib for r in here if r.model in models) + m.footprint_gib
        contexts = sum(mem.context.get(r.model, 0.0) for r in here) + m.context_gib
        used = sum(held_share(r, shares, mem) for r in here) + shares[(model, gpu)]
        return (footprint <= g.usable_gib + 1e-9
                and used <= share_bound(g.memory_gib, g.reserve_gib, contexts) + SHARE_EPSILON)
    return fits


def _split_wave(wave: Sequence[Eviction], entries: Sequence[ModelEntry], config: DecisionConfig,
                now_s: float | None, room: Callable[[str, GpuId], bool]) -> tuple[tuple[Eviction, ...], tuple[Surge, ...]]:
    """The wave's steps as evictions and make-before-break surges (kvsched.controller.surge): a move that is not
    `stop_first` and whose target has room for the new replica now, beside the old one (`room`, so that the surge
    depends on no other step), surges its model's Deployment where `may_surge` allows, one surge per Deployment
    per wave (a second step of that Deployment waits for the next wave); every other step evicts."""
    by_model = {e.ms.model_name: e for e in entries}
    evictions: list[Eviction] = []
    surges: list[Surge] = []
    surged: set[ObjectKey] = set()
    for step in wave:
        entry = by_model.get(step.model)
        dep = entry.deployment if entry is not None else None
        if step.stop_first or step.resize or entry is None or dep is None or now_s is None or \
                not may_surge(dep, entry.replicas, step.pod, config.make_before_break) or \
                not room(step.model, step.target):
            evictions.append(step)
        elif dep.key not in surged:
            surged.add(dep.key)
            record = SurgeRecord(dep.replicas, step.pod.name, now_s)
            surges.append(Surge(step, dep.key, dep.replicas, record.value()))
    return tuple(evictions), tuple(surges)


def _held_or_planned(world: World, placements: Mapping[str, Sequence[Placement]], config: DecisionConfig
                     ) -> set[GpuId]:
    """The GPUs that need a holder: every planned one, and every one a managed pod still holds (terminating
    included), so that a holder outlives the last replica on its GPU. O(placements + pods)."""
    wanted = {p.gpu for ps in placements.values() for p in ps}
    for pod in world.pods:
        gpu = held_gpu(pod) if is_managed(pod, config) else None
        if gpu is not None and pod.node is not None:
            wanted.add(GpuId(pod.node, gpu))
    return wanted


def start_gate_at(now: str, config: DecisionConfig) -> StartGate | None:
    """The start gate at `now` (RFC 3339) with the configured timeout; None when the gate is off or `now` is
    unreadable (then nobody waits at a gate)."""
    now_s = timestamp_s(now)
    if now_s is None or config.start_timeout_s <= 0:
        return None
    return StartGate(now_s, config.start_timeout_s)


def holders_by_gpu(world: World) -> dict[tuple[str, int], list[Holder]]:
    """Every pod holding a GPU (`slots.pod_holder`, terminating ones included), by (node, GPU index)."""
    held: dict[tuple[str, int], list[Holder]] = defaultdict(list)
    for pod in world.pods:
        holder = pod_holder(pod)
        if holder is not None:
            held[(holder.node, holder.gpu)].append(holder)
    return held


def slots_digest(slots: Sequence[Mapping[str, Any]], settled: Sequence[str] = ()) -> str:
    """A short, stable digest of a model's status slots (node, GPU, share) and of `settled`, the pods on those GPUs
    that hold no start gate (Ready, or past their start timeout): it changes when the slots do, and when a pod
    there finishes starting (so a pod that waited at the gate is nudged again when it opens) or leaves."""
    text = json.dumps([sorted((s["node"], s["gpu"], s["memoryFraction"]) for s in slots), sorted(settled)])
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def bindable_pods(world: World, entries: Sequence[ModelEntry],
                  slots_by_model: Mapping[str, Sequence[Mapping[str, Any]]], inventory: Inventory,
                  config: DecisionConfig, gate: StartGate | None = None) -> list[PodObj]:
    """The pending managed pods (unbound, not terminating) that the extender's filter would pass on some node once
    this decision's statuses are written: the slot rule itself (`slots.filter_nodes`), over the status slots in
    `slots_by_model` read back as the extender reads them (`status.planned_slots`), the pool's nodes, and every
    pod holding a GPU (`slots.pod_holder`, terminating ones included), with the start gate `gate` (None: none).
    Such a pod is waited for before the next eviction and nudged if kube-scheduler may not retry it.
    O(pods + pending x planned slots x holders)."""
    plans: dict[str, ModelPlan] = {}
    for entry in entries:
        name = entry.ms.model_name
        slots, _ = planned_slots({"slots": list(slots_by_model.get(name, []))})
        plans[name] = ModelPlan.from_slots(name, model_size_gib(entry.ms), slots, entry.overhead_gib,
                                           entry.context_gib)
    nodes = {n.name: NodeGpus(n.name, n.gpus, n.memory_gib, config.gpu_memory_reserve_gib) for n in inventory.pool}
    devices = None
    if config.gpu_holders:
        devices = {(g.node, g.index): u for g, u in holder_uuids(world.pods, config.holder_namespace).items()}
    view = Snapshot(plans, nodes, holders_by_gpu(world), gate, devices)
    out = []
    for pod in world.pods:
        if not is_managed(pod, config) or pod.node is not None or pod.deleting or pod.terminal:
            continue
        key = f"{pod.namespace}/{pod.labels[MODEL_LABEL]}"
        plan = plans.get(key)
        if plan is None or not plan.slots_by_node:
            continue
        ref = PodRef(pod.namespace, pod.name, pod.uid or f"{pod.namespace}/{pod.name}", key)
        if filter_nodes(ref, sorted(plan.slots_by_node), view).passed:
            out.append(pod)
    return out


def _nudges(can_bind: Sequence[PodObj], slots_by_model: Mapping[str, Sequence[Mapping[str, Any]]],
            held: Mapping[tuple[str, int], Sequence[Holder]], gate: StartGate | None) -> tuple[PodNudge, ...]:
    """Pending pods that could bind now (`bindable_pods`) and were not nudged for their model's current slots and
    the pods settled on them (`slots_digest`) yet."""
    out = []
    for pod in sorted(can_bind, key=lambda p: (p.namespace, p.name)):
        slots = slots_by_model.get(f"{pod.namespace}/{pod.labels[MODEL_LABEL]}")
        if not slots:
            continue
        settled = [h.uid for s in slots for h in held.get((s["node"], s["gpu"]), ())
                   if gate is None or not gate.holds(h.starting_since)]
        digest = slots_digest(slots, settled)
        if pod.annotations.get(PLANNED_SLOTS_ANNOTATION) != digest:
            out.append(PodNudge(pod.key, digest))
    return tuple(out)


def _migrations(world: World, entries: Sequence[ModelEntry], inventory: Inventory, running: Sequence[RunningPod],
                placements: Mapping[str, Sequence[Placement]], shares: Mapping[tuple[str, GpuId], float],
                config: DecisionConfig, blocked: Mapping[ObjectKey, Blocked], clock_s: float, plan: Plan | None,
                can_bind: Sequence[PodObj], leaving: Collection[ObjectKey] = ()) -> MigrationState:
    """Stops of running replicas the plan leaves unplaced where the plan needs their memory, and restarts for
    memory shares first (they free what waiting replicas need), then the moves, and the wave to start now;
    `can_bind` (`bindable_pods`) are replacements on their way, waited for before any eviction."""
    models = [e.model for e in entries if e.model is not None]
    replica_load = {m.name: m.replica_load for m in models}
    mem = Memory(inside={m.name: m.size_gib + m.overhead_gib for m in models},
                 context={m.name: m.context_gib for m in models},
                 memory={g.id: g.memory_gib for g in inventory.gpus},
                 reserve={g.id: g.reserve_gib for g in inventory.gpus})
    planned = {m: [p.gpu for p in ps] for m, ps in placements.items()}
    steps = resize_steps(dict(shares), running, mem, replica_load,
                         plan.max_kvpr if plan is not None else 0.0, config.stability_threshold_ratio)
    steps += plan_resizes(plan.steps if plan is not None else (), running, steps, shares)
    # Moves keep every GPU's footprints (weights, overheads, contexts) within its memory less its reserve.
    footprint = {m.name: m.footprint_gib for m in models}
    usable = {g.id: g.usable_gib for g in inventory.gpus}
    steps += plan_steps(planned, running, footprint, usable, plan.steps if plan is not None else ())
    left = leftovers(planned, running, {m.name: m.replicas for m in models}, {s.pod.key for s in steps}, leaving)
    steps = stop_steps(shares, left, mem, footprint, usable) + steps
    steps = [s for s in steps if s.pod.key not in leaving]  # a make-before-break move in progress
    # Pods of models kvsched no longer plans (inventory.orphaned) are nobody's replacement: not waited for.
    sized = {e.ms.model_name for e in entries if e.size_gib is not None}
    managed = [p for p in world.pods if is_managed(p, config) and not p.terminal and not orphaned(p, sized)]
    # Pods bound to a Node that no longer exists hold no GPU and never finish terminating (no kubelet: PodGC
    # deletes them about 40 s later); counted, a scale-back or eviction of one would hold the waves till then.
    gone = {p.node for p in managed if p.node is not None} - {n.name for n in world.nodes}
    return choose_wave(steps, managed, can_bind, blocked, clock_s, planned,
                       Budget(config.max_restarting, config.max_restarting_per_node), leaving, gone)


def _migrating_condition(model: str, migration: MigrationState) -> tuple[str, str] | None:
    mine = [s for s in migration.steps if s.model == model]
    surging = migration.surging.get(model)
    if not mine:
        if surging is None:
            return None
        return "Surging", (f"1 replica moving make-before-break: pod {surging} leaves once its replacement is "
                           f"Ready")
    if model in migration.stuck:
        b = migration.stuck[model]
        return b.reason, b.message
    stops = sum(s.stop for s in mine)
    restarts = sum(s.resize for s in mine)
    moves = len(mine) - stops - restarts
    moving = "; ".join(part for part in (f"{moves} replica(s) to move" if moves else "",
                                         f"{restarts} to restart with a new memory share" if restarts else "",
                                         f"{stops} unplaced replica(s) to stop" if stops else "")
                       if part)
    started = [s for s in migration.wave if s.model == model]
    if started:
        s = started[0]
        if len(started) > 1:
            return "Evicting", (f"{moving}; evicting {len(started)} pods ("
                                + ", ".join(f"{x.pod.name} from GPU {x.source}" for x in started) + ")")
        if s.resize:
            return "Evicting", (f"{moving}; evicting pod {s.pod.name} so that it restarts on GPU {s.source} "
                                f"with its planned memory share")
        if s.stop:
            return "Evicting", (f"{moving}; evicting pod {s.pod.name} from GPU {s.source}, where the replicas "
                                f"planned need its memory")
        return "Evicting", f"{moving}; evicting pod {s.pod.name} from GPU {s.source} to free GPU {s.target}"
    why = migration.waits.get(model) or migration.waiting or "another model migrates first"
    return "Waiting", f"{moving}; {why}"


def _state(entry: ModelEntry, placed: int, moving: tuple[str, str] | None) -> str:
    """The `kvsched_models{state}` label of one model."""
    if entry.model is None and entry.invalid is not None:
        return "invalid"
    if moving is not None:
        return "migrating"
    if entry.invalid is not None:
        return "invalid"
    if placed >= entry.replicas:
        return "placed"
    return "partial" if placed else "unschedulable"


def _transition_events(ms: ModelServingObj, conditions: Sequence[Any]) -> list[Event]:
    """An event for each condition that becomes True (or Placed that changes reason) since the stored status."""
    old = conditions_by_type(ms.status.get("conditions"))
    events = []
    for c in conditions:
        before = old.get(c.type) or {}
        if c.status != "True" and c.type != "Placed":
            continue
        if before.get("status") == c.status and before.get("reason") == c.reason:
            continue
        if c.type == "Placed" and c.status != "True":
            continue
        warning = c.type in ("Invalid", "Unschedulable")
        events.append(Event(ms_target(ms), "Warning" if warning else "Normal",
                            c.reason, c.message or c.type))
    return events
