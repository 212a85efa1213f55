"""The slot-occupancy rule of docs/architecture.md as pure functions: filter, score and pick a slot.

Plain data in, plain data out, no I/O and no locks: the extender's cache calls these under its own lock with a
`World` that answers lookups from its indexes (no copy of the cluster per request). It lives with the controller's
decisions, below both adapters, so that the extender (filter, prioritize, bind) and the controller (which pending
pods to nudge) apply one rule.

The rule. For a managed pod of model X on node N: X's free slots on N are X's planned slots on N whose GPU no
other live pod of X holds. A free slot is usable now when the GPU keeps its memory headroom with X started there
(kvsched.controller.headroom): the footprints of every pod holding it (weights m + engine overhead o + CUDA context
c, by its model) plus X's fit the GPU's memory M less its reserve R, and the memory shares the holders run with
(`kvsched.io/gpu-memory-fraction`, never less than their (m + o) / M) plus the slot's planned share add up to at
most 1 - (R + the contexts of the holders and X) / M. Then every engine's start-up check passes in whatever order
they start, and no GPU is ever promised more memory than it has. With GPU holders on, a slot is usable only once the
holder pod of its GPU has reported the GPU's UUID (`World.device`; kvsched.controller.holders). So, per candidate
node:
- usable slot             -> the node passes filter; prioritize scores it by its best usable slot (below);
- planned, none usable    -> FailedNodes with who is in the way (it frees when those pods go: a migration step,
                             a rollout's old pod terminating, or the controller restarting a holder whose
                             planned share shrank so that it runs with the smaller one); prioritize gives
                             BLOCKED_SCORE;
- a slot whose GPU has another managed pod starting (bound, not Ready yet, within the start timeout:
  kvsched.controller.start_gate) is not usable either: FailedNodes names that pod; one engine starts per GPU;
- no slot of X planned, or the plan contradicts the node (gone, GPU index past its count)
                          -> FailedAndUnresolvableNodes (preemption cannot help); prioritize gives NEUTRAL_SCORE.
A pod holds GPU (node, gpu) from the moment bind reserves/annotates it until it is deleted, terminating or not.

Which usable slot (`best_slot`; prioritize scores a node by its best usable slot, bind takes that slot, ties to
the lowest GPU index). Every usable slot is in the plan, so this only orders the plan's free slots by how little
the pod's arrival disturbs:
- RETURN_SCORE (10): the pod's own slot (it holds or reserved that GPU already: a retried cycle), or the GPU a
  pod of X left last (`World.previous_models`): a restarted or rolled replica goes back where it ran;
- WARM_SCORE (7):    another GPU of the node holds, or held, a pod of X: image and weights are on the node's disk;
- COLD_SCORE (4):    nothing of X on the node;
- plus EMPTY_GPU_BONUS (1) for a warm or cold slot whose GPU holds no other pod: loading the weights does not
  slow a model already serving there.
Called by: kvsched.extender.cache (filter, prioritize, bind), kvsched.extender.app (its types),
kvsched.controller.decide (which pending pods to nudge: `filter_nodes` over a `Snapshot`).
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from kvsched.api.names import MODEL_LABEL, SHARE_EPSILON
from kvsched.api.objects import PodObj
from kvsched.controller import start_gate
from kvsched.controller.headroom import least_share, share_bound
from kvsched.controller.inventory import held_gpu, running_share
from kvsched.units import timestamp_s

MAX_SCORE = 10       # kube-scheduler's MaxExtenderPriority
RETURN_SCORE = MAX_SCORE  # the pod's own GPU, or the GPU its model's last pod there left (see the docstring)
WARM_SCORE = 7       # the model runs or ran on another GPU of the node
COLD_SCORE = 4       # nothing of the model on the node
EMPTY_GPU_BONUS = 1  # added to WARM/COLD when the slot's GPU holds no other pod
BLOCKED_SCORE = 1    # planned here, but the slot is still held: better than a node with no plan at all
NEUTRAL_SCORE = 0    # unmanaged pods, unplanned nodes and plans the node contradicts: no opinion
_MEMORY_EPSILON_GIB = 1e-6  # sizes come from quantities; equal sums must fit


@dataclass(frozen=True)
class PlannedSlot:
    """One replica's place in the plan (ModelServing status.slots[i])."""

    node: str
    gpu: int
    memory_fraction: float


