"""Per-model PodDisruptionBudgets: the PDB each managed model should have, and the writes that get it there.

With `--pod-disruption-budget` on (or a Deployment annotated `kvsched.io/pod-disruption-budget: "true"`; `"false"`
opts a model out), every managed model gets one policy/v1 PodDisruptionBudget, kept by the controller:
- named `kvsched-<ModelServing name>` in the model's namespace, labelled `app.kubernetes.io/managed-by: kvsched`
  and `kvsched.io/model: <name>`;
- `selector: {matchLabels: {kvsched.io/model: <name>}}`: the label the controller puts on the model's pod
  template, so exactly the model's pods;
- `maxUnavailable: --pod-disruption-budget-max-unavailable` (default 1) and `unhealthyPodEvictionPolicy:
  AlwaysAllow` (a replica that is not Ready serves nothing: evicting it, e.g. off a lost node, costs no
  availability, and a crash-looping replica does not block a drain);
- owned by the ModelServing (ownerReference, controller: true), so the garbage collector deletes it with the
  model (and with the Deployment of an annotated one, which owns that ModelServing).

Rules (pure; the loop writes what `pdb_changes` returns, each only when something differs):
- kvsched's PDBs are those labelled managed-by kvsched; no other PDB is ever written;
- a model whose pods (its Deployment's template labels plus the model label, or a live pod of it) a PDB of
  someone else's in its namespace already selects gets none: the Eviction API refuses a pod that two PDBs select,
  so a second one would block every eviction; kvsched's own is deleted when such a PDB appears;
- a PDB of kvsched's is created when missing, patched when its selector, budget, policy, owner or model label
  differ from the wanted ones (a stored object without `unhealthyPodEvictionPolicy`, from an apiserver that does
  not know the field, is not patched for it), and deleted (uid as a precondition) when its model no longer wants
  one (option off, annotation "false", model gone, a user's PDB covers it);
- a name taken by someone else's PDB that does not select the model's pods: nothing is written, a Warning event
  on the ModelServing says so.
Make-before-break surges are not PDB-bound: they add a replica first and the ReplicaSet deletes the old pod when
the Deployment scales back (a deletion, not an eviction). Evictions are: a 429 from a PDB leaves the step to a
later round (kvsched.runtime.loop's backoff).
Called by: kvsched.controller.decide.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from kvsched.api.names import (
    API_VERSION,
    KIND,
    MANAGED_BY_LABEL,
    MANAGED_BY_VALUE,
    MODEL_LABEL,
    PDB_ANNOTATION,
    PDB_PREFIX,
)
from kvsched.api.objects import DeploymentObj, ModelServingObj, ObjectKey, PdbObj, PodObj
from kvsched.api.records import PdbChange
from kvsched.controller.config import DecisionConfig
from kvsched.controller.selector import label_selector

UNHEALTHY_POLICY = "AlwaysAllow"


@dataclass(frozen=True)
class PdbProblem:
    """Why a model that asks for a PDB has none, or an annotation that does not read: an event on `target`
    (`ModelServing` or `Deployment`, namespace and name), `reason` and `message`."""

    kind: str
    key: ObjectKey
    type: str  # "Normal" | "Warning"
    reason: str
    message: str


def is_kvscheds(pdb: PdbObj) -> bool:
    """Whether kvsched created (and so may write) this PDB: labelled managed-by kvsched."""
    return pdb.labels.get(MANAGED_BY_LABEL) == MANAGED_BY_VALUE


def pdb_name(ms: ModelServingObj) -> str:
    """`kvsched-<name>` (a ModelServing's name has at most 63 characters, a PDB's up to 253)."""
    return f"{PDB_PREFIX}{ms.name}"


def wants_pdb(deployment: DeploymentObj | None, default: bool) -> tuple[bool, str | None]:
    """Whether a model wants a PDB: its Deployment's `kvsched.io/pod-disruption-budget` ("true"/"false", any
    case, blanks around ignored) else `default`; and a message when the annotation is there but reads as neither
    (then the default holds)."""
    text = deployment.annotations.get(PDB_ANNOTATION) if deployment is not None else None
    if text is None:
        return default, None
    value = text.strip().lower()
    if value in ("true", "false"):
        return value == "true", None
    return default, (f"annotation {PDB_ANNOTATION}={text!r} is neither \"true\" nor \"false\"; the controller's "
                     f"default ({'true' if default else 'false'}) holds")


def desired_pdb(ms: ModelServingObj, max_unavailable: int) -> dict[str, Any]:
    """The whole PodDisruptionBudget kvsched keeps for model `ms` (module docstring)."""
    return {
        "apiVersion": "policy/v1", "kind": "PodDisruptionBudget",
        "metadata": {
            "name": pdb_name(ms), "namespace": ms.namespace,
            "labels": {MANAGED_BY_LABEL: MANAGED_BY_VALUE, MODEL_LABEL: ms.name},
            "ownerReferences": [_owner(ms)],
        },
        "spec": {"selector": {"matchLabels": {MODEL_LABEL: ms.name}}, "maxUnavailable": max_unavailable,
                 "unhealthyPodEvictionPolicy": UNHEALTHY_POLICY},
    }


def _owner(ms: ModelServingObj) -> dict[str, Any]:
    return {"apiVersion": API_VERSION, "kind": KIND, "name": ms.name, "uid": ms.uid, "controller": True}


def pdb_patch(existing: PdbObj, ms: ModelServingObj, max_unavailable: int) -> dict[str, Any] | None:
    """The JSON merge patch that turns kvsched's `existing` PDB into the wanted one, or None when nothing the
    controller sets differs (so an unchanged world writes nothing). Keys of the wanted selector's matchLabels
    that it lacks are set, others removed (null), matchExpressions removed; minAvailable removed."""
    spec: dict[str, Any] = {}
    wanted_labels = {MODEL_LABEL: ms.name}
    if existing.selector != {"matchLabels": wanted_labels}:
        old = existing.selector or {}
        old_labels = old.get("matchLabels")
        old_labels = old_labels if isinstance(old_labels, dict) else {}
        labels: dict[str, Any] = {k: None for k in old_labels if k not in wanted_labels}
        labels.update(wanted_labels)
        selector: dict[str, Any] = {"matchLabels": labels}
        if "matchExpressions" in old:
            selector["matchExpressions"] = None
        spec["selector"] = selector
    if existing.max_unavailable != max_unavailable:
        spec["maxUnavailable"] = max_unavailable
    if existing.min_available is not None:
        spec["minAvailable"] = None
    if existing.unhealthy_policy is not None and existing.unhealthy_policy != UNHEALTHY_POLICY:
        spec["unhealthyPodEvictionPolicy"] = UNHEALTHY_POLICY
    meta: dict[str, Any] = {}
    if existing.owner is None or existing.owner.uid != ms.uid:
        meta["ownerReferences"] = [_owner(ms)]
    if existing.labels.get(MODEL_LABEL) != ms.name:
        meta["labels"] = {MODEL_LABEL: ms.name}
    patch: dict[str, Any] = {}
    if meta:
        patch["metadata"] = meta
    if spec:
        patch["spec"] = spec
    return patch or None


def selects(pdb: PdbObj, label_sets: Iterable[Mapping[str, str]]) -> bool:
    """Whether `pdb`'s selector selects any of `label_sets` (no selector, or one that does not read, selects
    none; `{}` selects all). O(label sets x requirements)."""
    selector = label_selector(pdb.selector)
    return selector is not None and any(selector.matches(labels) for labels in label_sets)


def model_label_sets(ms: ModelServingObj, deployment: DeploymentObj | None, pods: Sequence[PodObj]
                     ) -> list[dict[str, str]]:
    """The labels a model's pods have or will have: its Deployment's template labels plus the model label (what
    the controller's template patch gives every new pod), and those of its live pods in `pods`."""
    template_meta = deployment.template.get("metadata") if deployment is not None else None
    template_labels = template_meta.get("labels") if isinstance(template_meta, dict) else None
    base = {str(k): str(v) for k, v in template_labels.items()} if isinstance(template_labels, dict) else {}
    sets = [{**base, MODEL_LABEL: ms.name}]
    sets.extend(dict(p.labels) for p in pods
                if p.namespace == ms.namespace and p.labels.get(MODEL_LABEL) == ms.name and not p.terminal)
    return sets


@dataclass(frozen=True)
class PdbModel:
    """A managed model as the PDB rules see it: its ModelServing and its Deployment (None: not found)."""

    ms: ModelServingObj
    deployment: DeploymentObj | None


def pdb_changes(models: Sequence[PdbModel], pdbs: Sequence[PdbObj], pods: Sequence[PodObj],
                config: DecisionConfig) -> tuple[tuple[PdbChange, ...], tuple[PdbProblem, ...]]:
    """The creates, patches and deletes that leave every model that wants one (`wants_pdb`) with exactly kvsched's
    PDB and no other PDB of kvsched's anywhere, and the events to say why a model has none (rules in the module
    docstring). A model whose ModelServing has no uid yet (created this round) waits for the next round; a PDB
    of kvsched's being deleted is waited for. Deterministic: by namespace and name.
    O(models x (PDBs in its namespace + its pods) + PDBs)."""
    ours = {p.key: p for p in pdbs if is_kvscheds(p)}
    others: dict[str, list[PdbObj]] = {}
    for p in pdbs:
        if not is_kvscheds(p):
            others.setdefault(p.namespace, []).append(p)
    pods_by_ns: dict[str, list[PodObj]] = {}
    for pod in pods:
        if MODEL_LABEL in pod.labels:
            pods_by_ns.setdefault(pod.namespace, []).append(pod)
    changes: list[PdbChange] = []
    problems: list[PdbProblem] = []
    wanted: set[ObjectKey] = set()
    for model in sorted(models, key=lambda m: m.ms.key):
        ms = model.ms
        want, bad = wants_pdb(model.deployment, config.pod_disruption_budget)
        if bad is not None and model.deployment is not None:
            problems.append(PdbProblem("Deployment", model.deployment.key, "Warning", "InvalidAnnotation", bad))
        if not want or not ms.uid:
            continue
        key = ObjectKey(ms.namespace, pdb_name(ms))
        sets = model_label_sets(ms, model.deployment, pods_by_ns.get(ms.namespace, []))
        covering = sorted(p.name for p in others.get(ms.namespace, []) if selects(p, sets))
        if covering:
            problems.append(PdbProblem(
                "ModelServing", ms.key, "Normal", "PodDisruptionBudgetExists",
                f"PodDisruptionBudget {', '.join(covering)} already selects the pods of model {ms.name}: kvsched "
                f"creates none (an eviction refuses a pod that two budgets select)"))
            continue
        if any(p.name == key.name for p in others.get(ms.namespace, [])):
            problems.append(PdbProblem(
                "ModelServing", ms.key, "Warning", "PodDisruptionBudgetNameTaken",
                f"a PodDisruptionBudget named {key.name} that kvsched did not create exists and does not select "
                f"the pods of model {ms.name}: kvsched leaves it alone and creates none"))
            continue
        wanted.add(key)
        existing = ours.get(key)
        if existing is None:
            changes.append(PdbChange("create", key, desired_pdb(ms, config.pod_disruption_budget_max_unavailable)))
        elif not existing.deleting:
            patch = pdb_patch(existing, ms, config.pod_disruption_budget_max_unavailable)
            if patch is not None:
                changes.append(PdbChange("patch", key, patch))
    for key in sorted(ours):
        pdb = ours[key]
        if key not in wanted and not pdb.deleting:
            changes.append(PdbChange("delete", key, uid=pdb.uid))
    return tuple(changes), tuple(problems)
