"""Make-before-break moves: surge a Deployment by one replica, then scale back once the new replica is Ready.

A move whose target GPU has room for the new replica while the old one still runs (a step that is not
`stop_first`) starts the replacement first, where the model's pods come from a Deployment:
1. the old pod gets `controller.kubernetes.io/pod-deletion-cost: -1000` (the ReplicaSet deletes the pod of lowest
   cost first among pods equally bound, running and Ready), then the Deployment gets `spec.replicas + 1` and the
   record `kvsched.io/surge: <replicas before>/<old pod>/<start, epoch s>` in one patch;
2. the ReplicaSet creates a pod, which the extender binds to the model's free planned slot: the move's target (the
   old pod still holds its source, which is not planned);
3. once the model has as many bound, Ready pods besides the old one as it had replicas, one patch sets
   `spec.replicas` back and drops the record: the ReplicaSet deletes the old pod.
The replicas planned while the record stands are those before the surge (`planned_replicas`), so the surge never
re-plans. A surge that has not finished within `surge_timeout_s` is undone the same way (the ReplicaSet then
deletes the pod that did not get Ready: unbound and not-Ready pods go first); the old pod keeps its deletion
cost, which marks its move as tried, and its next step evicts it first. If anyone else changes `spec.replicas`
meanwhile (a person, an autoscaler), the record is dropped and their count stands. All of it is read from the
Deployment and the pods, so a new leader after a crash finishes or undoes what its predecessor started.
Deployments annotated `kvsched.io/make-before-break: "false"` (one whose replicas an autoscaler owns) and
ModelServings whose planned replicas differ from their Deployment's are moved evict-first.
Pure; called by kvsched.controller.decide and kvsched.controller.models.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from kvsched.api.names import (
    MAKE_BEFORE_BREAK_ANNOTATION,
    MODEL_LABEL,
    POD_DELETION_COST_ANNOTATION,
    SURGE_ANNOTATION,
    SURGE_DELETION_COST,
)
from kvsched.api.objects import DeploymentObj, ObjectKey, PodObj
from kvsched.api.records import DeploymentPatch


@dataclass(frozen=True)
class SurgeRecord:
    """A surge in progress on a Deployment: its `replicas` before, the `pod` (name) to go, since `since_s`
    (epoch s)."""

    replicas: int
    pod: str
    since_s: float

    def value(self) -> str:
        return f"{self.replicas}/{self.pod}/{self.since_s:.0f}"


def read_surge(deployment: DeploymentObj) -> SurgeRecord | None:
    """The Deployment's surge record, or None (absent or unreadable: a record that does not read is dropped by
    `surge_ends`)."""
    text = deployment.annotations.get(SURGE_ANNOTATION)
    if text is None:
        return None
    parts = text.split("/")
    if len(parts) != 3 or not parts[0].isascii() or not parts[0].isdigit() or not parts[1]:
        return None
    try:
        since = float(parts[2]) if parts[2].isascii() else None
    except ValueError:
        since = None
    if since is None or since != since or since in (float("inf"), float("-inf")):
        return None
    return SurgeRecord(int(parts[0]), parts[1], since)


def surging(deployment: DeploymentObj) -> SurgeRecord | None:
    """The record of a surge still in force: it reads, and `spec.replicas` is one more than before."""
    record = read_surge(deployment)
    if record is not None and deployment.replicas == record.replicas + 1:
        return record
    return None


def planned_replicas(deployment: DeploymentObj) -> int:
    """The Deployment's replicas as the plan counts them: those before a surge in force, else `spec.replicas`."""
    record = surging(deployment)
    return record.replicas if record is not None else deployment.replicas


def surge_timeout_s(start_timeout_s: float) -> float:
    """How long a surge may take before it is undone (s): twice the start timeout (the new pod may wait at its
    GPU's start gate for one start, then start itself), 600 s with the gate off."""
    return 2 * start_timeout_s if start_timeout_s > 0 else 600.0


def replacing(deployments: Sequence[DeploymentObj]) -> set[ObjectKey]:
    """The old pods of the surges in force: each has its replacement on the way and leaves when it is Ready."""
    out = set()
    for d in deployments:
        record = surging(d)
        if record is not None:
            out.add(ObjectKey(d.namespace, record.pod))
    return out


def may_surge(deployment: DeploymentObj | None, planned: int, pod: PodObj, enabled: bool) -> bool:
    """Whether a move of `pod` may start its replacement first (see the module docstring): make-before-break on,
    a Deployment that does not opt out, is not surging, and has the replicas planned, and a pod not tried before."""
    return (enabled and deployment is not None
            and deployment.annotations.get(MAKE_BEFORE_BREAK_ANNOTATION, "").lower() != "false"
            and read_surge(deployment) is None and deployment.replicas == planned
            and pod.annotations.get(POD_DELETION_COST_ANNOTATION) != SURGE_DELETION_COST)


@dataclass(frozen=True)
class SurgeEnd:
    """A patch that ends a surge and why: `finished` (the new replica is Ready), `undone` (timed out) or `dropped`
    (the record no longer applies)."""

    patch: DeploymentPatch
    outcome: str
    pod: str


def surge_ends(deployments: Sequence[DeploymentObj], model_of: Mapping[ObjectKey, str], pods: Sequence[PodObj],
               now_s: float | None, timeout_s: float) -> list[SurgeEnd]:
    """The patches that end surges (see the module docstring): finished once the model has as many bound, Ready
    pods besides the old one as it had replicas. `model_of`: the model (packer name) each managed Deployment's
    pods carry; `now_s`: epoch s (None: unknown, nothing times out). O(deployments + pods)."""
    ready: dict[str, list[PodObj]] = {}
    for p in pods:
        if MODEL_LABEL not in p.labels or p.deleting or p.terminal or not p.ready or p.node is None:
            continue
        ready.setdefault(f"{p.namespace}/{p.labels[MODEL_LABEL]}", []).append(p)
    live = {p.key: p for p in pods if not p.terminal}
    out = []
    for d in sorted(deployments, key=lambda d: (d.namespace, d.name)):
        if SURGE_ANNOTATION not in d.annotations:
            continue
        record = read_surge(d)
        drop: dict[str, Any] = {"metadata": {"annotations": {SURGE_ANNOTATION: None}}}
        if record is None or d.replicas != record.replicas + 1:
            out.append(SurgeEnd(DeploymentPatch(d.key, drop, False), "dropped", record.pod if record else ""))
            continue
        back = {**drop, "spec": {"replicas": record.replicas}}
        old = live.get(ObjectKey(d.namespace, record.pod))
        model = model_of.get(d.key, "")
        others = [p for p in ready.get(model, []) if p.name != record.pod]
        if old is None or old.deleting or len(others) >= record.replicas:
            out.append(SurgeEnd(DeploymentPatch(d.key, back, False), "finished", record.pod))
        elif now_s is not None and now_s - record.since_s >= timeout_s:
            out.append(SurgeEnd(DeploymentPatch(d.key, back, False), "undone", record.pod))
    return out


def surge_expiry_s(deployments: Sequence[DeploymentObj], timeout_s: float) -> float | None:
    """When the earliest surge in force times out (epoch s), None when none is in force."""
    times = [r.since_s + timeout_s for r in (surging(d) for d in deployments) if r is not None]
    return min(times, default=None)
