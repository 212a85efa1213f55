"""GPU holder pods: one per GPU the plan uses, so that the device plugin allocates that GPU to kvsched.

kvsched's pods request no `nvidia.com/gpu` (they share GPUs by memory fraction), so without holders the device
plugin, the scheduler's resource fit and ResourceQuotas do not know them, and may hand a planned GPU to another
pod. A holder (NVIDIA KAI scheduler's pattern) is a small pod in kvsched's namespace, pinned to its node, that
requests `nvidia.com/gpu: 1` and tiny cpu/memory, with a PriorityClass so that ordinary pods do not preempt it. It
runs `kvsched gpu-holder`, which writes the UUID of the GPU it was given onto its own pod (`kvsched.io/gpu-uuid`);
the extender binds a replica to a planned GPU only once that GPU's holder has reported, and writes the UUID into
the pod's `kvsched.io/visible-devices` annotation, which the template's NVIDIA_VISIBLE_DEVICES reads.

Rules (pure; the loop writes what `holder_changes` returns):
- wanted: every GPU (node, index) the plan places a replica on, and every GPU a managed pod still holds (bound
  and annotated, terminating included), so a holder goes only after the last replica left and the GPU is no
  longer planned;
- one holder per wanted GPU: created when missing; a holder of a GPU not wanted is deleted, and so is any
  second holder of one GPU (the oldest stays: it may hold the device already);
- a holder being deleted still holds its device: no new one for that GPU until it is gone.
A GPU index is kvsched's name for one of a node's GPUs (0 .. GPUs left to kvsched - 1, see inventory.py); which
physical GPU it is, the device plugin decides when it allocates the holder, and the UUID says.
Called by: kvsched.controller.decide (changes), kvsched.controller.inventory (`is_holder`),
kvsched.extender.cache (`is_holder`, `holder_gpu`, `reported_uuid`).
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from collections.abc import Iterable, Mapping
from typing import Any

from kvsched.api.names import (
    GPU_RESOURCE,
    GPU_UUID_ANNOTATION,
    HOLDER_CONTAINER,
    HOLDER_GPU_ANNOTATION,
    HOLDER_LABEL,
    HOLDER_NODE_ANNOTATION,
    POD_NAME_ENV,
    POD_NAMESPACE_ENV,
)
from kvsched.api.objects import ObjectKey, PodObj
from kvsched.api.records import HolderChange
from kvsched.controller.config import DecisionConfig
from kvsched.packer import GpuId

HOLDER_CPU = "10m"        # the process idles in one wait(): nothing to compute
HOLDER_MEMORY = "128Mi"   # Python and the Kubernetes client: ~60-80 MiB resident
HOLDER_UID = 65532        # the image's user (Dockerfile), as the chart's podSecurityContext runs kvsched
_MAX_NAME = 253           # a Pod name is a DNS subdomain


def is_holder(pod: PodObj, namespace: str) -> bool:
    """Whether `pod` is a GPU holder: labelled `kvsched.io/gpu-holder=true` in kvsched's `namespace` (a pod
    with the label elsewhere is not trusted)."""
    return pod.namespace == namespace and pod.labels.get(HOLDER_LABEL) == "true"


def holder_gpu(pod: PodObj) -> GpuId | None:
    """The GPU a holder pod holds for kvsched, from its annotations (node, index), or None when they are missing
    or the index is not a whole number >= 0."""
    node = pod.annotations.get(HOLDER_NODE_ANNOTATION)
    text = pod.annotations.get(HOLDER_GPU_ANNOTATION, "")
    if not node or not text.strip().isdigit():
        return None
    return GpuId(node, int(text))


def reported_uuid(pod: PodObj) -> str | None:
    """The UUID a holder reports (`kvsched.io/gpu-uuid`) while it holds its GPU: bound to the node it is for,
    not terminating, not Succeeded/Failed; else None."""
    gpu = holder_gpu(pod)
    if gpu is None or pod.node != gpu.node or pod.deleting or pod.terminal:
        return None
    uuid = pod.annotations.get(GPU_UUID_ANNOTATION, "").strip()
    return uuid or None


def holder_name(gpu: GpuId) -> str:
    """`kvsched-gpu-holder-<node>-<index>`; a node name too long for that is replaced by a digest of it."""
    name = f"kvsched-gpu-holder-{gpu.node}-{gpu.index}"
    if len(name) <= _MAX_NAME:
        return name
    digest = hashlib.sha256(gpu.node.encode()).hexdigest()[:16]
    return f"kvsched-gpu-holder-{digest}-{gpu.index}"


def holder_pod(gpu: GpuId, config: DecisionConfig) -> dict[str, Any]:
    """The Pod that holds `gpu`: pinned to its node by a required node affinity on `metadata.name` (as DaemonSets
    pin theirs), scheduled by kvsched's scheduler, tolerating every taint (the node is in kvsched's pool, which
    may be tainted for it), `nvidia.com/gpu: 1` and tiny cpu/memory as requests and limits (so that quotas on
    any of them can admit it), its name and namespace from the Downward API for `kvsched gpu-holder`, and the
    `restricted` Pod Security Standard's settings (a non-root user, the image's 65532; no privilege escalation,
    no capabilities, RuntimeDefault seccomp; a read-only root filesystem), so a release namespace that enforces
    it admits the holder: the GPU reaches it through the device plugin's allocation, not through privileges."""
    resources = {"cpu": HOLDER_CPU, "memory": HOLDER_MEMORY, GPU_RESOURCE: "1"}
    spec: dict[str, Any] = {
        "schedulerName": config.scheduler_name,
        "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
            {"matchFields": [{"key": "metadata.name", "operator": "In", "values": [gpu.node]}]}]}}},
        "tolerations": [{"operator": "Exists"}],
        "terminationGracePeriodSeconds": 5,
        "securityContext": {"runAsNonRoot": True, "runAsUser": HOLDER_UID, "runAsGroup": HOLDER_UID,
                            "seccompProfile": {"type": "RuntimeDefault"}},
        "containers": [{
            "name": HOLDER_CONTAINER,
            "image": config.holder_image,
            "args": ["gpu-holder"],
            "env": [{"name": POD_NAME_ENV, "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                    {"name": POD_NAMESPACE_ENV, "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}}],
            "resources": {"requests": dict(resources), "limits": dict(resources)},
            "securityContext": {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                                "privileged": False, "capabilities": {"drop": ["ALL"]}},
        }],
    }
    if config.holder_priority_class:
        spec["priorityClassName"] = config.holder_priority_class
    if config.holder_service_account:
        spec["serviceAccountName"] = config.holder_service_account
    return {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {
            "name": holder_name(gpu), "namespace": config.holder_namespace,
            "labels": {HOLDER_LABEL: "true"},
            "annotations": {HOLDER_NODE_ANNOTATION: gpu.node, HOLDER_GPU_ANNOTATION: str(gpu.index)},
        },
        "spec": spec,
    }