@dataclass(frozen=True)
class ModelPlan:
    """A ModelServing as the extender needs it. `key` is the packer name `<namespace>/<name>`; `size_gib` is
    None when spec.modelSize is missing or unparsable (then memory cannot be checked and filter says so).
    `overhead_gib` / `context_gib`: one replica's engine memory inside / outside its share (GiB >= 0)."""

    key: str
    size_gib: float | None
    slots_by_node: Mapping[str, tuple[PlannedSlot, ...]] = field(default_factory=dict)
    overhead_gib: float = 0.0
    context_gib: float = 0.0

    @property
    def name(self) -> str:
        return self.key.split("/", 1)[-1]

    @property
    def inside_gib(self) -> float | None:
        """m + o: what one replica needs inside its share (None when the size is unknown)."""
        return None if self.size_gib is None else self.size_gib + self.overhead_gib

    @property
    def footprint_gib(self) -> float | None:
        """m + o + c: what one replica takes of its GPU besides KV cache (None when the size is unknown)."""
        return None if self.size_gib is None else self.size_gib + self.overhead_gib + self.context_gib

    @classmethod
    def from_slots(cls, key: str, size_gib: float | None, slots: Iterable[PlannedSlot], overhead_gib: float = 0.0,
                   context_gib: float = 0.0) -> ModelPlan:
        """The plan of model `key` with `slots` (in any order) grouped by node. O(slots)."""
        by_node: dict[str, list[PlannedSlot]] = {}
        for slot in slots:
            by_node.setdefault(slot.node, []).append(slot)
        return cls(key, size_gib, {node: tuple(s) for node, s in by_node.items()}, overhead_gib, context_gib)


@dataclass(frozen=True)
class NodeGpus:
    """A node's GPUs: count (`inventory.node_gpu_count`), memory per GPU in GiB (`inventory.node_memory_gib`;
    None: not labelled, or not readable) and the reserve of each GPU no replica may take (GiB >= 0)."""

    name: str
    gpus: int
    gpu_memory_gib: float | None
    reserve_gib: float = 0.0


@dataclass(frozen=True)
class Holder:
    """A pod holding one GPU: bound and annotated, or reserved by a bind in flight (`reserved`)."""

    pod: str               # namespace/name
    uid: str
    model_key: str | None  # namespace/<kvsched.io/model label>; None for a pod outside kvsched's models
    node: str
    gpu: int
    terminating: bool = False
    reserved: bool = False
    memory_fraction: float | None = None  # the share of the GPU's memory it runs with (None: not annotated)
    starting_since: float | None = None   # epoch s of its bind while it is not Ready (start_gate); None: not starting

    def describe(self) -> str:
        state = " (terminating)" if self.terminating else " (binding)" if self.reserved else ""
        return f"pod {self.pod}{state}"


def pod_holder(pod: PodObj) -> Holder | None:
    """The Holder of the GPU `pod` holds (`inventory.held_gpu`: bound, annotated, not Succeeded/Failed; terminating
    or not), or None. Any pod can hold: one without the model label holds as a pod of unknown size. Its uid is
    `namespace/name` when it has none (snapshots built by hand), so that it never passes for another pod. A pod
    with the model label, not terminating and not Ready is starting since its bind time (`starting_since`, None
    when that time is unknown). O(1)."""
    gpu = held_gpu(pod)
    if gpu is None or pod.node is None:
        return None
    model = pod.labels.get(MODEL_LABEL) or None
    key = f"{pod.namespace}/{pod.name}"
    starting = timestamp_s(pod.bound_at) if model and not pod.ready and not pod.deleting else None
    return Holder(pod=key, uid=pod.uid or key, model_key=f"{pod.namespace}/{model}" if model else None,
                  node=pod.node, gpu=gpu, terminating=pod.deleting, memory_fraction=running_share(pod),
                  starting_since=starting)


def occupied_share(share: float | None, inside_gib: float | None, memory_gib: float) -> float:
    """The share of a GPU's memory a holder occupies: the share it runs with (None: unknown, counts 0), never
    less than what its engine needs inside it (`headroom.least_share`: (weights + overhead) / memory); all of
    it (1.0) when its size is unknown or the GPU's memory is not > 0. O(1)."""
    if inside_gib is None or memory_gib <= 0:
        return 1.0
    return max(share or 0.0, least_share(inside_gib, memory_gib))


