"""A fake world for the decision core: builders for nodes, pods, Deployments and ModelServings, a planner over
the real packer, and `apply` that carries a Decision's writes into the world the way the API server would."""
from __future__ import annotations

import copy
import dataclasses
from typing import Any, Mapping, Sequence

from kvsched.api.names import (
    DEFAULT_SCHEDULER_NAME,
    GPU_ANNOTATION,
    GPU_MEMORY_MIB_LABEL,
    MEMORY_FRACTION_ANNOTATION,
    MODEL_LABEL,
    RATE_ANNOTATION,
    SIZE_ANNOTATION,
    SLO_ANNOTATION,
)
from kvsched.api.objects import DeploymentObj, ModelServingObj, NodeObj, OwnerRef, PodObj, World
from kvsched.controller import Decision, DecisionConfig, decide
from kvsched.packer import Gpu, Model, PackOptions, Plan, Slot, solve

NOW = "2026-11-28T06:00:00Z"
# The slot rule, plans and migrations without GPU holder pods (a supported mode); test_holders.py and the holder
# scenarios of test_convergence.py turn them on.
NO_HOLDERS = DecisionConfig(gpu_holders=False)
# Moves by eviction only (no make-before-break surges): the tests of the eviction path.
EVICT_FIRST = DecisionConfig(gpu_holders=False, make_before_break=False)
LATER = "2026-11-28T07:00:00Z"


def planner(models: Sequence[Model], gpus: Sequence[Gpu], current: Sequence[Slot],
            planned: Sequence[Slot] = ()) -> Plan:
    return solve(models, gpus, current=current, planned=planned, options=PackOptions(time_budget_s=1.0),
                 clock=lambda: 0.0)


def node(name: str, gpus: int = 2, memory_mib: int = 81920, **kw: Any) -> NodeObj:
    labels = {GPU_MEMORY_MIB_LABEL: str(memory_mib), **kw.pop("labels", {})}
    return NodeObj(name=name, uid=f"uid-{name}", labels=labels, gpu_capacity=str(gpus), **kw)


def deployment(name: str, size: str = "16Gi", rate: str = "4", slo: str = "1", replicas: int = 1,
               namespace: str = "ns", annotations: Mapping[str, str] | None = None) -> DeploymentObj:
    notes = dict(annotations) if annotations is not None else {
        SIZE_ANNOTATION: size, RATE_ANNOTATION: rate, SLO_ANNOTATION: slo}
    template = {"metadata": {"labels": {"app": name}},
                "spec": {"containers": [{"name": "server", "image": "vllm"}]}}
    return DeploymentObj(namespace=namespace, name=name, uid=f"uid-{name}", annotations=notes,
                         replicas=replicas, template=template,
                         strategy={"type": "RollingUpdate", "rollingUpdate": {"maxSurge": "25%",
                                                                              "maxUnavailable": "25%"}})


def serving(name: str, size: object = "16Gi", rate: object = 4, slo: object = 1, replicas: int | None = None,
            namespace: str = "ns", workload: str | None = None, owned: bool = False,
            status: Mapping[str, Any] | None = None) -> ModelServingObj:
    spec: dict[str, Any] = {"workloadRef": {"kind": "Deployment", "name": workload or name},
                            "modelSize": size, "requestRate": rate, "sloSeconds": slo}
    if replicas is not None:
        spec["replicas"] = replicas
    owner = OwnerRef("Deployment", name, f"uid-{name}") if owned else None
    return ModelServingObj(namespace=namespace, name=name, uid=f"uid-ms-{name}", generation=1, spec=spec,
                           status=dict(status or {}), owner=owner)


