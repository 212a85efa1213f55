"""GPU inventory: which GPUs of which nodes the packer may plan on.

A node is in kvsched's pool when it matches the node selector, has `nvidia.com/gpu` > 0 (allocatable, else
capacity: `node_gpu_count`) and a per-GPU memory label (`kvsched.io/gpu-memory`, a quantity, wins over
`nvidia.com/gpu.memory`, MiB, fractions allowed: `node_memory_gib`). It is planned on only while it is schedulable
(not cordoned), Ready and not being deleted; a node that stopped being Ready stays planned on for a grace period
(`DecisionConfig.node_not_ready_grace_s`, from its Ready condition's last transition), so that a flap moves nobody.
A label that is not a quantity, a GPU count that is not a whole
number, or a GPU memory not above the GPU memory reserve (`DecisionConfig.gpu_memory_reserve_gib`, which every
GPU gets) takes the node out with a problem (an event on the Node).

The small readers here (`node_gpu_count`, `node_memory_gib`, `annotated_gpu`, `held_gpu`, `running_share`) give
a Node's or a Pod's values their meaning once, for the controller and the extender's cache alike; they raise
UnitError for a bad value and the caller decides what that means (a problem here, a warning and "unknown" there).

GPUs taken by unmanaged pods (bound pods requesting `nvidia.com/gpu` that are neither kvsched's replicas nor its
GPU holder pods, kvsched.controller.holders) are withheld whole: the device plugin gives such a pod whole GPUs.
A node leaves kvsched `nvidia.com/gpu` minus what those pods request, and kvsched numbers those GPUs 0 .. N-1;
the N withheld indices are the highest that no managed pod holds (then the highest), so that no replica moves.
With GPU holders on (the default) an index names no physical GPU: the device plugin picks the GPU when it
allocates the index's holder, and the holder's UUID says which, so kvsched and the other pods never share one.
With holders off the index is the device's own and the highest ones are a guess (the device plugin does not say
which it gave): docs/deploy.md says when that is safe (a pool no other pod requests GPUs on).
Called by: kvsched.controller.decide, slots and shares, kvsched.extender.cache, kvsched.cli (`running_share`).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Collection, Iterable, Mapping

from kvsched.api.names import (
    GPU_ANNOTATION,
    GPU_MEMORY_LABEL,
    GPU_MEMORY_MIB_LABEL,
    GPU_RESOURCE,
    MEMORY_FRACTION_ANNOTATION,
    MODEL_LABEL,
)
from kvsched.api.objects import NodeObj, PodObj
from kvsched.controller.config import DecisionConfig
from kvsched.controller.holders import is_holder
from kvsched.packer import Gpu
from kvsched.units import UnitError, decimal_number, memory_gib, memory_share, timestamp_s, whole_number


@dataclass(frozen=True)
class NodeProblem:
    """A node left out of the pool because of a value on it: reason (CamelCase) and a sentence."""

    node: str
    reason: str
    message: str


@dataclass(frozen=True)
class PoolNode:
    """A node of the pool whose labels parse: its GPU count and memory, and whether it is usable now."""

    name: str
    gpus: int
    memory_gib: float
    usable: bool
    labels: Mapping[str, str]


@dataclass(frozen=True)
class Inventory:
    """GPUs to plan on (node, then index order), the pool, problems, GPUs withheld for unmanaged pods."""

    gpus: tuple[Gpu, ...]
    pool: tuple[PoolNode, ...]
    problems: tuple[NodeProblem, ...]
    withheld: Mapping[str, tuple[int, ...]]
    grace_ends_s: float | None = None  # epoch s when the first NotReady node in its grace period leaves the plan


def is_managed(pod: PodObj, config: DecisionConfig) -> bool:
    """A pod is kvsched's when it carries the model label and uses kvsched's scheduler (docs/architecture.md)."""
    return MODEL_LABEL in pod.labels and pod.scheduler_name == config.scheduler_name


def model_key(pod: PodObj) -> str:
    """The packer name `<namespace>/<model label>` of a managed pod's model."""
    return f"{pod.namespace}/{pod.labels.get(MODEL_LABEL, '')}"


