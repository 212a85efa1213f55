"""The pod template a managed Deployment needs, and the smallest patch that gets it there.

Every change to a Deployment's pod template starts a rollout that recreates all its replicas, so the template
carries nothing that changes with the plan: the model label, kvsched's `schedulerName`, the runtime class that
reads `NVIDIA_VISIBLE_DEVICES` (`runtimeClassName`, a setting), Downward-API env for the device (the GPU's UUID from
its holder pod, or its index with holders off: `kvsched.io/visible-devices`) and memory fraction the extender writes
at bind time, and a required node affinity that names no node:
the pool's selector plus "a GPU whose memory less the reserve is larger than a replica's footprint" (M - R > m + o +
c: weights, engine overhead, CUDA context; `nvidia.com/gpu.memory Gt <m + o + c + R in MiB>` for nodes without the
`kvsched.io/gpu-memory` override; `kvsched.io/gpu-memory In <the override values larger than that>` for nodes
with it), the same test as the packer's and the slot rule's. That set changes only when a node with a new override
value joins. The extender enforces the
exact GPU, and evictions move replicas. The Deployment's strategy becomes RollingUpdate with maxSurge 0, so a
rollout on a full cluster frees a slot before it asks for one (a surge pod would find every slot planned).
Called by: kvsched.controller.decide.
"""

from __future__ import annotations

import math
from typing import Any, Iterable, Mapping

from kvsched.api.names import (
    GPU_MEMORY_LABEL,
    GPU_MEMORY_MIB_LABEL,
    MEMORY_FRACTION_ANNOTATION,
    MEMORY_FRACTION_ENV,
    MODEL_LABEL,
    VISIBLE_DEVICES_ANNOTATION,
    VISIBLE_DEVICES_ENV,
)
from kvsched.api.objects import DeploymentObj
from kvsched.controller.config import DecisionConfig
from kvsched.controller.inventory import PoolNode

_ENV = (
    (VISIBLE_DEVICES_ENV, f"metadata.annotations['{VISIBLE_DEVICES_ANNOTATION}']"),
    (MEMORY_FRACTION_ENV, f"metadata.annotations['{MEMORY_FRACTION_ANNOTATION}']"),
)

_INT64_MAX = 2**63 - 1


def affinity_terms(footprint_gib: float, pool: Iterable[PoolNode], config: DecisionConfig
                   ) -> list[dict[str, Any]]:
    """Node selector terms (ORed) of the nodes whose GPUs can hold one replica of `footprint_gib` (its weights,
    engine overhead and CUDA context) next to the GPU memory reserve: M - R > footprint, as a label M > footprint
    + R. O(pool)."""
    base = config.node_selector.to_expressions()
    need_gib = footprint_gib + config.gpu_memory_reserve_gib
    need_mib = need_gib * 1024 + 1e-9
    # A Gt value is an int64 to Kubernetes and no label is larger: a footprint past it (or past a float, modelSize
    # 1e308) gets the largest, which no node matches, rather than a value the apiserver refuses or an OverflowError.
    size_mib = _INT64_MAX if not math.isfinite(need_mib) or need_mib >= _INT64_MAX else math.floor(need_mib)
    terms: list[dict[str, Any]] = [{"matchExpressions": [
        *base,
        {"key": GPU_MEMORY_MIB_LABEL, "operator": "Gt", "values": [str(size_mib)]},
        {"key": GPU_MEMORY_LABEL, "operator": "DoesNotExist"},
    ]}]
    overrides = sorted({n.labels[GPU_MEMORY_LABEL] for n in pool
                        if GPU_MEMORY_LABEL in n.labels and n.memory_gib > need_gib})
    if overrides:
        terms.append({"matchExpressions": [
            *base, {"key": GPU_MEMORY_LABEL, "operator": "In", "values": overrides}]})
    return terms


