"""One slot rule: the controller nudges a pending pod exactly when the extender's filter would pass it somewhere.

Small random worlds (API-shaped dicts, read with the production readers for the controller and fed to the extender's
cache through its informer handlers): GPU nodes whose allocatable GPUs may differ from their capacity and whose
memory label may carry a fraction of a MiB; ModelServings; running pods with or without a memory-share annotation,
terminating or not, of known models, of a model without a ModelServing, of no model or of another scheduler;
pending managed pods; models with their own engine overhead (spec.engineOverhead, valid or not); the default
memory headroom. The controller decides once; the cache then sees the statuses it wrote. The set of pods the
controller nudges must equal the set of pending managed pods for which `Cache.filter` passes at least one node.
"""
from __future__ import annotations

import copy
from typing import Any

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from kvsched.api.names import (
    API_VERSION,
    DEFAULT_SCHEDULER_NAME,
    GPU_ANNOTATION,
    GPU_MEMORY_LABEL,
    GPU_MEMORY_MIB_LABEL,
    GPU_RESOURCE,
    MEMORY_FRACTION_ANNOTATION,
    MODEL_LABEL,
)
from kvsched.api.objects import World
from kvsched.api.readers import read_deployment, read_model_serving, read_node, read_pod
from kvsched.controller import DecisionConfig, decide
from kvsched.controller.slots import PodRef
from kvsched.extender.cache import Cache

from .fake import NOW, planner

Obj = dict[str, Any]
NS = "ns"
MODELS = {"a": "12Gi", "b": "30Gi", "c": "50Gi"}
GPU_LIMIT = 2


def node_obj(name: str, capacity: int, allocatable: int | None, memory: tuple[str, str]) -> Obj:
    status: Obj = {"capacity": {GPU_RESOURCE: str(capacity)}, "conditions": [{"type": "Ready", "status": "True"}]}
    if allocatable is not None:
        status["allocatable"] = {GPU_RESOURCE: str(allocatable)}
    return {"metadata": {"name": name, "uid": f"uid-{name}", "labels": {memory[0]: memory[1]}}, "status": status}


def serving_obj(name: str, replicas: int, overhead: str | None = None) -> Obj:
    spec = {"workloadRef": {"kind": "Deployment", "name": name}, "modelSize": MODELS[name],
            "requestRate": 2, "sloSeconds": 1, "replicas": replicas}
    if overhead is not None:
        spec["engineOverhead"] = overhead
    return {"apiVersion": API_VERSION, "kind": "ModelServing",
            "metadata": {"name": name, "namespace": NS, "uid": f"uid-ms-{name}", "generation": 1}, "spec": spec}


