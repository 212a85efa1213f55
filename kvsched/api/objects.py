"""The controller's view of the cluster: plain frozen snapshots of Nodes, Pods, Deployments, ModelServings and
PodDisruptionBudgets.

The readers in kvsched.api.readers build these from API objects (camelCase dicts); the unit tests build them by hand. They
carry the raw strings people wrote (annotations, labels, spec values): giving them meaning, and rejecting what has
none, is the decision core's job (kvsched.controller.models / inventory), so that a bad value becomes a condition
and an event on its object instead of an exception in a reader. The names they are read by are in kvsched.api.names.
Called by: kvsched.controller.decide and its helpers, kvsched.api.readers, kvsched.k8s.snapshot, kvsched.runtime.loop,
tests/controller.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

from kvsched.api.names import MODEL_ANNOTATIONS


@dataclass(frozen=True, order=True)
class ObjectKey:
    """A namespaced object by namespace and name (namespace "" for cluster-scoped objects such as Nodes)."""

    namespace: str
    name: str

    def __str__(self) -> str:
        return f"{self.namespace}/{self.name}" if self.namespace else self.name


@dataclass(frozen=True)
class NodeObj:
    """A Node: labels, its `nvidia.com/gpu` as written (`gpu_capacity`: allocatable, else capacity; None when it
    reports neither), cordon and readiness. `not_ready_since`: when a node that is not Ready stopped being Ready
    (its Ready condition's lastTransitionTime, RFC 3339; "" when Ready, or when it has no Ready condition yet)."""

    name: str
    uid: str = ""
    labels: Mapping[str, str] = field(default_factory=dict)
    gpu_capacity: str | None = None
    unschedulable: bool = False
    ready: bool = True
    deleting: bool = False
    not_ready_since: str = ""


@dataclass(frozen=True)
class PodObj:
    """A Pod: where it is bound, its kvsched labels and annotations, its GPU requests and its life stage.

    `gpu_request` is the pod's `nvidia.com/gpu` request (max over init containers, sum over containers, as the
    scheduler counts it); `ready` is the Ready condition; `deleting` a set deletionTimestamp; `terminal` phase
    Succeeded or Failed (a terminal pod holds nothing). `bound_at` is when it was bound to its node, RFC 3339 as
    written: the PodScheduled condition's lastTransitionTime while that condition is True, else `status.startTime`
    of a pod with a node, else "" (unbound, or no time recorded); the start gate (kvsched.controller.start_gate)
    times a starting pod from it.
    """

    namespace: str
    name: str
    uid: str = ""
    node: str | None = None
    labels: Mapping[str, str] = field(default_factory=dict)
    annotations: Mapping[str, str] = field(default_factory=dict)
    scheduler_name: str = "default-scheduler"
    gpu_request: int = 0
    ready: bool = False
    deleting: bool = False
    terminal: bool = False
    created: str = ""
    bound_at: str = ""

    @property
    def key(self) -> ObjectKey:
        return ObjectKey(self.namespace, self.name)


@dataclass(frozen=True)
class DeploymentObj:
    """A Deployment: its annotations, wanted replicas, pod template and strategy as plain dicts (camelCase)."""

    namespace: str
    name: str
    uid: str = ""
    annotations: Mapping[str, str] = field(default_factory=dict)
    replicas: int = 1
    template: Mapping[str, Any] = field(default_factory=dict)
    strategy: Mapping[str, Any] = field(default_factory=dict)

    @property
    def key(self) -> ObjectKey:
        return ObjectKey(self.namespace, self.name)

    @property
    def annotated(self) -> bool:
        """Whether any kvsched model annotation is present (the Deployment asks to be managed)."""
        return any(a in self.annotations for a in MODEL_ANNOTATIONS)


@dataclass(frozen=True)
class OwnerRef:
    """The controlling owner of an object (kind, name, uid)."""

    kind: str
    name: str
    uid: str


@dataclass(frozen=True)
class ModelServingObj:
    """A ModelServing: spec and status as plain dicts, its generation and its controlling owner if any."""

    namespace: str
    name: str
    uid: str = ""
    generation: int = 1
    spec: Mapping[str, Any] = field(default_factory=dict)
    status: Mapping[str, Any] = field(default_factory=dict)
    owner: OwnerRef | None = None

    @property
    def key(self) -> ObjectKey:
        return ObjectKey(self.namespace, self.name)

    @property
    def model_name(self) -> str:
        """The packer's name of this model: `<namespace>/<name>`."""
        return f"{self.namespace}/{self.name}"


@dataclass(frozen=True)
class PdbObj:
    """A policy/v1 PodDisruptionBudget: its labels, controlling owner, and spec values as written (`selector`: the
    label selector as a dict, None when it has none, which selects no pod; `max_unavailable`/`min_available`: an
    int or a percentage string, None when unset; `unhealthy_policy`: `unhealthyPodEvictionPolicy`, None when the
    stored object has none, e.g. an apiserver that does not know the field)."""

    namespace: str
    name: str
    uid: str = ""
    labels: Mapping[str, str] = field(default_factory=dict)
    owner: OwnerRef | None = None
    selector: Mapping[str, Any] | None = None
    max_unavailable: int | str | None = None
    min_available: int | str | None = None
    unhealthy_policy: str | None = None
    deleting: bool = False

    @property
    def key(self) -> ObjectKey:
        return ObjectKey(self.namespace, self.name)


@dataclass(frozen=True)
class World:
    """One consistent snapshot of everything the controller decides from."""

    nodes: tuple[NodeObj, ...] = ()
    pods: tuple[PodObj, ...] = ()
    deployments: tuple[DeploymentObj, ...] = ()
    model_servings: tuple[ModelServingObj, ...] = ()
    pdbs: tuple[PdbObj, ...] = ()  # PodDisruptionBudgets (kvsched.controller.pdb)
