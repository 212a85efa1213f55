"""Trims keep exactly what kvsched reads: reading a trimmed object gives the record the whole object gives, on
realistic objects as the apiserver serves them and on arbitrary JSON; and they drop the bulk."""
from __future__ import annotations

import copy
import dataclasses
import json
from typing import Any, Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kvsched.api.objects import DeploymentObj
from kvsched.api.readers import read_deployment, read_model_serving, read_node, read_pdb, read_pod
from kvsched.api.trim import (
    LAST_APPLIED_ANNOTATION, trim_deployment, trim_metadata, trim_model_serving, trim_node, trim_pdb, trim_pod,
)
from kvsched.controller.config import DecisionConfig
from kvsched.controller.template import template_patch

Obj = dict[str, Any]
TS = "2026-01-01T00:00:00Z"
MANAGED_FIELDS = [{"manager": m, "operation": "Update", "apiVersion": "v1", "time": TS, "fieldsType": "FieldsV1",
                   "fieldsV1": {"f:metadata": {"f:labels": {f"f:l{i}": {} for i in range(40)}},
                                "f:spec": {"f:containers": {'k:{"name":"vllm"}': {"f:env": {}}}}}}
                  for m in ("kube-controller-manager", "kube-scheduler", "kubelet", "kvsched")]


def full_pod(*, node: str | None = "gpu-1", ready: bool = True, phase: str = "Running", gpus: Any = "1",
             annotations: dict[str, str] | None = None, deleting: bool = False, init_gpus: Any = None) -> Obj:
    """A vLLM pod as `kubectl get -o json` shows it: managedFields, a big env, volumes, probes, containerStatuses."""
    env = [{"name": f"VAR_{i}", "value": "x" * 40} for i in range(60)]
    env.append({"name": "NVIDIA_VISIBLE_DEVICES", "valueFrom": {"fieldRef": {
        "fieldPath": "metadata.annotations['kvsched.io/visible-devices']"}}})
    container = {"name": "vllm", "image": "vllm/vllm-openai:v0.6.3", "args": ["--model", "m"] * 20, "env": env,
                 "resources": {"requests": {"cpu": "8", "memory": "64Gi", "nvidia.com/gpu": gpus},
                               "limits": {"memory": "64Gi", "nvidia.com/gpu": gpus}},
                 "volumeMounts": [{"name": f"v{i}", "mountPath": f"/m/{i}"} for i in range(8)],
                 "readinessProbe": {"httpGet": {"path": "/health", "port": 8000}, "periodSeconds": 10}}
    spec: Obj = {"schedulerName": "kvsched", "containers": [container, {"name": "sidecar", "image": "envoy"}],
                 "volumes": [{"name": f"v{i}", "emptyDir": {}} for i in range(8)],
                 "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists"}]}
    if node:
        spec["nodeName"] = node
    if init_gpus is not None:
        spec["initContainers"] = [{"name": "fetch", "resources": {"limits": {"nvidia.com/gpu": init_gpus}}}]
    conditions = [{"type": t, "status": s, "lastProbeTime": None, "lastTransitionTime": TS}
                  for t, s in [("PodReadyToStartContainers", "True"), ("Initialized", "True"),
                               ("Ready", "True" if ready else "False"), ("ContainersReady", "True"),
                               ("PodScheduled", "True" if node else "False")]]
    meta: Obj = {"name": "m-7d9f8-abcde", "namespace": "ml", "uid": "u-1", "resourceVersion": "42",
                 "generateName": "m-7d9f8-", "creationTimestamp": TS, "managedFields": MANAGED_FIELDS,
                 "labels": {"app": "m", "kvsched.io/model": "m", "pod-template-hash": "7d9f8"},
                 "annotations": {LAST_APPLIED_ANNOTATION: json.dumps({"spec": spec}), **(annotations or {})},
                 "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "m-7d9f8",
                                      "uid": "rs", "controller": True}]}
    if deleting:
        meta["deletionTimestamp"] = TS
    return {"kind": "Pod", "apiVersion": "v1", "metadata": meta, "spec": spec,
            "status": {"phase": phase, "startTime": TS, "hostIP": "10.0.0.1", "podIP": "10.1.0.7",
                       "conditions": conditions, "qosClass": "Burstable",
                       "containerStatuses": [{"name": "vllm", "ready": ready, "restartCount": 3,
                                              "image": "vllm", "imageID": "sha256:" + "0" * 64,
                                              "state": {"running": {"startedAt": TS}}}]}}


