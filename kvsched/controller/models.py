"""Models from ModelServings and annotated Deployments: what to plan, what is Invalid and why, and which
ModelServings to create, update or delete for annotated Deployments.

A ModelServing's spec gives a model (`<namespace>/<name>` for the packer). An annotated Deployment gets a
ModelServing of its name, owned by it, whose spec follows the annotations and `spec.replicas` (and says
`fromAnnotations: true`), even when its annotations are bad. Bad input never raises: the object gets a `Problem`
(condition reason `InvalidSpec`, `InvalidAnnotation` or `WorkloadNotFound` and a sentence naming the field and
the value). A spec field whose annotation is bad keeps its last good value, so a Deployment whose annotations
turn bad stays planned while the condition says what is wrong; a field that never had a good value is left out
(the CRD allows that only with `fromAnnotations: true`), and the model is not planned until it is fixed.
Called by: kvsched.controller.decide; `model_size_gib` also by kvsched.extender.cache.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

from kvsched.api.names import (
    API_VERSION,
    ENGINE_OVERHEAD_ANNOTATION,
    ENGINE_OVERHEAD_FIELD,
    KIND,
    MODEL_ANNOTATIONS,
    MODEL_LABEL,
    MODEL_SIZE_FIELD,
    RATE_ANNOTATION,
    SIZE_ANNOTATION,
    SLO_ANNOTATION,
)
from kvsched.api.objects import DeploymentObj, ModelServingObj, ObjectKey, World
from kvsched.api.records import OwnedChange
from kvsched.controller.headroom import Headroom
from kvsched.controller.surge import planned_replicas
from kvsched.packer import InvalidInput, Model
from kvsched.packer.domain import MAX_LOAD, MAX_REPLICAS
from kvsched.units import UnitError, decimal_number, describe, memory_gib, memory_gib_or_zero, number, seconds

INVALID_SPEC = "InvalidSpec"
INVALID_ANNOTATION = "InvalidAnnotation"
WORKLOAD_NOT_FOUND = "WorkloadNotFound"
INVALID_NAME = "InvalidName"
LABEL_VALUE_MAX = 63  # a label value's length limit; the model label's value is the ModelServing's name
# The longest latency SLO a model may ask for, in seconds (a day): the CRD's bound on spec.sloSeconds. With the
# packer's MAX_LOAD (rate / SLO) and MAX_REPLICAS, LABEL_VALUE_MAX (metadata.name) and units.SMALLEST_MEMORY_BYTES
# (modelSize), the bounds the CRD (helm/kvsched/crds) enforces and this module checks again: an older CRD may be
# installed, and an owned ModelServing's spec must pass them or the apiserver refuses every write of it.
MAX_SLO_S = 86_400.0
FROM_ANNOTATIONS = "fromAnnotations"
# The spec field each model annotation sets, in spec order.
# The ModelServing spec field each packer Model field comes from (for messages naming the user's field).
SPEC_FIELD_OF_MODEL_FIELD = {"size_gib": MODEL_SIZE_FIELD, "rate_rps": "requestRate", "slo_s": "sloSeconds"}
FIELD_OF_ANNOTATION = {SIZE_ANNOTATION: MODEL_SIZE_FIELD, RATE_ANNOTATION: "requestRate",
                       SLO_ANNOTATION: "sloSeconds"}
# Optional annotations and their spec fields: absent means the controller's default (the field is left out).
OPTIONAL_FIELD_OF_ANNOTATION = {ENGINE_OVERHEAD_ANNOTATION: ENGINE_OVERHEAD_FIELD}


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
    Invalid, even if a last good spec still lets it be planned. `overhead_gib` and `context_gib`: its engine's
    memory inside and outside its share (`spec.engineOverhead`, else the default; the context is the default).
    """

    ms: ModelServingObj
    deployment: DeploymentObj | None
    replicas: int
    model: Model | None
    size_gib: float | None
    invalid: Problem | None
    overhead_gib: float = 0.0
    context_gib: float = 0.0


@dataclass(frozen=True)
class DeploymentProblem:
    """A Deployment whose annotations cannot be taken as they are: bad annotations and no ModelServing yet (it is
    created in the same decision, and carries the condition from then on), or a ModelServing of its name that it
    does not own."""

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