@dataclass(frozen=True)
class PodRef:
    """The pod being scheduled: who it is and which model it serves (None: unmanaged)."""

    namespace: str
    name: str
    uid: str
    model_key: str | None

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"


class World(Protocol):
    """Lookups the rule needs; the extender's cache implements them over its indexes, `Snapshot` over the
    controller's view of one decision."""

    def model(self, key: str) -> ModelPlan | None: ...

    def node(self, name: str) -> NodeGpus | None: ...

    def holders(self, node: str, gpu: int) -> Iterable[Holder]: ...

    def previous_models(self, node: str, gpu: int) -> Collection[str]:
        """Model keys of the pods that stopped holding (node, gpu) (deleted or finished; a dropped reservation
        does not count), a few most recent, since the cache started."""
        ...

    def start_gate(self) -> start_gate.StartGate | None:
        """The start gate now (kvsched.controller.start_gate); None: off."""
        ...

    def device(self, node: str, gpu: int) -> str | None:
        """What a pod bound to (node, gpu) gets as NVIDIA_VISIBLE_DEVICES: the UUID its GPU holder pod reports
        (kvsched.controller.holders), None until it has; the index itself with holders off."""
        ...


@dataclass(frozen=True)
class Snapshot:
    """A World over plain mappings: plans by model key, nodes by name, holders by (node, GPU index), the start gate
    (None: off), GPU holders' UUIDs by (node, GPU index) (`devices`; None: holders off, a GPU's device is its
    index). Nobody has left a GPU in it (`previous_models` is empty: that only orders slots, it never makes one
    usable)."""

    models: Mapping[str, ModelPlan]
    nodes: Mapping[str, NodeGpus]
    held: Mapping[tuple[str, int], Sequence[Holder]]
    gate: start_gate.StartGate | None = None
    devices: Mapping[tuple[str, int], str] | None = None  # holders' UUIDs by GPU; None: holders off

    def model(self, key: str) -> ModelPlan | None:
        return self.models.get(key)

    def node(self, name: str) -> NodeGpus | None:
        return self.nodes.get(name)

    def holders(self, node: str, gpu: int) -> Iterable[Holder]:
        return self.held.get((node, gpu), ())

    def previous_models(self, node: str, gpu: int) -> Collection[str]:
        return ()

    def start_gate(self) -> start_gate.StartGate | None:
        return self.gate

    def device(self, node: str, gpu: int) -> str | None:
        return str(gpu) if self.devices is None else self.devices.get((node, gpu))


@dataclass(frozen=True)
class SlotState:
    """One planned slot of the pod's model on one node: usable now, or why not and whether that can change."""

    slot: PlannedSlot
    usable: bool
    reason: str = ""
    resolvable: bool = True


@dataclass
class FilterDecision:
    """Filter's answer: names that pass, and node -> reason for the others (see the module docstring)."""

    passed: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    unresolvable: dict[str, str] = field(default_factory=dict)


def _fmt_gib(gib: float) -> str:
    return f"{gib:.1f} GiB"


