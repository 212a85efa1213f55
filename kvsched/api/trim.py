"""Trims: an API object (camelCase dict) cut down to the fields kvsched reads, before an informer stores or delivers it.

A Pod as the apiserver serves it is 7-30 KiB of JSON (managedFields, env, volumes, probes, status); an informer
that keeps every pod of a 10k-pod cluster whole holds hundreds of MiB. Each trim keeps exactly what the readers
(kvsched.api.readers) and the decision core read of that kind, so that for every object `read(trim(obj)) ==
read(obj)` (tests/api/test_trim.py checks it on realistic objects and on arbitrary JSON):

- metadata: name, namespace, uid, resourceVersion, generation, creationTimestamp, deletionTimestamp, labels,
  annotations (without `kubectl.kubernetes.io/last-applied-configuration`, a copy of the whole object) and
  ownerReferences; never `managedFields`;
- Pod: `spec.nodeName`, `spec.schedulerName`, the `nvidia.com/gpu` requests and limits of (init) containers,
  `status.phase`, `status.startTime` and the Ready and PodScheduled conditions (type, status, lastTransitionTime);
- Node: `spec.unschedulable`, `nvidia.com/gpu` of capacity and allocatable, the Ready condition;
- Deployment: `spec.replicas`, `spec.strategy` and of the pod template what kvsched.controller.template compares
  and patches: its labels, `schedulerName`, `runtimeClassName`, the required node affinity's terms, and each named
  container's name and its kvsched env entries (`NVIDIA_VISIBLE_DEVICES`, `KVSCHED_GPU_MEMORY_FRACTION`);
- ModelServing: spec and status whole (small, and both are kvsched's own);
- PodDisruptionBudget: `spec.selector`, `maxUnavailable`, `minAvailable`, `unhealthyPodEvictionPolicy` (no status).

A trim keeps the shape the readers tolerate: a part of the wrong JSON type is dropped, which reads as absent,
exactly as the wrong type reads. Pure; never raises on any JSON object; the result shares no mutable part with
its input that a reader would not also see (values are kept, not copied: informers never mutate them).
Called by: kvsched.k8s.watch (each Resource's trim, applied to every listed and watched object).
"""

from __future__ import annotations

from typing import Any, Callable

from kvsched.api.names import GPU_RESOURCE, MEMORY_FRACTION_ENV, VISIBLE_DEVICES_ENV

Obj = dict[str, Any]
Trim = Callable[[Obj], Obj]

LAST_APPLIED_ANNOTATION = "kubectl.kubernetes.io/last-applied-configuration"
_META_FIELDS = ("name", "namespace", "uid", "resourceVersion", "generation", "creationTimestamp",
                "deletionTimestamp", "labels", "ownerReferences")
_TEMPLATE_ENV = frozenset({VISIBLE_DEVICES_ENV, MEMORY_FRACTION_ENV})  # what controller.template checks


def _pick(source: object, keys: tuple[str, ...] | frozenset[str]) -> Obj:
    """The entries of `source` (a dict, else nothing) under `keys`, where present."""
    if not isinstance(source, dict):
        return {}
    return {k: source[k] for k in keys if k in source}


def _nested(source: object, *path: str) -> object | None:
    """source[p1][p2]... through dicts; None when a step is missing or not a dict."""
    for key in path:
        if not isinstance(source, dict) or key not in source:
            return None
        source = source[key]
    return source


def _set_nested(target: Obj, path: tuple[str, ...], value: object) -> None:
    for key in path[:-1]:
        target = target.setdefault(key, {})
    target[path[-1]] = value


def _with(obj: Obj, key: str, value: Obj) -> None:
    if value:
        obj[key] = value


def trim_metadata(obj: Obj) -> Obj:
    """`obj` with only `kind`, `apiVersion` and the metadata fields kvsched reads (module docstring)."""
    out = _pick(obj, ("kind", "apiVersion"))
    meta = obj.get("metadata")
    if isinstance(meta, dict):
        kept = _pick(meta, _META_FIELDS)
        annotations = meta.get("annotations")
        if isinstance(annotations, dict):
            kept["annotations"] = {k: v for k, v in annotations.items() if k != LAST_APPLIED_ANNOTATION}
        elif "annotations" in meta:
            kept["annotations"] = annotations  # a mistyped value reads as empty either way
        out["metadata"] = kept
    elif "metadata" in obj:
        out["metadata"] = {}
    return out