def orphaned(pod: PodObj, sized_models: Collection[str]) -> bool:
    """Whether a managed pod's model is no longer kvsched's to plan: no ModelServing, or one whose size does not
    read (`sized_models` lists the others). One rule for both parts: the extender's slot rule counts such a pod as
    filling its GPU (its memory is unknown), the controller withholds that GPU from the packer while the pod holds
    it, and the migrations do not wait for such a pod (it may never be bound or Ready). O(1)."""
    return model_key(pod) not in sized_models


def annotated_gpu(pod: PodObj) -> int | None:
    """The GPU index in the pod's `kvsched.io/gpu` annotation (bind writes it), or None when absent or not a
    whole number >= 0. Whether the pod holds that GPU is `held_gpu`'s question."""
    text = pod.annotations.get(GPU_ANNOTATION)
    if text is None:
        return None
    try:
        return whole_number(text)
    except UnitError:
        return None


def held_gpu(pod: PodObj) -> int | None:
    """The GPU index a pod holds: its `annotated_gpu` while it is bound and not Succeeded/Failed (a terminating
    pod still holds it, docs/architecture.md "Pods"); None otherwise."""
    if pod.node is None or pod.terminal:
        return None
    return annotated_gpu(pod)


def running_share(pod: PodObj) -> float | None:
    """The share of its GPU's memory `pod` runs with (its `kvsched.io/gpu-memory-fraction` annotation), or None
    when it has none or it is not a number in (0, 1]."""
    return memory_share(pod.annotations.get(MEMORY_FRACTION_ANNOTATION))


def node_gpu_count(node: NodeObj) -> int | None:
    """GPUs of a node: its `nvidia.com/gpu` allocatable, else its capacity (kvsched.api.readers takes the first
    present), or None when it reports neither. Raises UnitError when the value is not a whole number >= 0."""
    if node.gpu_capacity is None:
        return None
    try:
        return whole_number(node.gpu_capacity)
    except UnitError:
        raise UnitError(f"{GPU_RESOURCE} {node.gpu_capacity!r} is not a whole number") from None


def node_memory_gib(node: NodeObj) -> float | None:
    """Per-GPU memory of a node in GiB from its labels: `kvsched.io/gpu-memory` (a quantity) wins over
    `nvidia.com/gpu.memory` (a number of MiB > 0, fractions allowed); None when it has neither label. Raises
    UnitError naming the label when its value is bad."""
    if GPU_MEMORY_LABEL in node.labels:
        try:
            return memory_gib(node.labels[GPU_MEMORY_LABEL])
        except UnitError as e:
            raise UnitError(f"label {GPU_MEMORY_LABEL}: {e}") from None
    if GPU_MEMORY_MIB_LABEL in node.labels:
        text = node.labels[GPU_MEMORY_MIB_LABEL].strip()
        try:
            mib = decimal_number(text)
        except UnitError:
            raise UnitError(f"label {GPU_MEMORY_MIB_LABEL}: {text!r} is not a number of MiB") from None
        if not mib > 0:
            raise UnitError(f"label {GPU_MEMORY_MIB_LABEL}: must be a number of MiB > 0, got {text!r}")
        return mib / 1024.0
    return None


def not_ready_grace_ends(node: NodeObj, now_s: float | None, config: DecisionConfig) -> float | None:
    """When a node that is not Ready leaves the plan (epoch s), if that is still ahead of `now_s`; None when it is
    Ready, out of its grace period, has no readable transition time (never Ready: no grace), or `now_s` is None."""
    if node.ready or now_s is None or config.node_not_ready_grace_s <= 0:
        return None
    since = timestamp_s(node.not_ready_since)
    if since is None:
        return None
    ends = since + config.node_not_ready_grace_s
    return ends if ends > now_s else None