def holder_changes(wanted: Iterable[GpuId], pods: Iterable[PodObj], config: DecisionConfig
                   ) -> tuple[HolderChange, ...]:
    """The creates and deletes that leave exactly one holder per `wanted` GPU and none elsewhere (rules in the
    module docstring); with holders off, deletes of every holder left from when they were on. Deterministic: by node, index, then pod name.
    O(pods + wanted log wanted)."""
    wanted_set = set(wanted) if config.gpu_holders else set()  # off: the holders left from before go
    by_gpu: dict[GpuId, list[PodObj]] = defaultdict(list)
    strays: list[PodObj] = []
    for pod in pods:
        if not is_holder(pod, config.holder_namespace) or pod.terminal:
            continue
        gpu = holder_gpu(pod)
        if gpu is None:
            strays.append(pod)
        else:
            by_gpu[gpu].append(pod)
    changes: list[HolderChange] = []
    for gpu in sorted(wanted_set | by_gpu.keys(), key=lambda g: (g.node, g.index)):
        holders = sorted(by_gpu.get(gpu, []), key=lambda p: (p.deleting, p.created, p.name))
        if gpu in wanted_set:
            if not holders:
                body = holder_pod(gpu, config)
                changes.append(HolderChange("create", ObjectKey(config.holder_namespace, body["metadata"]["name"]),
                                            body))
            extra = holders[1:]
        else:
            extra = holders
        changes.extend(_delete(p) for p in extra if not p.deleting)
    changes.extend(_delete(p) for p in sorted(strays, key=lambda p: p.name) if not p.deleting)
    return tuple(changes)


def _delete(pod: PodObj) -> HolderChange:
    return HolderChange("delete", pod.key, uid=pod.uid)


def holder_uuids(pods: Iterable[PodObj], namespace: str) -> Mapping[GpuId, str]:
    """The UUID each GPU's holder reports (`reported_uuid`), by GPU; when two report, the one `holder_changes`
    keeps (the oldest) wins. O(pods log pods)."""
    out: dict[GpuId, str] = {}
    for pod in sorted(pods, key=lambda p: (p.deleting, p.created, p.name)):
        if not is_holder(pod, namespace):
            continue
        uuid = reported_uuid(pod)
        gpu = holder_gpu(pod)
        if uuid is not None and gpu is not None and gpu not in out:
            out[gpu] = uuid
    return out
