"""The writes a decision asks for, as plain frozen records: the controller builds them, kvsched.k8s carries them
out, the runtime loop orders and retries them, tests compare them.

`Eviction` is the one record of a migration step, from the plan to the API call: the controller's `plan_steps`
and `resize_steps` make them from the packer's `MigrationStep`s and the running pods, `Decision.steps` lists them
and `Decision.eviction` is the one to start now. `EvictionRefused` is what a writer raises when the Eviction API
says no; `utc_now` the wall-clock time as Kubernetes writes it.
Called by: kvsched.controller (decide, migrations, shares, models), kvsched.k8s.writers, kvsched.runtime.loop,
kvsched.cli, tests.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass
from typing import Any, Mapping

from kvsched.api.objects import ObjectKey, PodObj
from kvsched.packer import GpuId


def utc_now() -> str:
    """The current time as RFC 3339 in UTC, to the second (`2024-05-01T12:00:00Z`), as Kubernetes writes it."""
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True)
class EventTarget:
    """The object an event is about."""

    kind: str
    api_version: str
    namespace: str
    name: str
    uid: str


@dataclass(frozen=True)
class Event:
    target: EventTarget
    type: str  # "Normal" | "Warning"
    reason: str
    message: str


@dataclass(frozen=True)
class StatusWrite:
    """A ModelServing's whole status, written through the status subresource."""

    key: ObjectKey
    status: Mapping[str, Any]


@dataclass(frozen=True)
class DeploymentPatch:
    """A strategic-merge patch of a Deployment; `rollout` when it changes the pod template."""

    key: ObjectKey
    patch: Mapping[str, Any]
    rollout: bool


@dataclass(frozen=True)
class OwnedChange:
    """A write to the ModelServing an annotated Deployment owns: create (body), patch (spec) or delete."""

    action: str  # "create" | "patch" | "delete"
    key: ObjectKey
    body: Mapping[str, Any]


@dataclass(frozen=True)
class PodNudge:
    """Annotate pending pod `pod` with `digest` (PLANNED_SLOTS_ANNOTATION): kube-scheduler does not watch
    ModelServings, so a pod the extender rejected before its model had a free slot would wait for an unrelated
    cluster event (or up to 5 minutes); an update of the pod itself puts it back in the scheduling queue."""

    pod: ObjectKey
    digest: str


@dataclass(frozen=True)
class HolderChange:
    """Create a GPU holder pod (`body`: the whole Pod) or delete one (`uid`: a precondition, so that a holder
    recreated under the same name is not deleted by mistake). kvsched.controller.holders decides them."""

    action: str  # "create" or "delete"
    key: ObjectKey
    body: Mapping[str, Any] | None = None
    uid: str = ""


@dataclass(frozen=True)
class PdbChange:
    """Create a model's PodDisruptionBudget (`body`: the whole object), patch kvsched's own (`body`: a JSON merge
    patch) or delete it (`uid`: a precondition, so that a PDB recreated under that name by someone else is not
    deleted by mistake). kvsched.controller.pdb decides them."""

    action: str  # "create" | "patch" | "delete"
    key: ObjectKey
    body: Mapping[str, Any] | None = None
    uid: str = ""


@dataclass(frozen=True)
class Eviction:
    """One migration step: evict `pod`, a replica of `model` (the packer's `<namespace>/<name>`), from GPU `source`
    so that its replacement takes the free planned slot `target`. `stop_first`: `target` lacks memory for the
    model until someone else leaves. `resize`: a restart in place (source == target) so that the pod runs with
    its planned memory share (kvsched.controller.shares). `stop`: a running replica the plan leaves unplaced stops
    (source == target) so that the replicas planned on its GPU fit (kvsched.controller.leftovers)."""

    model: str
    pod: PodObj
    source: GpuId
    target: GpuId
    stop_first: bool = False
    resize: bool = False
    stop: bool = False


@dataclass(frozen=True)
class Surge:
    """A make-before-break move (kvsched.controller.surge): mark `step.pod` to be deleted first by its ReplicaSet
    (`POD_DELETION_COST_ANNOTATION`), then scale Deployment `deployment` from `replicas` to `replicas + 1` with
    the surge record `record` (`SURGE_ANNOTATION`) in one patch."""

    step: Eviction
    deployment: ObjectKey
    replicas: int
    record: str


class EvictionRefused(Exception):
    """The Eviction API said no (429: a PodDisruptionBudget, or 5xx); `reason` goes to the condition."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(f"{reason}: {message}")
        self.reason = reason
        self.message = message


class BindOutcomeUnknown(Exception):
    """A Binding was sent and nobody can say yet whether it was made (no reply, and the pod could not be read
    back): the pod may run on the GPU it was annotated with. The binder rolled nothing back; the extender keeps its
    reservation until the watch says what happened. str() is fit for the pod's FailedScheduling event."""
