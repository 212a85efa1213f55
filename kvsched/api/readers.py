"""API objects (camelCase dicts, as the informers deliver them) -> the snapshot types of kvsched.api.objects.

Readers take only the shape: they never judge a value (an annotation, a label, a spec field) beyond its JSON
type, so that a bad value reaches the decision core and becomes a condition and an event on its object rather
than an exception here. Missing or mistyped structure reads as absent (a list that is not a list reads as empty, a mapping that is not a
mapping as empty): no object an informer can deliver makes a reader raise (tests/property/test_never_raises.py).
Pure (no client, no I/O), so that every part reads an object the same way.
Called by: kvsched.runtime.controller (the informers' caches), kvsched.k8s.snapshot (`kvsched plan --kubeconfig`),
kvsched.extender.cache (its informer handlers).
"""

from __future__ import annotations

from typing import Any, Mapping

from kvsched.api.names import GPU_RESOURCE
from kvsched.api.objects import DeploymentObj, ModelServingObj, NodeObj, OwnerRef, PdbObj, PodObj
from kvsched.units import UnitError, whole_number

Obj = Mapping[str, Any]


def _map(value: object) -> dict[str, Any]:
    return dict(value) if isinstance(value, dict) else {}


def _list(value: object) -> list[Any]:
    return value if isinstance(value, list) else []


def _str_map(value: object) -> dict[str, str]:
    return {str(k): str(v) for k, v in _map(value).items()}


def _meta(obj: Obj) -> dict[str, Any]:
    return _map(_map(obj).get("metadata"))


def read_node(obj: Obj) -> NodeObj:
    meta, spec, status = _meta(obj), _map(obj.get("spec")), _map(obj.get("status"))
    capacity = _map(status.get("capacity"))
    allocatable = _map(status.get("allocatable"))
    gpus = allocatable.get(GPU_RESOURCE, capacity.get(GPU_RESOURCE))
    condition = next((c for c in _list(status.get("conditions")) if isinstance(c, dict) and c.get("type") == "Ready"),
                     None)
    ready = condition is not None and condition.get("status") == "True"
    since = "" if ready or condition is None else str(condition.get("lastTransitionTime") or "")
    return NodeObj(name=str(meta.get("name", "")), uid=str(meta.get("uid", "")), labels=_str_map(meta.get("labels")),
                   gpu_capacity=None if gpus is None else str(gpus), unschedulable=bool(spec.get("unschedulable")),
                   ready=ready, deleting=bool(meta.get("deletionTimestamp")), not_ready_since=since)


def _gpu_count(resources: object) -> int:
    res = _map(resources)
    value = _map(res.get("requests")).get(GPU_RESOURCE, _map(res.get("limits")).get(GPU_RESOURCE, 0))
    try:
        return whole_number(str(value))
    except UnitError:  # the apiserver admits only whole GPU quantities; anything else counts as none
        return 0


def pod_gpu_request(spec: Mapping[str, Any]) -> int:
    """`nvidia.com/gpu` the scheduler counts for a pod: max(largest init container, sum of containers)."""
    containers = sum(_gpu_count(_map(c).get("resources")) for c in _list(spec.get("containers")))
    init = max((_gpu_count(_map(c).get("resources")) for c in _list(spec.get("initContainers"))),
               default=0)
    return max(containers, init)


def _condition(status: Mapping[str, Any], kind: str) -> dict[str, Any] | None:
    """The pod condition of type `kind` with status True, if any."""
    for c in _list(status.get("conditions")):
        if isinstance(c, dict) and c.get("type") == kind and c.get("status") == "True":
            return c
    return None


def pod_bound_at(status: Mapping[str, Any], node: object) -> str:
    """When a pod was bound (`PodObj.bound_at`): PodScheduled's lastTransitionTime while True, else the
    startTime of a pod with a node, else ""."""
    if not node:
        return ""
    scheduled = _condition(status, "PodScheduled")
    if scheduled is not None and scheduled.get("lastTransitionTime"):
        return str(scheduled["lastTransitionTime"])
    return str(status.get("startTime") or "")


def read_pod(obj: Obj) -> PodObj:
    meta, spec, status = _meta(obj), _map(obj.get("spec")), _map(obj.get("status"))
    ready = _condition(status, "Ready") is not None
    node = spec.get("nodeName")
    return PodObj(namespace=str(meta.get("namespace", "")), name=str(meta.get("name", "")),
                  uid=str(meta.get("uid", "")), node=str(node) if node else None,
                  labels=_str_map(meta.get("labels")), annotations=_str_map(meta.get("annotations")),
                  scheduler_name=str(spec.get("schedulerName") or "default-scheduler"),
                  gpu_request=pod_gpu_request(spec), ready=ready, deleting=bool(meta.get("deletionTimestamp")),
                  terminal=status.get("phase") in ("Succeeded", "Failed"),
                  created=str(meta.get("creationTimestamp") or ""), bound_at=pod_bound_at(status, node))


def read_deployment(obj: Obj) -> DeploymentObj:
    meta, spec = _meta(obj), _map(obj.get("spec"))
    replicas = spec.get("replicas", 1)
    return DeploymentObj(namespace=str(meta.get("namespace", "")), name=str(meta.get("name", "")),
                         uid=str(meta.get("uid", "")), annotations=_str_map(meta.get("annotations")),
                         replicas=replicas if isinstance(replicas, int) and not isinstance(replicas, bool) else 1,
                         template=_map(spec.get("template")), strategy=_map(spec.get("strategy")))


def controller_owner(meta: Mapping[str, Any]) -> OwnerRef | None:
    """The ownerReference with controller: true, if any."""
    for ref in _list(meta.get("ownerReferences")):
        if isinstance(ref, dict) and ref.get("controller"):
            return OwnerRef(str(ref.get("kind", "")), str(ref.get("name", "")), str(ref.get("uid", "")))
    return None


def read_model_serving(obj: Obj) -> ModelServingObj:
    meta = _meta(obj)
    generation = meta.get("generation", 1)
    return ModelServingObj(namespace=str(meta.get("namespace", "")), name=str(meta.get("name", "")),
                           uid=str(meta.get("uid", "")),
                           generation=generation if isinstance(generation, int) else 1,
                           spec=_map(obj.get("spec")), status=_map(obj.get("status")),
                           owner=controller_owner(meta))


def _int_or_str(value: object) -> int | str | None:
    """An IntOrString value as written (a bool or another type reads as unset)."""
    if isinstance(value, bool):
        return None
    return value if isinstance(value, (int, str)) else None


def read_pdb(obj: Obj) -> PdbObj:
    """A PodDisruptionBudget (policy/v1): a selector that is not a mapping reads as none (selects no pod)."""
    meta, spec = _meta(obj), _map(obj.get("spec"))
    selector = spec.get("selector")
    policy = spec.get("unhealthyPodEvictionPolicy")
    return PdbObj(namespace=str(meta.get("namespace", "")), name=str(meta.get("name", "")),
                  uid=str(meta.get("uid", "")), labels=_str_map(meta.get("labels")),
                  owner=controller_owner(meta), selector=dict(selector) if isinstance(selector, dict) else None,
                  max_unavailable=_int_or_str(spec.get("maxUnavailable")),
                  min_available=_int_or_str(spec.get("minAvailable")),
                  unhealthy_policy=str(policy) if isinstance(policy, str) else None,
                  deleting=bool(meta.get("deletionTimestamp")))