def full_node(*, ready: str = "True", gpus: str | None = "8", unschedulable: bool = False) -> Obj:
    """A GPU node with its images list, addresses, nodeInfo and four conditions."""
    capacity = {"cpu": "96", "memory": "1056Gi", "pods": "110"}
    if gpus is not None:
        capacity["nvidia.com/gpu"] = gpus
    return {"kind": "Node", "apiVersion": "v1",
            "metadata": {"name": "gpu-1", "uid": "n-1", "resourceVersion": "7", "managedFields": MANAGED_FIELDS,
                         "labels": {"nvidia.com/gpu.memory": "81920", "kubernetes.io/hostname": "gpu-1"},
                         "annotations": {"node.alpha.kubernetes.io/ttl": "0"}},
            "spec": {"unschedulable": unschedulable, "podCIDR": "10.1.0.0/24", "taints": []},
            "status": {"capacity": capacity, "allocatable": dict(capacity),
                       "conditions": [{"type": t, "status": ready if t == "Ready" else "False",
                                       "lastHeartbeatTime": TS, "lastTransitionTime": TS, "reason": "r",
                                       "message": "m" * 60}
                                      for t in ("MemoryPressure", "DiskPressure", "PIDPressure", "Ready")],
                       "images": [{"names": [f"registry.example/image-{i}@sha256:{'a' * 64}"],
                                   "sizeBytes": 10 ** 9} for i in range(50)],
                       "nodeInfo": {"kubeletVersion": "v1.36.0", "machineID": "0" * 32}}}


def full_deployment(*, patched: bool, runtime_class: str | None = None, env_names: tuple[str, ...] = ()) -> Obj:
    """A vLLM Deployment with a template; `patched`: already as kvsched's template_patch leaves it."""
    env: list[Any] = [{"name": f"VAR_{i}", "value": "x"} for i in range(30)]
    env += [{"name": n, "valueFrom": {"fieldRef": {"fieldPath": p}}} for n, p in [
        ("NVIDIA_VISIBLE_DEVICES", "metadata.annotations['kvsched.io/visible-devices']"),
        ("KVSCHED_GPU_MEMORY_FRACTION", "metadata.annotations['kvsched.io/gpu-memory-fraction']")]
        if patched or n in env_names]
    env.append("not an entry")
    spec: Obj = {"containers": [{"name": "vllm", "image": "vllm", "env": env, "args": ["a"] * 30},
                                {"image": "nameless"}],
                 "volumes": [{"name": "models", "persistentVolumeClaim": {"claimName": "c"}}]}
    if patched:
        spec["schedulerName"] = "kvsched"
        spec["affinity"] = {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
            "nodeSelectorTerms": [{"matchExpressions": [{"key": "nvidia.com/gpu.memory", "operator": "Gt",
                                                         "values": ["20000"]}]}]}},
            "podAntiAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": []}}
    if runtime_class:
        spec["runtimeClassName"] = runtime_class
    return {"kind": "Deployment", "apiVersion": "apps/v1",
            "metadata": {"name": "m", "namespace": "ml", "uid": "d-1", "resourceVersion": "9", "generation": 3,
                         "managedFields": MANAGED_FIELDS,
                         "annotations": {"kvsched.io/model-size": "16Gi", "kvsched.io/request-rate": "4",
                                         "kvsched.io/slo-seconds": "1", LAST_APPLIED_ANNOTATION: "{}"}},
            "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "m"}},
                     "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 0, "maxUnavailable": 1}},
                     "template": {"metadata": {"labels": {"app": "m", **({"kvsched.io/model": "m"} if patched
                                                                          else {})},
                                               "annotations": {"prometheus.io/scrape": "true"}},
                                  "spec": spec}},
            "status": {"replicas": 2, "readyReplicas": 2, "conditions": [{"type": "Available", "status": "True"}]}}


def full_model_serving() -> Obj:
    return {"kind": "ModelServing", "apiVersion": "kvsched.io/v1alpha1",
            "metadata": {"name": "m", "namespace": "ml", "uid": "ms-1", "generation": 5, "resourceVersion": "3",
                         "managedFields": MANAGED_FIELDS,
                         "ownerReferences": [{"kind": "Deployment", "name": "m", "uid": "d-1", "controller": True}]},
            "spec": {"workloadRef": {"name": "m"}, "modelSize": "16Gi", "requestRate": 4, "sloSeconds": 1},
            "status": {"observedGeneration": 5, "slots": [{"replica": 0, "node": "gpu-1", "gpu": 0,
                                                           "memoryFraction": 0.4}]}}