def pod(name: str, model: str, node_name: str | None, gpu: int | None, namespace: str = "ns",
        ready: bool = True, deleting: bool = False, scheduler: str = DEFAULT_SCHEDULER_NAME, gpu_request: int = 0,
        fraction: float | None = None) -> PodObj:
    annotations = {GPU_ANNOTATION: str(gpu)} if gpu is not None else {}
    if fraction is not None:
        annotations[MEMORY_FRACTION_ANNOTATION] = f"{fraction:.3f}"
    labels = {MODEL_LABEL: model} if model else {}
    return PodObj(namespace=namespace, name=name, uid=f"uid-{name}", node=node_name, labels=labels,
                  annotations=annotations, scheduler_name=scheduler, ready=ready, deleting=deleting,
                  gpu_request=gpu_request, created=name)


def run(world: World, config: DecisionConfig = NO_HOLDERS, now: str = NOW, **kw: Any) -> Decision:
    return decide(world, config, planner, now=now, **kw)


def _merge(target: dict[str, Any], patch: Mapping[str, Any]) -> None:
    """Strategic merge for the shapes the controller patches: maps merge, `containers`/`env` merge by name,
    other lists replace."""
    for key, value in patch.items():
        if isinstance(value, dict) and isinstance(target.get(key), dict):
            _merge(target[key], value)
        elif key in ("containers", "env") and isinstance(value, list):
            existing = {item["name"]: item for item in target.get(key, [])}
            for item in value:
                if item["name"] in existing:
                    _merge(existing[item["name"]], item)
                else:
                    target.setdefault(key, []).append(copy.deepcopy(item))
        else:
            target[key] = copy.deepcopy(value)


def apply(world: World, decision: Decision) -> World:
    """The world after the API server took every write of `decision` (evictions delete the pod at once)."""
    servings = {ms.key: ms for ms in world.model_servings}
    deployments = {d.key: d for d in world.deployments}
    for change in decision.owned_changes:
        if change.action == "delete":
            servings.pop(change.key, None)
        elif change.action == "create":
            dep = deployments[change.key]
            servings[change.key] = ModelServingObj(change.key.namespace, change.key.name, f"uid-ms-{dep.name}", 1,
                                                   dict(change.body["spec"]), {},
                                                   OwnerRef("Deployment", dep.name, dep.uid))
        else:
            ms = servings[change.key]
            servings[change.key] = dataclasses.replace(ms, spec=dict(change.body["spec"]),
                                                       generation=ms.generation + 1)
    for write in decision.statuses:
        servings[write.key] = dataclasses.replace(servings[write.key], status=copy.deepcopy(dict(write.status)))
    for p in decision.deployment_patches:
        dep = deployments[p.key]
        whole = {"template": copy.deepcopy(dict(dep.template)), "strategy": copy.deepcopy(dict(dep.strategy))}
        _merge(whole, p.patch["spec"])
        deployments[p.key] = dataclasses.replace(dep, template=whole["template"], strategy=whole["strategy"])
    pods = world.pods
    evicted = {e.pod.key for e in decision.evictions}
    pods = tuple(p for p in pods if p.key not in evicted)
    return World(world.nodes, pods, tuple(deployments.values()), tuple(servings.values()))


def settle(world: World, rounds: int = 5, **kw: Any) -> tuple[World, list[Decision]]:
    """Decide and apply until nothing is written (at most `rounds` times)."""
    decisions = []
    for _ in range(rounds):
        d = run(world, **kw)
        decisions.append(d)
        if d.writes == 0:
            break
        world = apply(world, d)
    return world, decisions


def bind_planned(world: World) -> World:
    """Start one Ready pod per planned slot of every ModelServing with its planned share (as the extender and
    KWOK would)."""
    pods = list(world.pods)
    for ms in world.model_servings:
        for i, slot in enumerate(ms.status.get("slots") or []):
            pods.append(pod(f"{ms.name}-{i}", ms.name, slot["node"], slot["gpu"], namespace=ms.namespace,
                            fraction=slot["memoryFraction"]))
    return dataclasses.replace(world, pods=tuple(pods))


def condition(ms: ModelServingObj, kind: str) -> dict[str, Any]:
    return next(c for c in ms.status["conditions"] if c["type"] == kind)
