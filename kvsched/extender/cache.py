"""The extender's view of the cluster, fed by informers, answering filter/prioritize/bind without API calls.

Three handlers (`on_pod`, `on_node`, `on_model`) take watch events (type, object as a JSON-shaped dict) and keep
indexes: models by packer key, nodes by name, pods by uid and by namespace/name, and the holders of each GPU
(node, index). Bind reserves a slot here before it writes anything, so two binds racing for one slot cannot both
win; the reservation turns into a plain holder when the watch shows the pod annotated, and goes away when the
bind fails or the pod is deleted. One lock guards everything; each request holds it for O(candidate nodes).
It also remembers, per GPU, the models whose pods last left it (deleted or finished), so prioritize can send a
restarted or rolled replica back where its model ran (`previous_models`; lost when the extender restarts).

Start gate (kvsched.controller.start_gate): a reservation starts its pod's start at the time of the bind; once
the watch shows the pod bound, its PodScheduled time takes over, until it is Ready or the start timeout passes.

Holding rule (docs/architecture.md): a pod holds (node, gpu) from its bind until it is deleted, terminating or
not. One exception: a pod whose phase is Succeeded or Failed (completed, or evicted and left behind by its
Deployment) has no running container, so it holds no GPU memory and no slot.

Objects are read as the controller reads them: kvsched.api.readers, then the controller's value readers (GPU count
allocatable first, per-GPU memory, held GPU and share: kvsched.controller.inventory; model size and status slots:
kvsched.controller.models and status; the holder: kvsched.controller.slots.pod_holder). Where the controller makes
a bad value a problem on its object, the cache logs a warning and reads it as 0 GPUs or unknown memory.
Called by: kvsched.extender.app (queries), kvsched.runtime.extender (informer handlers).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from kvsched.api.names import DEFAULT_SCHEDULER_NAME, MODEL_LABEL
from kvsched.api.objects import PodObj
from kvsched.api.readers import read_model_serving, read_node, read_pod
from kvsched.controller.holders import holder_gpu, is_holder, reported_uuid
from kvsched.controller.inventory import annotated_gpu, node_gpu_count, node_memory_gib
from kvsched.controller.headroom import Headroom
from kvsched.controller.models import model_overhead_gib, model_size_gib
from kvsched.controller.start_gate import DEFAULT_START_TIMEOUT_S, StartGate
from kvsched.controller.slots import (
    FilterDecision, Holder, ModelPlan, NodeGpus, PlannedSlot, PodRef, Refusal, choose_slot, filter_nodes,
    pod_holder, score_nodes,
)
from kvsched.controller.status import planned_slots
from kvsched.units import UnitError

log = logging.getLogger(__name__)

_REMEMBERED_PODS = 10_000  # pods seen in filter requests, for a bind that outruns the pod watch
_PREVIOUS_MODELS_PER_GPU = 4  # models remembered per GPU: more than a GPU holds at once in practice

Obj = dict[str, Any]


@dataclass(frozen=True)
class PodInfo:
    """What the extender keeps of a pod (a few strings, not the 7 KB object)."""

    namespace: str
    name: str
    uid: str
    model: str | None           # the kvsched.io/model label
    scheduler_name: str
    node_name: str
    gpu: int | None             # the kvsched.io/gpu annotation, when it is a valid index (`annotated_gpu`)
    finished: bool              # phase Succeeded or Failed
    holder: Holder | None       # the GPU it holds (`slots.pod_holder`), with the share it runs with

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"

    @property
    def model_key(self) -> str | None:
        return f"{self.namespace}/{self.model}" if self.model else None


def pod_info(obj: Obj) -> PodInfo:
    """The fields the extender needs from a Pod in the API's JSON shape (kvsched.api.readers.read_pod: missing
    fields read as empty)."""
    pod = read_pod(obj)
    return PodInfo(namespace=pod.namespace, name=pod.name, uid=pod.uid, model=pod.labels.get(MODEL_LABEL) or None,
                   scheduler_name=pod.scheduler_name, node_name=pod.node or "", gpu=annotated_gpu(pod),
                   finished=pod.terminal, holder=pod_holder(pod))


def node_gpus(obj: Obj, reserve_gib: float = 0.0) -> NodeGpus:
    """GPU count (`inventory.node_gpu_count`: allocatable nvidia.com/gpu, else capacity) and memory per GPU
    (`inventory.node_memory_gib`: label kvsched.io/gpu-memory, else nvidia.com/gpu.memory in MiB) of a Node, as
    the controller reads them; a value the controller rejects reads as 0 GPUs / unknown memory, with a warning."""
    node = read_node(obj)
    try:
        gpus = node_gpu_count(node) or 0
    except UnitError as e:
        log.warning("node %s: %s; read as 0 GPUs", node.name, e)
        gpus = 0
    try:
        memory = node_memory_gib(node)
    except UnitError as e:
        log.warning("node %s: %s; GPU memory unknown", node.name, e)
        memory = None
    return NodeGpus(name=node.name, gpus=gpus, gpu_memory_gib=memory, reserve_gib=reserve_gib)


def model_plan(obj: Obj, headroom: Headroom = Headroom()) -> ModelPlan:
    """A ModelServing's packer key, size (`models.model_size_gib`), engine overhead (`models.model_overhead_gib`,
    the headroom's by default) and context (the headroom's), and planned slots (`status.planned_slots`;
    malformed entries are skipped with a warning: the controller writes them, a person may have edited them)."""
    ms = read_model_serving(obj)
    slots, malformed = planned_slots(ms.status)
    for i in malformed:
        log.warning("ModelServing %s: status.slots[%d] is malformed (%r); ignored", ms.model_name, i,
                    ms.status["slots"][i])
    return ModelPlan.from_slots(ms.model_name, model_size_gib(ms), slots,
                                model_overhead_gib(ms, headroom.overhead_gib), headroom.context_gib)


@dataclass(frozen=True)
class BindTarget:
    """What bind needs to know of a pod: who it is, whether kvsched manages it, where it is bound already."""

    ref: PodRef
    managed: bool
    node_name: str
    gpu: int | None


class Cache:
    """Thread-safe indexes of models, nodes and GPU-holding pods; implements slots.World under its lock."""

    def __init__(self, scheduler_name: str = DEFAULT_SCHEDULER_NAME, headroom: Headroom = Headroom(), *,
                 start_timeout_s: float = DEFAULT_START_TIMEOUT_S, wall: Callable[[], float] = time.time,
                 gpu_holders: bool = False, holder_namespace: str = "") -> None:
        """`headroom`: the controller's (DecisionConfig.headroom), the slot rule's memory headroom;
        `start_timeout_s`: how long a pod bound and not Ready holds its GPU's start gate (<= 0: gate off);
        `wall`: the wall clock, epoch seconds (tests pass a fake); `gpu_holders`: a slot is usable only once its
        GPU's holder pod (in `holder_namespace`) has reported a UUID, and that UUID is the pod's device (off, the
        default here and for tests: the GPU's index)."""
        self.scheduler_name = scheduler_name
        self.headroom = headroom
        self.start_timeout_s = start_timeout_s
        self.wall = wall
        self.gpu_holders = gpu_holders
        self.holder_namespace = holder_namespace
        self._uuids: dict[tuple[str, int], dict[str, str]] = {}  # GPU -> holder pod uid -> reported UUID
        self._uuid_of: dict[str, tuple[str, int]] = {}            # holder pod uid -> the GPU it reported for
        self._lock = threading.Lock()
        self._models: dict[str, ModelPlan] = {}
        self._nodes: dict[str, NodeGpus] = {}
        self._pods: dict[str, PodInfo] = {}            # by uid
        self._uid_by_key: dict[str, str] = {}          # namespace/name -> uid
        self._holders: dict[tuple[str, int], dict[str, Holder]] = {}
        self._held_by: dict[str, tuple[str, int]] = {}  # uid -> the GPU its holder entry sits on
        self._reservations: dict[str, Holder] = {}     # uid -> slot taken by a bind in flight
        self._remembered: OrderedDict[str, PodRef] = OrderedDict()
        # node -> gpu -> model keys of the pods that left that GPU, most recent last (at most
        # _PREVIOUS_MODELS_PER_GPU); bounded by the cluster's GPUs, dropped with the node.
        self._previous: dict[str, dict[int, tuple[str, ...]]] = {}
        self.sync_checks: list[Callable[[], bool]] = []
        self.current_checks: list[Callable[[], bool]] = []  # each False while its informer reconnects

    # -- readiness ----------------------------------------------------------------------------------------------
    def ready(self) -> bool:
        """True once every informer feeding the cache has delivered its first list."""
        return bool(self.sync_checks) and all(check() for check in self.sync_checks)

    def current(self) -> bool:
        """`ready()`, and no informer is reconnecting after a failed list or watch (while one is, a slot freed or
        planned meanwhile may be missing)."""
        return self.ready() and all(check() for check in self.current_checks)

    # -- informer handlers (one thread per informer) ------------------------------------------------------------
    def on_pod(self, event_type: str, obj: Obj) -> None:
        if self.gpu_holders:
            self._on_gpu_holder(event_type, read_pod(obj))
        info = pod_info(obj)
        if not info.uid:
            return
        with self._lock:
            if event_type == "DELETED":
                self._pods.pop(info.uid, None)
                if self._uid_by_key.get(info.key) == info.uid:
                    del self._uid_by_key[info.key]
                self._reservations.pop(info.uid, None)
            else:
                self._pods[info.uid] = info
                self._uid_by_key[info.key] = info.uid
                reservation = self._reservations.get(info.uid)
                if reservation is not None and info.node_name == reservation.node and info.gpu == reservation.gpu:
                    del self._reservations[info.uid]  # the watch now shows what the bind wrote
            self._reindex(info.uid)

    def _on_gpu_holder(self, event_type: str, pod: PodObj) -> None:
        """Index the UUID a GPU holder pod reports (kvsched.controller.holders.reported_uuid) by its GPU."""
        if not pod.uid or not is_holder(pod, self.holder_namespace):
            return
        gpu = holder_gpu(pod)
        uuid = None if event_type == "DELETED" else reported_uuid(pod)
        with self._lock:
            old = self._uuid_of.pop(pod.uid, None)
            if old is not None:
                self._uuids.get(old, {}).pop(pod.uid, None)
                if not self._uuids.get(old, True):
                    del self._uuids[old]
            if uuid is not None and gpu is not None:
                self._uuids.setdefault((gpu.node, gpu.index), {})[pod.uid] = uuid
                self._uuid_of[pod.uid] = (gpu.node, gpu.index)

    def on_node(self, event_type: str, obj: Obj) -> None:
        gpus = node_gpus(obj, self.headroom.reserve_gib)
        with self._lock:
            if event_type == "DELETED":
                self._nodes.pop(gpus.name, None)
                self._previous.pop(gpus.name, None)  # a node recreated under this name has empty disks
            else:
                self._nodes[gpus.name] = gpus

    def on_model(self, event_type: str, obj: Obj) -> None:
        plan = model_plan(obj, self.headroom)
        with self._lock:
            if event_type == "DELETED":
                self._models.pop(plan.key, None)
            else:
                self._models[plan.key] = plan

    def _holder_for(self, uid: str) -> Holder | None:
        """The GPU `uid` holds: from the pod itself when bound and annotated, else from a reservation."""
        info = self._pods.get(uid)
        if info is not None and (info.holder is not None or info.finished):
            return info.holder
        return self._reservations.get(uid)

    def _reindex(self, uid: str) -> None:
        old = self._held_by.pop(uid, None)
        left: Holder | None = None
        if old is not None:
            entries = self._holders.get(old)
            if entries is not None:
                left = entries.pop(uid, None)
                if not entries:
                    del self._holders[old]
        holder = self._holder_for(uid)
        if holder is not None:
            where = (holder.node, holder.gpu)
            self._holders.setdefault(where, {})[uid] = holder
            self._held_by[uid] = where
        if left is not None and old is not None and not left.reserved and left.model_key \
                and (holder is None or (holder.node, holder.gpu) != old):
            self._remember_previous(old[0], old[1], left.model_key)

    def _remember_previous(self, node: str, gpu: int, model_key: str) -> None:
        """Note that a pod of `model_key` left (node, gpu); a reservation that never ran is not noted."""
        by_gpu = self._previous.setdefault(node, {})
        models = tuple(m for m in by_gpu.get(gpu, ()) if m != model_key) + (model_key,)
        by_gpu[gpu] = models[-_PREVIOUS_MODELS_PER_GPU:]

    # -- slots.World (called with the lock held) ----------------------------------------------------------------
    def model(self, key: str) -> ModelPlan | None:
        return self._models.get(key)

    def node(self, name: str) -> NodeGpus | None:
        return self._nodes.get(name)

    def holders(self, node: str, gpu: int) -> Iterable[Holder]:
        return self._holders.get((node, gpu), {}).values()

    def previous_models(self, node: str, gpu: int) -> Collection[str]:
        return self._previous.get(node, {}).get(gpu, ())

    def start_gate(self) -> StartGate | None:
        return StartGate(self.wall(), self.start_timeout_s)

    def device(self, node: str, gpu: int) -> str | None:
        if not self.gpu_holders:
            return str(gpu)
        reported = self._uuids.get((node, gpu))
        return min(reported.values()) if reported else None  # two holders of one GPU: the controller deletes one

    # -- queries (thread-safe) ----------------------------------------------------------------------------------
    def is_managed(self, model: str | None, scheduler_name: str) -> bool:
        """A pod is managed when it has the model label and kvsched's scheduler name."""
        return bool(model) and scheduler_name == self.scheduler_name

    def remember(self, ref: PodRef) -> None:
        """Keep the identity of a pod seen in a filter request, in case its bind comes before the pod watch."""
        with self._lock:
            self._remembered[ref.uid] = ref
            self._remembered.move_to_end(ref.uid)
            while len(self._remembered) > _REMEMBERED_PODS:
                self._remembered.popitem(last=False)

    def filter(self, pod: PodRef, candidates: Sequence[str]) -> FilterDecision:
        with self._lock:
            return filter_nodes(pod, candidates, self)

    def score(self, pod: PodRef, candidates: Sequence[str]) -> dict[str, int]:
        with self._lock:
            return score_nodes(pod, candidates, self)

    def bind_target(self, namespace: str, name: str, uid: str) -> BindTarget | None:
        """The pod a bind request names, from the pod watch or else from a filter request; None if unknown.
        A pod known under the same name with another uid is a different pod (deleted and recreated): None."""
        with self._lock:
            info = self._pods.get(uid)
            if info is not None and info.key == f"{namespace}/{name}":
                managed = self.is_managed(info.model, info.scheduler_name)
                ref = PodRef(namespace, name, uid, info.model_key if managed else None)
                return BindTarget(ref, managed, info.node_name, info.gpu)
            remembered = self._remembered.get(uid)
            if remembered is not None and remembered.key == f"{namespace}/{name}":
                return BindTarget(remembered, remembered.model_key is not None, "", None)
            return None

    def reserve(self, pod: PodRef, node: str) -> PlannedSlot | Refusal:
        """Take the best usable slot on `node` for `pod` (`slots.choose_slot`: the one prioritize scored the node
        by, ties to the lowest GPU index), atomically. Idempotent: a pod that already holds or reserved a slot on
        `node` gets that slot again. A Refusal says why not."""
        with self._lock:
            held = self._holder_for(pod.uid)
            plan = self._models.get(pod.model_key or "")
            if held is not None and held.node == node and plan is not None:
                for slot in plan.slots_by_node.get(node, ()):
                    if slot.gpu == held.gpu:
                        return slot
            choice = choose_slot(pod, node, self)
            if isinstance(choice, PlannedSlot):
                self._reservations[pod.uid] = Holder(pod=pod.key, uid=pod.uid, model_key=pod.model_key,
                                                     node=node, gpu=choice.gpu, reserved=True,
                                                     memory_fraction=choice.memory_fraction,
                                                     starting_since=self.wall())
                self._reindex(pod.uid)
            return choice

    def device_of(self, node: str, gpu: int) -> str | None:
        """`device(node, gpu)`, thread-safe: what bind writes for the pod's NVIDIA_VISIBLE_DEVICES."""
        with self._lock:
            return self.device(node, gpu)

    def release(self, uid: str) -> None:
        """Drop the reservation of a bind that failed."""
        with self._lock:
            if self._reservations.pop(uid, None) is not None:
                self._reindex(uid)

    def counts(self) -> dict[str, int]:
        """Sizes of the indexes, for logs and tests."""
        with self._lock:
            return {"models": len(self._models), "nodes": len(self._nodes), "pods": len(self._pods),
                    "holders": len(self._held_by), "reservations": len(self._reservations)}
