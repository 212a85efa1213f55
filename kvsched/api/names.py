"""Every name two parts of kvsched share, declared once (docs/architecture.md fixes them; the chart's CRD, RBAC
and scheduler configuration spell the same, and tests/chart ties them together).

The controller, the extender, the Kubernetes adapter, the tests, the benchmarks and hack/ take them from here.
Called by: every package but kvsched.packer.
"""

from __future__ import annotations

import math

# The ModelServing custom resource.
GROUP = "kvsched.io"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
KIND = "ModelServing"
PLURAL = "modelservings"

# Pod labels and annotations.
MODEL_LABEL = "kvsched.io/model"
GPU_ANNOTATION = "kvsched.io/gpu"
MEMORY_FRACTION_ANNOTATION = "kvsched.io/gpu-memory-fraction"
PLANNED_SLOTS_ANNOTATION = "kvsched.io/planned-slots"  # on a pending pod: digest of its model's slots when nudged
VISIBLE_DEVICES_ANNOTATION = "kvsched.io/visible-devices"  # bind writes the GPU's UUID (holders on) or its index

# GPU holder pods (docs/controller.md, "GPU holders"): one per GPU kvsched uses, requesting `nvidia.com/gpu: 1` so
# that the device plugin allocates that GPU to kvsched; `kvsched gpu-holder` writes the UUID it was given.
HOLDER_LABEL = "kvsched.io/gpu-holder"                # "true" on every holder pod
HOLDER_NODE_ANNOTATION = "kvsched.io/holder-node"     # the node it holds a GPU of
HOLDER_GPU_ANNOTATION = "kvsched.io/holder-gpu"       # kvsched's index of that GPU on the node (a slot's `gpu`)
GPU_UUID_ANNOTATION = "kvsched.io/gpu-uuid"           # on the holder pod: the UUID NVML reports for its GPU
HOLDER_CONTAINER = "holder"
DEFAULT_HOLDER_PRIORITY_CLASS = "kvsched-gpu-holder"  # the chart creates it
DEFAULT_HOLDER_SERVICE_ACCOUNT = "kvsched-gpu-holder"  # the chart creates it: get and patch pods in its namespace

# Deployment annotations: a Deployment carrying any of them asks to be managed.
SIZE_ANNOTATION = "kvsched.io/model-size"
RATE_ANNOTATION = "kvsched.io/request-rate"
SLO_ANNOTATION = "kvsched.io/slo-seconds"
MODEL_ANNOTATIONS = (SIZE_ANNOTATION, RATE_ANNOTATION, SLO_ANNOTATION)
# Optional: the model's engine overhead (a quantity), overriding the controller's --engine-overhead-gib. It alone
# does not make a Deployment managed.
ENGINE_OVERHEAD_ANNOTATION = "kvsched.io/engine-overhead"

# Make-before-break moves (docs/controller.md, "Make-before-break"): while kvsched surges a Deployment by one
# replica it records "<replicas before>/<old pod>/<start, epoch s>" on it, so that a new leader finishes or undoes
# the surge; the old pod gets the ReplicaSet's deletion cost so that scaling back deletes it first.
SURGE_ANNOTATION = "kvsched.io/surge"
MAKE_BEFORE_BREAK_ANNOTATION = "kvsched.io/make-before-break"  # "false" on a Deployment: its moves evict first
POD_DELETION_COST_ANNOTATION = "controller.kubernetes.io/pod-deletion-cost"
SURGE_DELETION_COST = "-1000"  # the old pod's cost: below every default (0), so the ReplicaSet deletes it first

# Per-model PodDisruptionBudgets (docs/controller.md, "PodDisruptionBudgets"): with `--pod-disruption-budget` (or
# PDB_ANNOTATION "true" on a model's Deployment; "false" opts one out) the controller keeps one PDB per model,
# named PDB_PREFIX + the ModelServing's name, selecting the model's pods by MODEL_LABEL and owned by the
# ModelServing. It touches only PDBs labelled MANAGED_BY_LABEL=MANAGED_BY_VALUE.
PDB_ANNOTATION = "kvsched.io/pod-disruption-budget"
PDB_PREFIX = "kvsched-"
MANAGED_BY_LABEL = "app.kubernetes.io/managed-by"
MANAGED_BY_VALUE = "kvsched"

# ModelServing spec fields of a model's memory: its weights and (optional) its engine's overhead, quantities.
MODEL_SIZE_FIELD = "modelSize"
ENGINE_OVERHEAD_FIELD = "engineOverhead"

# Node resources and labels.
GPU_RESOURCE = "nvidia.com/gpu"
GPU_MEMORY_LABEL = "kvsched.io/gpu-memory"       # a quantity per GPU; wins over the next
GPU_MEMORY_MIB_LABEL = "nvidia.com/gpu.memory"   # MiB per GPU, from GPU Feature Discovery
HOSTNAME_LABEL = "kubernetes.io/hostname"

# Container environment the controller sets on managed pod templates.
VISIBLE_DEVICES_ENV = "NVIDIA_VISIBLE_DEVICES"
MEMORY_FRACTION_ENV = "KVSCHED_GPU_MEMORY_FRACTION"
# Downward-API env of the holder pod: who it is, so that it can annotate itself.
POD_NAME_ENV = "KVSCHED_POD_NAME"
POD_NAMESPACE_ENV = "KVSCHED_POD_NAMESPACE"

# The kube-scheduler profile that calls the extender (`spec.schedulerName` of managed pods); the chart's default.
DEFAULT_SCHEDULER_NAME = "kvsched"

# Pods that can hold a GPU: Succeeded and Failed pods run no container (the watches of both processes leave them out).
LIVE_PODS_FIELD_SELECTOR = "status.phase!=Succeeded,status.phase!=Failed"

# Memory shares (`MEMORY_FRACTION_ANNOTATION`, status slots' `memoryFraction`) are written with SHARE_DECIMALS
# decimals, rounded down so that the planned shares of a GPU sum to at most 1; sums compare with SHARE_EPSILON.
SHARE_DECIMALS = 3
SHARE_EPSILON = 1e-6


def share_of(fraction: float) -> float:
    """A memory fraction rounded down to SHARE_DECIMALS (the 1e-9 absorbs binary error: 0.57 stays 0.57)."""
    scale = float(10 ** SHARE_DECIMALS)
    return math.floor(fraction * scale + 1e-9) / scale


def share_text(share: float) -> str:
    """A share as written in `MEMORY_FRACTION_ANNOTATION` and the pod's env: SHARE_DECIMALS decimals."""
    return f"{share:.{SHARE_DECIMALS}f}"