def parse_overhead(spec: Mapping[str, Any]) -> float | None:
    """A ModelServing spec's `engineOverhead` in GiB (a quantity >= 0; a bare integer means bytes), None when
    absent. Raises UnitError naming the field."""
    value = spec.get(ENGINE_OVERHEAD_FIELD)
    if value is None:
        return None
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    try:
        return memory_gib_or_zero(value)
    except UnitError as e:
        raise UnitError(f"spec.{ENGINE_OVERHEAD_FIELD}: {e}") from None


def model_overhead_gib(ms: ModelServingObj, default_gib: float) -> float:
    """A ModelServing's engine overhead in GiB: `spec.engineOverhead`, else `default_gib` (also when the field is
    bad: the controller makes that Invalid). The one reader: entries here, the extender's cache."""
    try:
        value = parse_overhead(ms.spec)
    except UnitError:
        return default_gib
    return default_gib if value is None else value


def parse_spec(spec: Mapping[str, Any]) -> tuple[float, float, float]:
    """(size GiB, rate req/s, SLO s) of a ModelServing spec. Raises UnitError naming the field."""
    size = _quantity_gib(spec.get("modelSize"), "spec.modelSize")
    try:
        rate = number(spec.get("requestRate"), minimum=0.0)
    except UnitError as e:
        raise UnitError(f"spec.requestRate: {e}") from None
    try:
        slo = _slo(spec.get("sloSeconds"))
    except UnitError as e:
        raise UnitError(f"spec.sloSeconds: {e}") from None
    return size, rate, slo


def _slo(value: object) -> float:
    """A latency SLO in seconds, > 0 and at most MAX_SLO_S. Raises UnitError."""
    slo = seconds(value, zero_ok=False)
    if slo > MAX_SLO_S:
        raise UnitError(f"must be at most {MAX_SLO_S:g} seconds (a day), got {value!r}")
    return slo


@dataclass(frozen=True)
class AnnotationValues:
    """What an annotated Deployment's annotations say: the spec fields whose annotation parses, and one sentence
    per annotation that does not (naming the annotation and its value), in MODEL_ANNOTATIONS order."""

    fields: Mapping[str, Any]
    problems: tuple[str, ...]

    def problem(self, prefix: str = "") -> Problem | None:
        """The InvalidAnnotation problem (None when every annotation is good), its message led by `prefix`."""
        if not self.problems:
            return None
        return Problem(INVALID_ANNOTATION, prefix + "; ".join(self.problems))


def read_annotations(deployment: DeploymentObj) -> AnnotationValues:
    """The spec fields the model annotations of `deployment` give, and what is wrong with the others.
    Never raises. O(1)."""
    notes = deployment.annotations
    fields: dict[str, Any] = {}
    problems: list[str] = []
    for name in MODEL_ANNOTATIONS:
        if name not in notes:
            problems.append(f"annotation {name} is missing (a managed Deployment needs "
                            f"{', '.join(MODEL_ANNOTATIONS)})")
            continue
        try:
            fields[FIELD_OF_ANNOTATION[name]] = _annotation_value(name, notes[name].strip())
        except UnitError as e:
            problems.append(f"annotation {name}: {e}")
    rate, slo = fields.get("requestRate"), fields.get("sloSeconds")
    if rate is not None and slo is not None and not rate / slo <= MAX_LOAD:
        del fields["requestRate"]  # the CRD refuses the pair: keep the last good rate
        problems.append(f"annotation {RATE_ANNOTATION}: divided by {SLO_ANNOTATION} ({notes[SLO_ANNOTATION]!r}) "
                        f"must be at most {MAX_LOAD:g} requests/s^2, got {notes[RATE_ANNOTATION]!r}")
    for name, field in OPTIONAL_FIELD_OF_ANNOTATION.items():
        if name in notes:
            try:
                fields[field] = _annotation_value(name, notes[name].strip())
            except UnitError as e:
                problems.append(f"annotation {name}: {e}")
    return AnnotationValues(fields, tuple(problems))