def deployment_obj(name: str, replicas: int) -> Obj:
    return {"metadata": {"name": name, "namespace": NS, "uid": f"uid-{name}"},
            "spec": {"replicas": replicas, "template": {"metadata": {"labels": {"app": name}}},
                     "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 0}}}}


def pod_obj(name: str, model: str | None, node: str | None = None, gpu: int | None = None,
            fraction: str | None = None, terminating: bool = False,
            scheduler: str = DEFAULT_SCHEDULER_NAME) -> Obj:
    meta: Obj = {"name": name, "namespace": NS, "uid": f"uid-{name}", "creationTimestamp": name,
                 "labels": {MODEL_LABEL: model} if model else {}, "annotations": {}}
    if gpu is not None:
        meta["annotations"][GPU_ANNOTATION] = str(gpu)
    if fraction is not None:
        meta["annotations"][MEMORY_FRACTION_ANNOTATION] = fraction
    if terminating:
        meta["deletionTimestamp"] = "2026-11-28T05:00:00Z"
    spec: Obj = {"schedulerName": scheduler, "containers": [{"name": "server", "image": "vllm"}]}
    if node is not None:
        spec["nodeName"] = node
    return {"metadata": meta, "spec": spec, "status": {"phase": "Running" if node else "Pending",
                                                      "conditions": [{"type": "Ready", "status": "True"}]}}


@st.composite
def worlds(draw: st.DrawFn) -> tuple[list[Obj], list[Obj], list[Obj], list[Obj]]:
    nodes = []
    for i in range(draw(st.integers(1, 2))):
        capacity = draw(st.integers(1, GPU_LIMIT))
        allocatable = draw(st.one_of(st.none(), st.integers(0, capacity)))
        memory = draw(st.sampled_from([(GPU_MEMORY_MIB_LABEL, "81920"), (GPU_MEMORY_MIB_LABEL, "81559.5"),
                                       (GPU_MEMORY_MIB_LABEL, "40960"), (GPU_MEMORY_LABEL, "48Gi")]))
        nodes.append(node_obj(f"n{i}", capacity, allocatable, memory))
    names = draw(st.lists(st.sampled_from(sorted(MODELS)), min_size=1, max_size=3, unique=True))
    replicas = {name: draw(st.integers(1, 2)) for name in names}
    servings = [serving_obj(name, replicas[name], draw(st.sampled_from([None, None, "0", "1536Mi", "6Gi", "junk"])))
                for name in names]
    deployments = [deployment_obj(name, replicas[name]) for name in names]
    pods = []
    for i in range(draw(st.integers(0, 4))):
        model = draw(st.sampled_from([*names, *names, "ghost", None]))
        scheduler = draw(st.sampled_from(["kvsched", "kvsched", DEFAULT_SCHEDULER_NAME]))
        pods.append(pod_obj(f"run-{i}", model, f"n{draw(st.integers(0, len(nodes) - 1))}",
                            draw(st.integers(0, GPU_LIMIT - 1)),
                            draw(st.sampled_from([None, "0.150", "0.500", "0.900", "junk"])),
                            terminating=draw(st.booleans()), scheduler=scheduler))
    for i in range(draw(st.integers(1, 3))):
        pods.append(pod_obj(f"new-{i}", draw(st.sampled_from(names)), scheduler="kvsched"))
    return nodes, servings, deployments, pods


def nudged_and_filtered(nodes: list[Obj], servings: list[Obj], deployments: list[Obj],
                        pods: list[Obj]) -> tuple[set[str], set[str]]:
    """(pods the controller nudges, pending managed pods the extender's filter passes on some node)."""
    world = World(tuple(read_node(n) for n in nodes), tuple(read_pod(p) for p in pods),
                  tuple(read_deployment(d) for d in deployments), tuple(read_model_serving(m) for m in servings))
    config = DecisionConfig(gpu_holders=False)  # the default memory headroom, given to both sides as `kvsched serve` does
    decision = decide(world, config, planner, now=NOW)
    nudged = {str(n.pod) for n in decision.nudges}
    written = {f"{w.key.namespace}/{w.key.name}": w.status for w in decision.statuses}
    cache = Cache(headroom=config.headroom())
    for n in nodes:
        cache.on_node("ADDED", n)
    for m in servings:
        m = copy.deepcopy(m)
        m["status"] = written.get(f"{NS}/{m['metadata']['name']}", m.get("status", {}))
        cache.on_model("ADDED", m)
    for p in pods:
        cache.on_pod("ADDED", p)
    names = [n["metadata"]["name"] for n in nodes]
    passed = set()
    for p in pods:
        meta = p["metadata"]
        model = meta["labels"].get(MODEL_LABEL)
        if p["spec"].get("nodeName") or not cache.is_managed(model, p["spec"]["schedulerName"]):
            continue
        ref = PodRef(NS, meta["name"], meta["uid"], f"{NS}/{model}")
        if cache.filter(ref, names).passed:
            passed.add(f"{NS}/{meta['name']}")
    return nudged, passed


N0 = node_obj("n0", 1, None, (GPU_MEMORY_MIB_LABEL, "81920"))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(worlds())
# A node whose allocatable GPUs (1) are fewer than its capacity (2): both must plan and admit on one GPU.
@example(([node_obj("n0", 2, 1, (GPU_MEMORY_MIB_LABEL, "81920"))], [serving_obj("a", 2)], [deployment_obj("a", 2)],
          [pod_obj("new-0", "a", scheduler="kvsched"), pod_obj("new-1", "a", scheduler="kvsched")]))
# A GPU memory label with a fraction of a MiB.
@example(([node_obj("n0", 1, None, (GPU_MEMORY_MIB_LABEL, "81559.5"))], [serving_obj("a", 1)],
          [deployment_obj("a", 1)], [pod_obj("new-0", "a", scheduler="kvsched")]))
# A pod of a model without a ModelServing holds the planned GPU: the extender counts it as filling it.
@example(([N0], [serving_obj("a", 1)], [deployment_obj("a", 1)],
          [pod_obj("run-0", "ghost", "n0", 0, "0.150", scheduler="kvsched"),
           pod_obj("new-0", "a", scheduler="kvsched")]))
# A pod without a share annotation counts by its weights.
@example(([N0], [serving_obj("a", 1), serving_obj("b", 1)], [deployment_obj("a", 1), deployment_obj("b", 1)],
          [pod_obj("run-0", "b", "n0", 0, None, scheduler="kvsched"), pod_obj("new-0", "a", scheduler="kvsched")]))
def test_the_controller_nudges_exactly_the_pods_the_extender_would_pass(
        case: tuple[list[Obj], list[Obj], list[Obj], list[Obj]]) -> None:
    nudged, passed = nudged_and_filtered(*case)
    assert nudged == passed