def _at(value: object, *keys: str) -> object:
    """value[k1][k2]... through mappings; None where a step is missing or not a mapping (a template of any
    shape: the Deployment is the user's)."""
    for key in keys:
        if not isinstance(value, Mapping):
            return None
        value = value.get(key)
    return value


def _mapping(value: object) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _list(value: object) -> list[Any]:
    return value if isinstance(value, list) else []


def _current_terms(template: Mapping[str, Any]) -> object:
    return _at(template, "spec", "affinity", "nodeAffinity", "requiredDuringSchedulingIgnoredDuringExecution",
               "nodeSelectorTerms")


def _env_ok(container: Mapping[str, Any]) -> bool:
    env = {e["name"]: e for e in _list(container.get("env"))
           if isinstance(e, dict) and isinstance(e.get("name"), str)}
    for name, path in _ENV:
        if _at(env.get(name), "valueFrom", "fieldRef", "fieldPath") != path:
            return False
    return True


def template_patch(deployment: DeploymentObj, model_label: str, terms: list[dict[str, Any]],
                   config: DecisionConfig) -> dict[str, Any] | None:
    """The strategic-merge patch of `spec.template` (and `spec.strategy`) the Deployment needs; None if none.
    Reads a template and strategy of any shape (a part that is not what the API defines reads as absent).

    The template part is sent whole whenever any of it differs (it is idempotent); the strategy alone does not
    start a rollout.
    """
    template = deployment.template
    labels = _mapping(_at(template, "metadata", "labels"))
    spec = _mapping(template.get("spec"))
    containers = [c for c in _list(spec.get("containers")) if isinstance(c, dict) and isinstance(c.get("name"), str)]
    template_ok = (labels.get(MODEL_LABEL) == model_label
                   and spec.get("schedulerName") == config.scheduler_name
                   and (not config.runtime_class_name or spec.get("runtimeClassName") == config.runtime_class_name)
                   and _current_terms(template) == terms
                   and all(_env_ok(c) for c in containers))
    strategy = _strategy_patch(deployment.strategy)
    if template_ok and strategy is None:
        return None
    patch_spec: dict[str, Any] = {}
    if strategy is not None:
        patch_spec["strategy"] = strategy
    if not template_ok:
        env = [{"name": name, "valueFrom": {"fieldRef": {"fieldPath": path}}} for name, path in _ENV]
        template_spec: dict[str, Any] = {
            "schedulerName": config.scheduler_name,
            "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
                "nodeSelectorTerms": terms}}},
            "containers": [{"name": c.get("name"), "env": env} for c in containers],
        }
        if config.runtime_class_name:
            template_spec["runtimeClassName"] = config.runtime_class_name
        patch_spec["template"] = {"metadata": {"labels": {MODEL_LABEL: model_label}}, "spec": template_spec}
    return {"spec": patch_spec}


def touches_template(patch: Mapping[str, Any]) -> bool:
    """Whether a patch from `template_patch` changes the pod template (and so starts a rollout)."""
    return "template" in (patch.get("spec") or {})


def _is_zero(value: object) -> bool:
    return value in (0, "0", "0%")


def _strategy_patch(strategy: Mapping[str, Any]) -> dict[str, Any] | None:
    """RollingUpdate with maxSurge 0 and maxUnavailable >= 1 (kept when already positive); Recreate is left."""
    kind = strategy.get("type", "RollingUpdate")
    if kind == "Recreate":
        return None
    rolling = _mapping(strategy.get("rollingUpdate"))
    surge, unavailable = rolling.get("maxSurge"), rolling.get("maxUnavailable")
    unavailable_ok = isinstance(unavailable, int) and not isinstance(unavailable, bool) and unavailable >= 1
    if kind == "RollingUpdate" and _is_zero(surge) and unavailable_ok:
        return None
    return {"type": "RollingUpdate",
            "rollingUpdate": {"maxSurge": 0, "maxUnavailable": unavailable if unavailable_ok else 1}}