def _annotation_value(name: str, text: str) -> Any:
    """The spec value of one model annotation. Raises UnitError naming the value."""
    if name == SIZE_ANNOTATION:
        memory_gib(text)
        return text
    if name == ENGINE_OVERHEAD_ANNOTATION:
        memory_gib_or_zero(text)
        return text
    if name == RATE_ANNOTATION:
        try:
            rate = decimal_number(text)
        except UnitError:
            raise UnitError(f"{text!r} is not a number of requests per second") from None
        if rate < 0:
            raise UnitError(f"must be a finite number >= 0, got {text!r}")
        return _plain(rate)
    return _plain(_slo(text))


def spec_from_annotations(deployment: DeploymentObj, current: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The spec of the ModelServing an annotated Deployment owns. A field whose annotation is bad keeps its value
    in `current` (the last good one) or is left out; `fromAnnotations: true` lets the CRD accept that."""
    values = read_annotations(deployment)
    spec: dict[str, Any] = {"workloadRef": {"kind": "Deployment", "name": deployment.name}}
    for field in FIELD_OF_ANNOTATION.values():
        if field in values.fields:
            spec[field] = values.fields[field]
        elif current is not None and field in current:
            spec[field] = current[field]
    for name, field in OPTIONAL_FIELD_OF_ANNOTATION.items():
        if field in values.fields:
            spec[field] = values.fields[field]
        elif name in deployment.annotations and current is not None and field in current:
            spec[field] = current[field]  # a bad value keeps the last good one; no annotation: the default
    rate, slo = spec.get("requestRate"), spec.get("sloSeconds")
    if isinstance(rate, (int, float)) and isinstance(slo, (int, float)) and slo > 0 and not rate / slo <= MAX_LOAD:
        # A new SLO with the last good rate: keep the last good SLO too (or leave it out), as the CRD wants.
        if current is not None and "sloSeconds" in current:
            spec["sloSeconds"] = current["sloSeconds"]
        else:
            del spec["sloSeconds"]
    # The CRD's range; planning uses the Deployment's own count, and more than MAX_REPLICAS is an InvalidSpec.
    spec["replicas"] = min(max(planned_replicas(deployment), 0), MAX_REPLICAS)  # not the surge's extra one
    spec[FROM_ANNOTATIONS] = True
    return spec


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


def collect_models(world: World, engine: Headroom = Headroom()) -> ModelSet:
    """Entries for every ModelServing, owned-ModelServing writes, and Deployments that cannot be managed.
    `engine`: its overhead and context are those of models whose spec does not set their own.

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
        if ms is None and len(dep.name) > LABEL_VALUE_MAX:
            # The CRD refuses such a ModelServing (and the model label could not hold the name): the problem
            # lives on the Deployment.
            dep_problems.append(DeploymentProblem(dep, _name_problem(dep.name)))
            continue
        if ms is not None and not owned:
            dep_problems.append(DeploymentProblem(dep, Problem(
                INVALID_ANNOTATION, f"ModelServing {dep.key} exists and is not owned by this Deployment; "
                "remove the kvsched.io annotations or that ModelServing")))
            continue
        spec = spec_from_annotations(dep, ms.spec if ms is not None else None)
        if ms is None:
            # Created even when the annotations are bad, so that the problem has an object to live on (status,
            # metrics, kubectl get); until it is seen back, the Deployment carries the problem.
            problem = read_annotations(dep).problem()
            if problem is not None:
                dep_problems.append(DeploymentProblem(dep, problem))
            changes.append(OwnedChange("create", dep.key, owned_body(dep, spec)))
        elif not specs_equal(ms.spec, spec):
            changes.append(OwnedChange("patch", dep.key, {"spec": spec}))

    for ms in sorted(world.model_servings, key=lambda m: m.key):
        entries.append(_entry(ms, deployments, engine))
    return ModelSet(tuple(entries), tuple(changes), tuple(dep_problems))


def _entry(ms: ModelServingObj, deployments: Mapping[ObjectKey, DeploymentObj], engine: Headroom
           ) -> ModelEntry:
    entry = _entry_of(ms, deployments, engine)
    overhead = model_overhead_gib(ms, engine.overhead_gib)
    if entry.model is not None:
        overhead = entry.model.overhead_gib
    return ModelEntry(entry.ms, entry.deployment, entry.replicas, entry.model, entry.size_gib, entry.invalid,
                      overhead, engine.context_gib)


def _entry_of(ms: ModelServingObj, deployments: Mapping[ObjectKey, DeploymentObj], engine: Headroom
              ) -> ModelEntry:
    ref = ms.spec.get("workloadRef")
    ref_name = ref.get("name") if isinstance(ref, dict) else None
    ref_kind = ref.get("kind", "Deployment") if isinstance(ref, dict) else None
    deployment = deployments.get(ObjectKey(ms.namespace, ref_name)) if isinstance(ref_name, str) else None
    if len(ms.name) > LABEL_VALUE_MAX:
        # The template patch would set an invalid label, which the apiserver refuses on every round.
        return ModelEntry(ms, deployment, 0, None, None, _name_problem(ms.name))  # no size: no template patch
    invalid: Problem | None = None
    owner_dep = deployment is not None and _owned_by(ms, deployment) and deployment.annotated
    if owner_dep:
        assert deployment is not None
        invalid = read_annotations(deployment).problem(f"Deployment {deployment.key}: ")
    if not isinstance(ref_name, str) or ref_kind != "Deployment":
        problem = Problem(INVALID_SPEC, f"spec.workloadRef must name a Deployment, got {describe(ref)}")
        return ModelEntry(ms, None, 0, None, None, problem)
    if deployment is None:
        problem = Problem(WORKLOAD_NOT_FOUND, f"Deployment {ms.namespace}/{ref_name} named by spec.workloadRef "
                          "does not exist")
        return ModelEntry(ms, None, 0, None, model_size_gib(ms), problem)
    replicas = _replicas(ms, deployment, owner_dep)
    if isinstance(replicas, Problem):
        return ModelEntry(ms, deployment, 0, None, model_size_gib(ms), replicas)
    spec = ms.spec
    if owner_dep and any(f not in spec for f in FIELD_OF_ANNOTATION.values()):
        # A field left out for a bad annotation: once the annotation is fixed, plan with the value the patch
        # in flight writes rather than call the stored spec invalid for one round.
        assert deployment is not None
        spec = spec_from_annotations(deployment, spec)
    try:
        size, rate, slo = parse_spec(spec)
    except UnitError as e:
        return ModelEntry(ms, deployment, replicas, None, None, invalid or Problem(INVALID_SPEC, str(e)))
    try:
        overhead = parse_overhead(spec)
    except UnitError as e:
        return ModelEntry(ms, deployment, replicas, None, size, invalid or Problem(INVALID_SPEC, str(e)))
    if invalid is not None:
        invalid = Problem(invalid.reason, f"{invalid.message}; planning with the last good values in spec")
    if replicas == 0:
        return ModelEntry(ms, deployment, 0, None, size, invalid)
    try:
        model = Model(ms.model_name, size, rate, slo, replicas,
                      overhead_gib=engine.overhead_gib if overhead is None else overhead,
                      context_gib=engine.context_gib)
    except InvalidInput as e:
        field = SPEC_FIELD_OF_MODEL_FIELD.get(e.field, e.field)
        return ModelEntry(ms, deployment, replicas, None, size,
                          Problem(INVALID_SPEC, f"spec.{field}: {e.why} (got {e.value!r})"))
    return ModelEntry(ms, deployment, replicas, model, size, invalid)


def _name_problem(name: str) -> Problem:
    return Problem(INVALID_NAME, f"metadata.name is {len(name)} characters long: kvsched labels the model's pods "
                   f"{MODEL_LABEL}=<name>, and a label value has at most {LABEL_VALUE_MAX}; use a shorter "
                   "Deployment or ModelServing name")


def model_size_gib(ms: ModelServingObj) -> float | None:
    """A ModelServing's `spec.modelSize` in GiB (a quantity; a bare integer means bytes), or None when it is
    missing or not a memory size. The one reader of a model's size: entries here, the extender's cache."""
    try:
        return _quantity_gib(ms.spec.get("modelSize"), "spec.modelSize")
    except UnitError:
        return None


def _replicas(ms: ModelServingObj, deployment: DeploymentObj, owner_dep: bool) -> int | Problem:
    """Replicas to plan: the owning Deployment's, else spec.replicas, else the workload's."""
    if owner_dep or "replicas" not in ms.spec:
        return max(planned_replicas(deployment), 0)
    value = ms.spec["replicas"]
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        return Problem(INVALID_SPEC, f"spec.replicas must be an integer >= 0, got {describe(value)}")
    return value