def without_last_applied(record: Any) -> Any:
    """`record` less the last-applied annotation, the one annotation a trim drops (nothing reads it)."""
    kept = {k: v for k, v in record.annotations.items() if k != LAST_APPLIED_ANNOTATION}
    return dataclasses.replace(record, annotations=kept)


PODS = [
    pytest.param(full_pod(), id="bound, running, ready"),
    pytest.param(full_pod(node=None, ready=False, phase="Pending"), id="pending, not scheduled"),
    pytest.param(full_pod(deleting=True, annotations={"kvsched.io/gpu": "3",
                                                      "kvsched.io/gpu-memory-fraction": "0.4"}),
                 id="terminating, with kvsched's annotations"),
    pytest.param(full_pod(phase="Failed", gpus=2, init_gpus="3"), id="failed, init container asks more GPUs"),
    pytest.param(full_pod(gpus="lots"), id="GPU request not a number"),
]
NODES = [
    pytest.param(full_node(), id="ready GPU node with images"),
    pytest.param(full_node(ready="Unknown", unschedulable=True), id="not ready, cordoned"),
    pytest.param(full_node(gpus=None), id="no GPUs"),
]


@pytest.mark.parametrize("obj", PODS)
def test_a_trimmed_pod_reads_as_the_whole_pod(obj: Obj) -> None:
    assert read_pod(trim_pod(obj)) == without_last_applied(read_pod(obj))


@pytest.mark.parametrize("obj", NODES)
def test_a_trimmed_node_reads_as_the_whole_node(obj: Obj) -> None:
    assert read_node(trim_node(obj)) == read_node(obj)


def test_a_trimmed_model_serving_reads_as_the_whole_one() -> None:
    obj = full_model_serving()
    assert read_model_serving(trim_model_serving(obj)) == read_model_serving(obj)


def full_pdb(**spec: Any) -> Obj:
    """A PodDisruptionBudget as the apiserver serves it: managed fields, status, and `spec`."""
    return {
        "apiVersion": "policy/v1", "kind": "PodDisruptionBudget",
        "metadata": {"name": "kvsched-m", "namespace": "ns", "uid": "u1", "resourceVersion": "42",
                     "generation": 2, "creationTimestamp": TS, "managedFields": MANAGED_FIELDS,
                     "labels": {"app.kubernetes.io/managed-by": "kvsched", "kvsched.io/model": "m"},
                     "annotations": {LAST_APPLIED_ANNOTATION: json.dumps({"spec": spec})},
                     "ownerReferences": [{"apiVersion": "kvsched.io/v1alpha1", "kind": "ModelServing",
                                          "name": "m", "uid": "ms-uid", "controller": True}]},
        "spec": spec,
        "status": {"currentHealthy": 2, "desiredHealthy": 1, "disruptionsAllowed": 1, "expectedPods": 2,
                   "observedGeneration": 2, "disruptedPods": {f"m-{i}": TS for i in range(20)},
                   "conditions": [{"type": "DisruptionAllowed", "status": "True", "reason": "SufficientPods",
                                   "lastTransitionTime": TS, "message": ""}]},
    }


@pytest.mark.parametrize("obj", [
    pytest.param(full_pdb(selector={"matchLabels": {"kvsched.io/model": "m"}}, maxUnavailable=1,
                          unhealthyPodEvictionPolicy="AlwaysAllow"), id="kvsched's"),
    pytest.param(full_pdb(selector={"matchExpressions": [{"key": "app", "operator": "In", "values": ["a"]}]},
                          minAvailable="50%"), id="a user's, by expression and percentage"),
    pytest.param(full_pdb(maxUnavailable=0), id="no selector"),
])
def test_a_trimmed_pdb_reads_as_the_whole_one(obj: Obj) -> None:
    assert read_pdb(trim_pdb(obj)) == read_pdb(obj)
    assert "status" not in trim_pdb(obj) and "managedFields" not in trim_pdb(obj)["metadata"]


def _deployment_record(d: DeploymentObj) -> tuple[Any, ...]:
    return d.namespace, d.name, d.uid, dict(without_last_applied(d).annotations), d.replicas, dict(d.strategy)


TERMS = [{"matchExpressions": [{"key": "nvidia.com/gpu.memory", "operator": "Gt", "values": ["20000"]}]}]