def slot_states(pod: PodRef, plan: ModelPlan, node_name: str, world: World) -> list[SlotState]:
    """The states of `plan`'s slots on `node_name` for `pod` (empty when none is planned there), by GPU index.

    Holders that are `pod` itself (a retried bind) do not count against it. Complexity: O(slots on the node x
    holders of each GPU)."""
    slots = plan.slots_by_node.get(node_name, ())
    if not slots:
        return []
    node = world.node(node_name)
    gate = world.start_gate()
    states: list[SlotState] = []
    for slot in sorted(slots, key=lambda s: s.gpu):
        where = f"GPU {slot.gpu} planned for {plan.name}"
        if node is None:
            states.append(SlotState(slot, False, f"{where} is on a node kvsched does not know (deleted, or not "
                                    f"listed yet)", resolvable=False))
            continue
        if slot.gpu >= node.gpus:
            states.append(SlotState(slot, False, f"{where} is past the node's {node.gpus} GPU(s); the plan is "
                                    f"stale", resolvable=False))
            continue
        if world.device(node_name, slot.gpu) is None:
            states.append(SlotState(slot, False, f"{where} has no GPU holder pod that reported its UUID yet (the "
                                    f"controller creates one; the device plugin must allocate it a GPU)"))
            continue
        others = [h for h in world.holders(node_name, slot.gpu) if h.uid != pod.uid]
        same_model = [h for h in others if h.model_key == plan.key]
        if same_model:
            states.append(SlotState(slot, False, f"{where} is held by "
                                    + ", ".join(h.describe() for h in same_model)))
            continue
        waited_for = start_gate.starting(others, gate)
        if waited_for is not None and gate is not None:
            states.append(SlotState(slot, False, f"{where}: {start_gate.waiting_reason(waited_for, gate)}"))
            continue
        if plan.size_gib is None or node.gpu_memory_gib is None:
            # Without a size or a GPU memory there is nothing to check; the controller planned the slot.
            states.append(SlotState(slot, True))
            continue
        memory, reserve = node.gpu_memory_gib, node.reserve_gib
        need = plan.footprint_gib or 0.0
        held_gib = 0.0      # footprints (m + o + c) of the holders
        held_share = 0.0    # shares the holders occupy (`occupied_share`)
        contexts = plan.context_gib  # CUDA contexts outside the shares, X's included
        blockers: list[str] = []
        shares: list[str] = []
        for h in others:
            other = world.model(h.model_key) if h.model_key else None
            if other is None or other.size_gib is None:  # a pod whose model kvsched cannot size: it fills the GPU
                held_gib = memory
                held_share = 1.0
                blockers.append(f"{h.describe()} (size unknown)")
                continue
            held_gib += other.footprint_gib or 0.0
            contexts += other.context_gib
            share = occupied_share(h.memory_fraction, other.inside_gib, memory)
            held_share += share
            blockers.append(f"{h.describe()} ({_fmt_gib(other.footprint_gib or 0.0)})")
            shares.append(f"{h.describe()} runs with {share:.3f}")
        bound = share_bound(memory, reserve, contexts)
        wanted = occupied_share(slot.memory_fraction, plan.inside_gib, memory)
        if held_gib + need > memory - reserve + _MEMORY_EPSILON_GIB:
            free = max(0.0, memory - reserve - held_gib)
            kept = f" ({_fmt_gib(reserve)} reserved)" if reserve > 0 else ""
            states.append(SlotState(
                slot, False, f"{where} has {_fmt_gib(free)} of {_fmt_gib(memory)} free{kept} and needs "
                f"{_fmt_gib(need)}: {', '.join(blockers)} must move first"))
        elif held_share + wanted > bound + SHARE_EPSILON:
            states.append(SlotState(
                slot, False, f"{where} needs {wanted:.3f} of its memory and "
                f"{max(0.0, bound - held_share):.3f} is free of the {bound:.3f} its engines may share: "
                f"{', '.join(shares)} (the controller restarts a pod whose planned share is smaller than the one "
                f"it runs with)"))
        else:
            states.append(SlotState(slot, True))
    return states


def _node_verdict(pod: PodRef, plan: ModelPlan, node_name: str, world: World) -> tuple[bool, str, bool]:
    """(passes, reason, resolvable) for one node."""
    states = slot_states(pod, plan, node_name, world)
    if not states:
        return False, f"no slot of {plan.name} planned on this node", False
    if any(s.usable for s in states):
        return True, "", True
    resolvable = any(s.resolvable for s in states)
    return False, "; ".join(s.reason for s in states if s.resolvable or not resolvable), resolvable


def filter_nodes(pod: PodRef, candidates: Sequence[str], world: World) -> FilterDecision:
    """Split `candidates` for a managed pod (see the module docstring). An unmanaged pod, or a model with no
    ModelServing (yet), is answered by the caller. Complexity: O(candidates + planned slots x holders)."""
    assert pod.model_key is not None
    decision = FilterDecision()
    plan = world.model(pod.model_key)
    if plan is None:
        reason = f"no ModelServing {pod.model_key} (yet): kvsched has no plan for this pod's model"
        decision.failed = dict.fromkeys(candidates, reason)
        return decision
    # Most candidates have no slot of the model: mark them all in C (dict.fromkeys), then look at the few planned.
    unplanned = f"no slot of {plan.name} planned on this node"  # one string shared by every unplanned node
    decision.unresolvable = dict.fromkeys(candidates, unplanned)
    planned = plan.slots_by_node.keys() & decision.unresolvable.keys()
    if not planned:
        return decision
    for name in sorted(planned):  # by name: deterministic, and duplicates in `candidates` answered once
        del decision.unresolvable[name]
        passes, reason, resolvable = _node_verdict(pod, plan, name, world)
        if passes:
            decision.passed.append(name)
        elif resolvable:
            decision.failed[name] = reason
        else:
            decision.unresolvable[name] = reason
    return decision


