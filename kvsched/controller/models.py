"""Models from ModelServings and annotated Deployments: what to plan, what is Invalid and why, and which
ModelServings to create, update or delete for annotated Deployments.

A ModelServing's spec gives a model (`<namespace>/<name>` for the packer). An annotated Deployment gets a
ModelServing of its name, owned by it, whose spec follows the annotations and `spec.replicas`. Bad input never
raises: the object gets a `Problem` (condition reason `InvalidSpec`, `InvalidAnnotation` or `WorkloadNotFound`
and a sentence naming the field). A Deployment whose annotations turn bad keeps its ModelServing's last good
spec, so its placement stays planned while the condition says what is wrong.
Called by: kvsched.controller.decide.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping

from kvsched.controller.objects import (
    API_VERSION,
    KIND,
    MODEL_ANNOTATIONS,
    RATE_ANNOTATION,
    SIZE_ANNOTATION,
    SLO_ANNOTATION,
    DeploymentObj,
    ModelServingObj,
    ObjectKey,
    World,
)
from kvsched.packer import InvalidInput, Model
from kvsched.units import UnitError, describe, memory_gib, number, seconds

INVALID_SPEC = "InvalidSpec"
INVALID_ANNOTATION = "InvalidAnnotation"
WORKLOAD_NOT_FOUND = "WorkloadNotFound"


@dataclass(frozen=True)
class Problem:
    """Why an object is Invalid: a condition reason and a sentence naming the field and the value."""

    reason: str
    message: str


@dataclass(frozen=True)
class ModelEntry:
    """One ModelServing as the planner sees it.

    `model` is what the packer gets (None when it cannot be planned: invalid with no good spec, or 0 replicas);
    `size_gib` is known whenever the spec parses (the affinity needs it); `invalid` is set when the object is
    Invalid, even if a last good spec still lets it be planned.
    """

    ms: ModelServingObj
    deployment: DeploymentObj | None
    replicas: int
    model: Model | None
    size_gib: float | None
    invalid: Problem | None


@dataclass(frozen=True)
class OwnedChange:
    """A write to the ModelServing an annotated Deployment owns: create (body), patch (spec) or delete."""

    action: str  # "create" | "patch" | "delete"
    key: ObjectKey
    body: Mapping[str, Any]


@dataclass(frozen=True)
class DeploymentProblem:
    """A Deployment that asked to be managed but cannot be (bad annotations without a ModelServing yet,
    or a ModelServing of its name that it does not own)."""

    deployment: DeploymentObj
    problem: Problem


@dataclass(frozen=True)
class ModelSet:
    entries: tuple[ModelEntry, ...]
    owned_changes: tuple[OwnedChange, ...]
    deployment_problems: tuple[DeploymentProblem, ...]


def _quantity_gib(value: object, field: str) -> float:
    # A ModelServing's modelSize is a Kubernetes quantity; a bare integer there means bytes, as in any quantity.
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    try:
        return memory_gib(value)
    except UnitError as e:
        raise UnitError(f"{field}: {e}") from None


def parse_spec(spec: Mapping[str, Any]) -> tuple[float, float, float]:
    """(size GiB, rate req/s, SLO s) of a ModelServing spec. Raises UnitError naming the field."""
    size = _quantity_gib(spec.get("modelSize"), "spec.modelSize")
    try:
        rate = number(spec.get("requestRate"), minimum=0.0)
    except UnitError as e:
        raise UnitError(f"spec.requestRate: {e}") from None
    try:
        slo = seconds(spec.get("sloSeconds"), zero_ok=False)
    except UnitError as e:
        raise UnitError(f"spec.sloSeconds: {e}") from None
    return size, rate, slo


def spec_from_annotations(deployment: DeploymentObj) -> dict[str, Any]:
    """The ModelServing spec an annotated Deployment asks for. Raises UnitError naming the annotation."""
    notes = deployment.annotations
    for name in MODEL_ANNOTATIONS:
        if name not in notes:
            raise UnitError(f"annotation {name} is missing (a managed Deployment needs {', '.join(MODEL_ANNOTATIONS)})")
    size_text = notes[SIZE_ANNOTATION].strip()
    try:
        memory_gib(size_text)
    except UnitError as e:
        raise UnitError(f"annotation {SIZE_ANNOTATION}: {e}") from None
    rate_text = notes[RATE_ANNOTATION].strip()
    try:
        rate = float(rate_text)
    except ValueError:
        raise UnitError(f"annotation {RATE_ANNOTATION}: {rate_text!r} is not a number of requests per second") from None
    if not math.isfinite(rate) or rate < 0:
        raise UnitError(f"annotation {RATE_ANNOTATION}: must be a finite number >= 0, got {rate_text!r}")
    try:
        slo = seconds(notes[SLO_ANNOTATION].strip(), zero_ok=False)
    except UnitError as e:
        raise UnitError(f"annotation {SLO_ANNOTATION}: {e}") from None
    return {
        "workloadRef": {"kind": "Deployment", "name": deployment.name},
        "modelSize": size_text,
        "requestRate": _plain(rate),
        "sloSeconds": _plain(slo),
        "replicas": deployment.replicas,
    }


def _plain(x: float) -> int | float:
    """4.0 -> 4 so that specs read as people wrote them."""
    return int(x) if x == int(x) and abs(x) < 2**53 else x


def specs_equal(a: Mapping[str, Any], b: Mapping[str, Any]) -> bool:
    """Whether two ModelServing specs say the same (numbers compared as numbers, 4 == 4.0)."""
    keys = set(a) | set(b)
    for k in keys:
        x, y = a.get(k), b.get(k)
        if isinstance(x, (int, float)) and isinstance(y, (int, float)) and not isinstance(x, bool):
            if float(x) != float(y):
                return False
        elif x != y:
            return False
    return True


def owned_body(deployment: DeploymentObj, spec: Mapping[str, Any]) -> dict[str, Any]:
    """A new ModelServing owned by `deployment` (garbage-collected with it)."""
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "metadata": {
            "name": deployment.name,
            "namespace": deployment.namespace,
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "Deployment", "name": deployment.name,
                                 "uid": deployment.uid, "controller": True, "blockOwnerDeletion": True}],
        },
        "spec": dict(spec),
    }


def _owned_by(ms: ModelServingObj, deployment: DeploymentObj) -> bool:
    return ms.owner is not None and ms.owner.kind == "Deployment" and ms.owner.name == deployment.name and (
        not deployment.uid or not ms.owner.uid or ms.owner.uid == deployment.uid)


def collect_models(world: World) -> ModelSet:
    """Entries for every ModelServing, owned-ModelServing writes, and Deployments that cannot be managed.

    O(ModelServings + Deployments). Never raises for bad values.
    """
    deployments = {d.key: d for d in world.deployments}
    servings = {ms.key: ms for ms in world.model_servings}
    entries: list[ModelEntry] = []
    changes: list[OwnedChange] = []
    dep_problems: list[DeploymentProblem] = []

    for dep in sorted(world.deployments, key=lambda d: d.key):
        ms = servings.get(dep.key)
        owned = ms is not None and _owned_by(ms, dep)
        if not dep.annotated:
            if ms is not None and owned:
                changes.append(OwnedChange("delete", dep.key, {}))
            continue
        if ms is not None and not owned:
            dep_problems.append(DeploymentProblem(dep, Problem(
                INVALID_ANNOTATION, f"ModelServing {dep.key} exists and is not owned by this Deployment; "
                "remove the kvsched.io annotations or that ModelServing")))
            continue
        try:
            spec = spec_from_annotations(dep)
        except UnitError as e:
            if ms is None:
                dep_problems.append(DeploymentProblem(dep, Problem(INVALID_ANNOTATION, str(e))))
            continue  # an existing ModelServing keeps its last good spec; its entry carries the problem
        if ms is None:
            changes.append(OwnedChange("create", dep.key, owned_body(dep, spec)))
        elif not specs_equal(ms.spec, spec):
            changes.append(OwnedChange("patch", dep.key, {"spec": spec}))

    for ms in sorted(world.model_servings, key=lambda m: m.key):
        entries.append(_entry(ms, deployments))
    return ModelSet(tuple(entries), tuple(changes), tuple(dep_problems))


def _entry(ms: ModelServingObj, deployments: Mapping[ObjectKey, DeploymentObj]) -> ModelEntry:
    ref = ms.spec.get("workloadRef")
    ref_name = ref.get("name") if isinstance(ref, dict) else None
    ref_kind = ref.get("kind", "Deployment") if isinstance(ref, dict) else None
    deployment = deployments.get(ObjectKey(ms.namespace, ref_name)) if isinstance(ref_name, str) else None
    invalid: Problem | None = None
    owner_dep = deployment is not None and _owned_by(ms, deployment) and deployment.annotated
    if owner_dep:
        assert deployment is not None
        try:
            spec_from_annotations(deployment)
        except UnitError as e:
            invalid = Problem(INVALID_ANNOTATION, f"Deployment {deployment.key}: {e}; planning with the last "
                              "good values in spec")
    if not isinstance(ref_name, str) or ref_kind != "Deployment":
        problem = Problem(INVALID_SPEC, f"spec.workloadRef must name a Deployment, got {describe(ref)}")
        return ModelEntry(ms, None, 0, None, None, problem)
    if deployment is None:
        problem = Problem(WORKLOAD_NOT_FOUND, f"Deployment {ms.namespace}/{ref_name} named by spec.workloadRef "
                          "does not exist")
        return ModelEntry(ms, None, 0, None, _size_or_none(ms), problem)
    replicas = _replicas(ms, deployment, owner_dep)
    if isinstance(replicas, Problem):
        return ModelEntry(ms, deployment, 0, None, _size_or_none(ms), replicas)
    try:
        size, rate, slo = parse_spec(ms.spec)
    except UnitError as e:
        return ModelEntry(ms, deployment, replicas, None, None, invalid or Problem(INVALID_SPEC, str(e)))
    if replicas == 0:
        return ModelEntry(ms, deployment, 0, None, size, invalid)
    try:
        model = Model(ms.model_name, size, rate, slo, replicas)
    except InvalidInput as e:
        return ModelEntry(ms, deployment, replicas, None, size,
                          Problem(INVALID_SPEC, f"spec.{e.field}: {e.why} (got {e.value!r})"))
    return ModelEntry(ms, deployment, replicas, model, size, invalid)


def _size_or_none(ms: ModelServingObj) -> float | None:
    try:
        return _quantity_gib(ms.spec.get("modelSize"), "spec.modelSize")
    except UnitError:
        return None


def _replicas(ms: ModelServingObj, deployment: DeploymentObj, owner_dep: bool) -> int | Problem:
    """Replicas to plan: the owning Deployment's, else spec.replicas, else the workload's."""
    if owner_dep or "replicas" not in ms.spec:
        return max(deployment.replicas, 0)
    value = ms.spec["replicas"]
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        return Problem(INVALID_SPEC, f"spec.replicas must be an integer >= 0, got {describe(value)}")
    return value