def _gpu_resources(container: object) -> Obj:
    """A container reduced to its nvidia.com/gpu requests and limits (as readers.pod_gpu_request reads them)."""
    resources = _nested(container, "resources")
    kept: Obj = {}
    for part in ("requests", "limits"):
        values = _pick(_nested(resources, part), (GPU_RESOURCE,))
        _with(kept, part, values)
    return {"resources": kept} if kept else {}


def _conditions(status: object, types: tuple[str, ...]) -> list[Obj]:
    conditions = _nested(status, "conditions")
    if not isinstance(conditions, list):
        return []
    return [_pick(c, ("type", "status", "lastTransitionTime")) for c in conditions
            if isinstance(c, dict) and c.get("type") in types]


def trim_pod(obj: Obj) -> Obj:
    """A Pod with what readers.read_pod reads (module docstring)."""
    out = trim_metadata(obj)
    spec, status = obj.get("spec"), obj.get("status")
    kept_spec = _pick(spec, ("nodeName", "schedulerName"))
    if isinstance(spec, dict):
        for part in ("containers", "initContainers"):
            containers = spec.get(part)
            if isinstance(containers, list):
                kept_spec[part] = [_gpu_resources(c) for c in containers]
    _with(out, "spec", kept_spec)
    kept_status = _pick(status, ("phase", "startTime"))
    conditions = _conditions(status, ("Ready", "PodScheduled"))
    if conditions:
        kept_status["conditions"] = conditions
    _with(out, "status", kept_status)
    return out


def trim_node(obj: Obj) -> Obj:
    """A Node with what readers.read_node reads (module docstring)."""
    out = trim_metadata(obj)
    _with(out, "spec", _pick(obj.get("spec"), ("unschedulable",)))
    status = obj.get("status")
    kept: Obj = {}
    for part in ("capacity", "allocatable"):
        _with(kept, part, _pick(_nested(status, part), (GPU_RESOURCE,)))
    # Only the first Ready condition counts (readers.read_node); the heartbeat times change every few minutes.
    ready = _conditions(status, ("Ready",))[:1]
    if ready:
        kept["conditions"] = ready
    _with(out, "status", kept)
    return out


_AFFINITY_TERMS = ("affinity", "nodeAffinity", "requiredDuringSchedulingIgnoredDuringExecution",
                   "nodeSelectorTerms")


def _template_env(env: object) -> list[Any]:
    """The env entries controller.template checks (by name; a later entry of one name wins there, order kept)."""
    if not isinstance(env, list):
        return []
    return [e for e in env if isinstance(e, dict) and e.get("name") in _TEMPLATE_ENV]


def _trim_template(template: object) -> Obj:
    """The pod template reduced to what controller.template.template_patch compares and patches."""
    if not isinstance(template, dict):
        return {}
    out: Obj = {}
    labels = _nested(template, "metadata", "labels")
    if labels is not None:
        out["metadata"] = {"labels": labels}
    spec = template.get("spec")
    if not isinstance(spec, dict):
        return out
    kept = _pick(spec, ("schedulerName", "runtimeClassName"))
    terms = _nested(spec, *_AFFINITY_TERMS)
    if terms is not None:
        _set_nested(kept, _AFFINITY_TERMS, terms)
    containers = spec.get("containers")
    if isinstance(containers, list):
        kept["containers"] = [{"name": c["name"], "env": _template_env(c.get("env"))}
                              for c in containers if isinstance(c, dict) and isinstance(c.get("name"), str)]
    out["spec"] = kept
    return out


def trim_deployment(obj: Obj) -> Obj:
    """A Deployment with what readers.read_deployment and controller.template read (module docstring)."""
    out = trim_metadata(obj)
    spec = obj.get("spec")
    if isinstance(spec, dict):
        kept = _pick(spec, ("replicas", "strategy"))
        if "template" in spec:
            kept["template"] = _trim_template(spec["template"])
        out["spec"] = kept
    return out


def trim_model_serving(obj: Obj) -> Obj:
    """A ModelServing: metadata trimmed, spec and status whole."""
    out = trim_metadata(obj)
    out.update(_pick(obj, ("spec", "status")))
    return out


def trim_pdb(obj: Obj) -> Obj:
    """A PodDisruptionBudget with what readers.read_pdb reads: metadata trimmed, the spec's selector, budget and
    unhealthy-pod policy (no status)."""
    out = trim_metadata(obj)
    spec = obj.get("spec")
    if isinstance(spec, dict):
        out["spec"] = _pick(spec, ("selector", "maxUnavailable", "minAvailable", "unhealthyPodEvictionPolicy"))
    return out
