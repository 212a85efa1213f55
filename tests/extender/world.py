"""Builders for extender tests: API-shaped Node, ModelServing and Pod dicts, an in-memory Cache fed with them
through the informer handlers (no cluster), a fake binder, and ExtenderArgs bodies."""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any

from kvsched.api.names import (
    API_VERSION,
    DEFAULT_SCHEDULER_NAME,
    GPU_ANNOTATION,
    MEMORY_FRACTION_ANNOTATION,
    MODEL_LABEL,
)
from kvsched.extender.cache import Cache

Obj = dict[str, Any]
NS = "ml"


def node(name: str, gpus: int = 4, memory_mib: int = 81920) -> Obj:
    return {"kind": "Node", "metadata": {"name": name, "resourceVersion": "1",
                                         "labels": {"nvidia.com/gpu.memory": str(memory_mib)}},
            "status": {"capacity": {"nvidia.com/gpu": str(gpus), "cpu": "64"}}}


def model(name: str, size: str, slots: list[tuple[str, int]] | list[tuple[str, int, float]],
          namespace: str = NS) -> Obj:
    return {"kind": "ModelServing", "apiVersion": API_VERSION,
            "metadata": {"name": name, "namespace": namespace, "resourceVersion": "1"},
            "spec": {"workloadRef": {"name": name}, "modelSize": size, "requestRate": 1, "sloSeconds": 1},
            "status": {"slots": [{"node": s[0], "gpu": s[1], "memoryFraction": s[2] if len(s) > 2 else 0.5}
                                 for s in slots]}}


def pod(name: str, model_name: str | None = None, node_name: str = "", gpu: int | None = None,
        uid: str | None = None, terminating: bool = False, phase: str = "Running",
        scheduler: str = DEFAULT_SCHEDULER_NAME, namespace: str = NS, fraction: str | None = None) -> Obj:
    meta: Obj = {"name": name, "namespace": namespace, "uid": uid or f"uid-{name}", "resourceVersion": "1",
                 "labels": {"app": "x"}, "annotations": {}}
    if model_name:
        meta["labels"][MODEL_LABEL] = model_name
    if gpu is not None:
        meta["annotations"][GPU_ANNOTATION] = str(gpu)
    if fraction is not None:
        meta["annotations"][MEMORY_FRACTION_ANNOTATION] = fraction
    if terminating:
        meta["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    return {"kind": "Pod", "apiVersion": "v1", "metadata": meta,
            "spec": {"schedulerName": scheduler, "nodeName": node_name,
                     "containers": [{"name": "vllm", "image": "vllm/vllm-openai:v0.6.0"}]},
            "status": {"phase": phase}}


def world(nodes: list[Obj] = (), models: list[Obj] = (), pods: list[Obj] = (),  # type: ignore[assignment]
          ready: bool = True, gone: list[Obj] = (),  # type: ignore[assignment]
          start_timeout_s: float = 300.0) -> Cache:
    """A synced cache holding `nodes`, `models` and `pods`. The pods in `gone` ran and have left their GPUs
    (the cache remembers which model left them): deleted, or, with phase Succeeded/Failed, finished.
    `start_timeout_s`: the start gate's timeout (0: off)."""
    cache = Cache(start_timeout_s=start_timeout_s)
    for n in nodes:
        cache.on_node("ADDED", n)
    for m in models:
        cache.on_model("ADDED", m)
    for p in gone:
        cache.on_pod("ADDED", {**p, "status": {"phase": "Running"}})
    for p in pods:
        cache.on_pod("ADDED", p)
    for p in gone:
        cache.on_pod("MODIFIED" if p["status"]["phase"] in ("Succeeded", "Failed") else "DELETED", p)
    cache.sync_checks = [lambda: ready]
    return cache


def args(p: Obj, names: list[str] | None = None, nodes: list[Obj] | None = None) -> Obj:
    body: Obj = {"Pod": p}
    if names is not None:
        body["NodeNames"] = names
    if nodes is not None:
        body["Nodes"] = {"kind": "NodeList", "apiVersion": "v1", "items": nodes}
    return body


def binding(p: Obj, node_name: str) -> Obj:
    meta = p["metadata"]
    return {"PodName": meta["name"], "PodNamespace": meta["namespace"], "PodUID": meta["uid"], "Node": node_name}


@dataclass
class FakeBinder:
    """Records binds; fails when `fail` is set; sleeps `delay_s` inside bind (to overlap concurrent binds)."""

    fail: str = ""
    delay_s: float = 0.0
    calls: list[tuple[str, str, str, str, dict[str, str] | None]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def bind(self, namespace: str, name: str, uid: str, node: str, annotations: dict[str, str] | None) -> None:
        if self.delay_s:
            time.sleep(self.delay_s)
        with self.lock:
            self.calls.append((namespace, name, uid, node, annotations))
        if self.fail:
            raise RuntimeError(self.fail)