def build_inventory(nodes: Iterable[NodeObj], pods: Iterable[PodObj], config: DecisionConfig,
                    now_s: float | None = None, sized_models: Collection[str] | None = None) -> Inventory:
    """The GPUs the packer may use now, the pool, and the nodes left out for a bad value; a NotReady node counts as
    Ready within its grace period at `now_s` (epoch s; None: no grace). With `sized_models` (model keys
    `<namespace>/<name>` whose ModelServing has a readable size), the GPU a managed pod of any other model holds is
    withheld whole, as the extender's slot rule counts such a pod (`orphaned`). O(nodes + pods)."""
    pods = list(pods)
    unmanaged_gpus: dict[str, int] = defaultdict(int)
    managed_held: dict[str, set[int]] = defaultdict(set)
    orphan_held: dict[str, set[int]] = defaultdict(set)
    for pod in pods:
        if pod.node is None or pod.terminal:
            continue
        if is_managed(pod, config):
            gpu = held_gpu(pod)
            if gpu is not None:
                managed_held[pod.node].add(gpu)
                if sized_models is not None and orphaned(pod, sized_models):
                    orphan_held[pod.node].add(gpu)
        elif pod.gpu_request > 0 and not is_holder(pod, config.holder_namespace):
            unmanaged_gpus[pod.node] += pod.gpu_request
    gpus: list[Gpu] = []
    pool: list[PoolNode] = []
    problems: list[NodeProblem] = []
    withheld: dict[str, tuple[int, ...]] = {}
    grace_ends: list[float] = []
    for node in sorted(nodes, key=lambda n: n.name):
        if not node.name or node.gpu_capacity is None or not config.node_selector.matches(node.labels):
            continue  # a node without a name (no such Node exists) cannot be planned on
        try:
            count = node_gpu_count(node) or 0
        except UnitError as e:
            problems.append(NodeProblem(node.name, "InvalidGPUCapacity", f"{e}; the node is left out"))
            continue
        if count == 0:
            continue
        try:
            memory = node_memory_gib(node)
        except UnitError as e:
            problems.append(NodeProblem(node.name, "InvalidGPUMemoryLabel", f"{e}; the node is left out"))
            continue
        if memory is None:
            problems.append(NodeProblem(node.name, "NoGPUMemoryLabel",
                                        f"neither {GPU_MEMORY_LABEL} nor {GPU_MEMORY_MIB_LABEL} is set; the node "
                                        "is left out"))
            continue
        if memory <= config.gpu_memory_reserve_gib:
            problems.append(NodeProblem(node.name, "GPUMemoryBelowReserve",
                                        f"its GPUs' memory ({memory:g} GiB) is not more than the GPU memory reserve "
                                        f"({config.gpu_memory_reserve_gib:g} GiB); the node is left out"))
            continue
        grace = not_ready_grace_ends(node, now_s, config)
        if grace is not None:
            grace_ends.append(grace)
        usable = not node.unschedulable and (node.ready or grace is not None) and not node.deleting
        pool.append(PoolNode(node.name, count, memory, usable, node.labels))
        if not usable:
            continue
        taken = _withheld(count, unmanaged_gpus.get(node.name, 0), managed_held.get(node.name, set()))
        taken = tuple(sorted(set(taken) | {i for i in orphan_held.get(node.name, ()) if i < count}))
        if taken:
            withheld[node.name] = taken
        gpus.extend(Gpu(node.name, i, memory, config.gpu_memory_reserve_gib) for i in range(count) if i not in taken)
    return Inventory(tuple(gpus), tuple(pool), tuple(problems), withheld, min(grace_ends, default=None))


def _withheld(count: int, wanted: int, held: set[int]) -> tuple[int, ...]:
    """The `wanted` highest indices, those no managed pod holds first. O(count log count)."""
    order = sorted(range(count), key=lambda i: (i in held, -i))
    return tuple(sorted(order[:min(wanted, count)]))