@pytest.mark.parametrize("obj, config", [
    pytest.param(full_deployment(patched=True), DecisionConfig(), id="already patched: no patch either way"),
    pytest.param(full_deployment(patched=False), DecisionConfig(), id="never patched"),
    pytest.param(full_deployment(patched=False, env_names=("NVIDIA_VISIBLE_DEVICES",)), DecisionConfig(),
                 id="one env entry of two"),
    pytest.param(full_deployment(patched=True), DecisionConfig(runtime_class_name="nvidia"),
                 id="runtime class missing"),
    pytest.param(full_deployment(patched=True, runtime_class="nvidia"), DecisionConfig(runtime_class_name="nvidia"),
                 id="runtime class set"),
    pytest.param(full_deployment(patched=True), DecisionConfig(scheduler_name="other"),
                 id="another scheduler name"),
])
def test_a_trimmed_deployment_reads_and_patches_as_the_whole_one(obj: Obj, config: DecisionConfig) -> None:
    whole, trimmed = read_deployment(obj), read_deployment(trim_deployment(obj))
    assert _deployment_record(trimmed) == _deployment_record(whole)
    for terms in (TERMS, []):
        assert template_patch(trimmed, "m", terms, config) == template_patch(whole, "m", terms, config)


@pytest.mark.parametrize("obj, trim, most", [
    pytest.param(full_pod(), trim_pod, 0.1, id="pod"),
    pytest.param(full_node(), trim_node, 0.1, id="node"),
    pytest.param(full_deployment(patched=True), trim_deployment, 0.25, id="deployment"),
])
def test_trims_drop_managed_fields_last_applied_and_the_bulk(obj: Obj, trim: Callable[[Obj], Obj],
                                                            most: float) -> None:
    before = copy.deepcopy(obj)
    trimmed = trim(obj)
    assert obj == before  # the input is not mutated
    assert "managedFields" not in trimmed["metadata"]
    assert LAST_APPLIED_ANNOTATION not in trimmed["metadata"].get("annotations", {})
    assert trimmed["metadata"]["resourceVersion"] == obj["metadata"]["resourceVersion"]
    assert len(json.dumps(trimmed)) <= most * len(json.dumps(obj))
    assert trim(trimmed) == trimmed  # idempotent


JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=4),
                    lambda children: st.lists(children, max_size=3)
                    | st.dictionaries(st.sampled_from(["type", "status", "name", "env", "x"]), children, max_size=3),
                    max_leaves=12)
KEYS = ["metadata", "spec", "status", "labels", "annotations", "containers", "initContainers", "resources",
        "requests", "limits", "nvidia.com/gpu", "conditions", "type", "status", "nodeName", "template", "env",
        "name", "valueFrom", "capacity", "allocatable", "replicas", "strategy", "affinity", "nodeAffinity",
        "requiredDuringSchedulingIgnoredDuringExecution", "nodeSelectorTerms", "schedulerName", "generation",
        "ownerReferences", "controller", "deletionTimestamp", "phase", "lastTransitionTime", "Ready",
        "PodScheduled", "True", "NVIDIA_VISIBLE_DEVICES", "selector", "matchLabels", "matchExpressions",
        "maxUnavailable", "minAvailable", "unhealthyPodEvictionPolicy"]
SHAPED = st.recursive(st.none() | st.booleans() | st.integers(0, 3) | st.sampled_from(KEYS),
                      lambda children: st.lists(children, max_size=3)
                      | st.dictionaries(st.sampled_from(KEYS), children, max_size=4), max_leaves=30)
OBJECTS = st.dictionaries(st.sampled_from(["metadata", "spec", "status", "kind"]), SHAPED | JSON, max_size=4)


@settings(max_examples=400, deadline=None)
@given(OBJECTS)
def test_on_arbitrary_json_trims_never_raise_and_read_the_same(obj: Obj) -> None:
    assert read_pod(trim_pod(obj)) == without_last_applied(read_pod(obj))
    assert read_node(trim_node(obj)) == read_node(obj)
    assert read_model_serving(trim_model_serving(obj)) == read_model_serving(obj)
    assert read_pdb(trim_pdb(obj)) == read_pdb(obj)
    whole, trimmed = read_deployment(obj), read_deployment(trim_deployment(obj))
    assert _deployment_record(trimmed) == _deployment_record(whole)
    assert template_patch(trimmed, "m", TERMS, DecisionConfig()) == template_patch(whole, "m", TERMS,
                                                                                   DecisionConfig())
    assert trim_metadata(obj).get("metadata", {}).get("managedFields") is None