def _is_warm(pod: PodRef, plan: ModelPlan, node: NodeGpus, world: World) -> bool:
    """Whether a GPU of `node` holds, or held, a pod of `plan`'s model other than `pod`. O(GPUs x holders)."""
    for gpu in range(node.gpus):
        if plan.key in world.previous_models(node.name, gpu):
            return True
        if any(h.model_key == plan.key and h.uid != pod.uid for h in world.holders(node.name, gpu)):
            return True
    return False


def _is_return(pod: PodRef, plan: ModelPlan, slot: PlannedSlot, world: World) -> bool:
    """Whether `slot`'s GPU is `pod`'s own (it holds or reserved it) or the one a pod of its model left last."""
    return (any(h.uid == pod.uid for h in world.holders(slot.node, slot.gpu))
            or plan.key in world.previous_models(slot.node, slot.gpu))


def _is_empty(pod: PodRef, slot: PlannedSlot, world: World) -> bool:
    """Whether no pod other than `pod` holds `slot`'s GPU."""
    return all(h.uid == pod.uid for h in world.holders(slot.node, slot.gpu))


def best_slot(pod: PodRef, plan: ModelPlan, states: Sequence[SlotState], world: World
              ) -> tuple[int, PlannedSlot] | None:
    """(score, slot) of the best usable slot among `states` (one node's, by GPU index; scores in the module
    docstring), ties to the lowest GPU index; None when none is usable. Complexity: O(slots x holders), plus
    O(GPUs x holders) of the node when no slot scores RETURN_SCORE."""
    usable = [state.slot for state in states if state.usable]
    if not usable:
        return None
    for slot in usable:
        if _is_return(pod, plan, slot, world):
            return RETURN_SCORE, slot
    node = world.node(usable[0].node)
    base = WARM_SCORE if node is not None and _is_warm(pod, plan, node, world) else COLD_SCORE
    scored = [(base + (EMPTY_GPU_BONUS if _is_empty(pod, slot, world) else 0), slot) for slot in usable]
    return max(scored, key=lambda pair: pair[0])  # max keeps the first of equals: the lowest GPU index


def score_nodes(pod: PodRef, candidates: Sequence[str], world: World) -> dict[str, int]:
    """Scores that differ from NEUTRAL_SCORE, by node: a node with a usable planned slot scores its best slot
    (`best_slot`, 4-10), one whose planned slots are all held BLOCKED_SCORE. Every other candidate (all of them
    for unmanaged pods and unknown models, and planned slots the node contradicts) scores NEUTRAL_SCORE.
    Complexity: O(candidates) in C, plus O(planned slots x holders + planned nodes x GPUs x holders)."""
    plan = world.model(pod.model_key) if pod.model_key else None
    if plan is None:
        return {}
    scores: dict[str, int] = {}
    # keys() & list walks the list against the few planned nodes: no set of every candidate is built.
    for name in sorted(plan.slots_by_node.keys() & candidates):
        states = slot_states(pod, plan, name, world)
        best = best_slot(pod, plan, states, world)
        if best is not None:
            scores[name] = best[0]
        elif any(s.resolvable for s in states):
            scores[name] = BLOCKED_SCORE
    return scores


@dataclass(frozen=True)
class Refusal:
    """Why a bind cannot take a slot on the chosen node; `conflict` when another bind got there first."""

    reason: str
    conflict: bool = False


def choose_slot(pod: PodRef, node_name: str, world: World) -> PlannedSlot | Refusal:
    """The best usable planned slot on `node_name` for `pod` (the one prioritize scored the node by: `best_slot`,
    ties to the lowest GPU index), or a Refusal with the reason. The caller reserves it under the same lock.
    Complexity: as `best_slot`."""
    assert pod.model_key is not None
    plan = world.model(pod.model_key)
    if plan is None:
        return Refusal(f"no ModelServing {pod.model_key}: kvsched has no plan for this pod's model")
    states = slot_states(pod, plan, node_name, world)
    if not states:
        return Refusal(f"no slot of {plan.name} planned on node {node_name}")
    best = best_slot(pod, plan, states, world)
    if best is not None:
        return best[1]
    return Refusal(f"node {node_name}: " + "; ".join(s.reason for s in states), conflict=True)
