"""Kubernetes helpers for e2e tests: clients, fake GPU nodes, CRDs, Deployments and pod placement.

Called by tests/e2e tests and fixtures with clients built by `api_client(control_plane.kubeconfig)`. Every wait
takes a timeout in seconds and raises TimeoutError naming what it waited for and what it last saw.
"""
from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, TypeVar

import yaml
from kubernetes import client, config
from kubernetes.client.rest import ApiException

from .cluster import KWOK_NODE_ANNOTATION, KWOK_NODE_VALUE

GPU_RESOURCE = "nvidia.com/gpu"
GPU_MEMORY_LABEL = "nvidia.com/gpu.memory"  # MiB per GPU, as GPU Feature Discovery labels it
REPO_ROOT = Path(__file__).resolve().parents[3]

T = TypeVar("T")


def api_client(kubeconfig: Path) -> client.ApiClient:
    """An ApiClient for the e2e control plane (TLS verified against its CA, admin token)."""
    return config.new_client_from_config(config_file=str(kubeconfig))


def wait_for(fetch: Callable[[], T], done: Callable[[T], bool], timeout_s: float, what: str,
             interval_s: float = 0.25) -> T:
    """Call `fetch` until `done(value)`; return that value. Raises TimeoutError with the last value seen."""
    deadline = time.monotonic() + timeout_s
    last: Any = None
    while True:
        try:
            last = fetch()
            if done(last):
                return last  # type: ignore[no-any-return]
        except ApiException as e:
            if e.status != 404:
                raise
            last = f"404 {e.reason}"
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout_s:.0f}s waiting for {what}; last seen: {last}")
        time.sleep(interval_s)


# -- nodes -----------------------------------------------------------------------------------------------------
def gpu_node_manifest(name: str, gpus: int, gpu_memory_mib: int, labels: dict[str, str] | None = None,
                      cpu: str = "64", memory: str = "512Gi", pods: int = 110) -> dict[str, Any]:
    """A Node that KWOK manages: capacity `nvidia.com/gpu`, label `nvidia.com/gpu.memory` (MiB per GPU)."""
    capacity = {"cpu": cpu, "memory": memory, "pods": str(pods), GPU_RESOURCE: str(gpus)}
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "annotations": {KWOK_NODE_ANNOTATION: KWOK_NODE_VALUE, "node.alpha.kubernetes.io/ttl": "0"},
            "labels": {"kubernetes.io/hostname": name, "kubernetes.io/os": "linux", "type": "kwok",
                       GPU_MEMORY_LABEL: str(gpu_memory_mib), **(labels or {})},
        },
        "spec": {},
        # KWOK's node-initialize stage fills in nodeInfo, addresses and the conditions.
        "status": {"capacity": capacity, "allocatable": capacity},
    }


def node_is_ready(node: client.V1Node) -> bool:
    return any(c.type == "Ready" and c.status == "True" for c in (node.status.conditions or []))


def create_gpu_nodes(core: client.CoreV1Api, nodes: Iterable[dict[str, Any]], timeout_s: float = 60.0
                     ) -> list[client.V1Node]:
    """Create the node manifests (see `gpu_node_manifest`) and wait until KWOK reports each Ready."""
    names = [core.create_node(body=manifest).metadata.name for manifest in nodes]
    return [wait_for(lambda n=name: core.read_node(n), node_is_ready, timeout_s, f"node {name} Ready")
            for name in names]


def delete_nodes(core: client.CoreV1Api, names: Iterable[str]) -> None:
    """Delete nodes, ignoring those already gone."""
    for name in names:
        try:
            core.delete_node(name)
        except ApiException as e:
            if e.status != 404:
                raise


# -- CRDs ------------------------------------------------------------------------------------------------------
def project_crd_paths(root: Path = REPO_ROOT) -> list[Path]:
    """YAML files under deploy/ and helm/ that define a CustomResourceDefinition (none until the CRD lands)."""
    found = []
    for path in sorted([*root.glob("deploy/**/*.yaml"), *root.glob("helm/*/crds/*.yaml")]):
        docs = [d for d in yaml.safe_load_all(path.read_text()) if isinstance(d, dict)]
        if any(d.get("kind") == "CustomResourceDefinition" for d in docs):
            found.append(path)
    return found


def apply_crds(api: client.ApiClient, paths: Iterable[Path], timeout_s: float = 30.0) -> list[str]:
    """Create (or replace) every CRD in `paths` and wait until each is Established; returns their names."""
    ext = client.ApiextensionsV1Api(api)
    names = []
    for path in paths:
        for doc in yaml.safe_load_all(Path(path).read_text()):
            if not isinstance(doc, dict) or doc.get("kind") != "CustomResourceDefinition":
                continue
            name = doc["metadata"]["name"]
            if name in names:  # deploy/crds is generated from the chart's crds/: the same CRD twice
                continue
            try:
                ext.create_custom_resource_definition(body=doc)
            except ApiException as e:
                if e.status != 409:
                    raise
                _replace_crd(ext, name, doc)
            names.append(name)
    for name in names:
        wait_for(lambda n=name: ext.read_custom_resource_definition(n),
                 lambda crd: any(c.type == "Established" and c.status == "True"
                                 for c in (crd.status.conditions or [])),
                 timeout_s, f"CRD {name} Established")
    return names


def _replace_crd(ext: client.ApiextensionsV1Api, name: str, doc: dict[str, Any], attempts: int = 5) -> None:
    """Replace an existing CRD; retried on 409, as the apiserver updates a new CRD's status (Established) meanwhile."""
    for attempt in range(attempts):
        current = ext.read_custom_resource_definition(name)
        doc["metadata"]["resourceVersion"] = current.metadata.resource_version
        try:
            ext.replace_custom_resource_definition(name, body=doc)
            return
        except ApiException as e:
            if e.status != 409 or attempt == attempts - 1:
                raise


# -- workloads and pods ----------------------------------------------------------------------------------------
def deployment_manifest(name: str, replicas: int = 1, scheduler_name: str | None = None,
                        annotations: dict[str, str] | None = None,
                        pod_annotations: dict[str, str] | None = None,
                        resources: dict[str, Any] | None = None) -> dict[str, Any]:
    """A minimal Deployment whose pods carry the label app=<name> (KWOK fakes the container running)."""
    pod_spec: dict[str, Any] = {
        "containers": [{"name": "server", "image": "registry.invalid/kvsched/fake:latest",
                        "resources": resources or {}}],
    }
    if scheduler_name:
        pod_spec["schedulerName"] = scheduler_name
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "annotations": annotations or {}},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": {"metadata": {"labels": {"app": name}, "annotations": pod_annotations or {}},
                         "spec": pod_spec},
        },
    }


def wait_pods_bound(core: client.CoreV1Api, namespace: str, label_selector: str, count: int = 1,
                    timeout_s: float = 60.0) -> list[client.V1Pod]:
    """Wait until `count` pods matching `label_selector` have a node; returns them sorted by name."""
    pods = wait_for(
        lambda: core.list_namespaced_pod(namespace, label_selector=label_selector).items,
        lambda items: len([p for p in items if p.spec.node_name]) >= count,
        timeout_s,
        f"{count} pod(s) {label_selector!r} in {namespace} bound",
    )
    return sorted((p for p in pods if p.spec.node_name), key=lambda p: p.metadata.name)


def wait_pod_bound(core: client.CoreV1Api, namespace: str, name: str, timeout_s: float = 60.0) -> client.V1Pod:
    """Wait until pod `name` has a node; returns the pod."""
    return wait_for(lambda: core.read_namespaced_pod(name, namespace), lambda p: bool(p.spec.node_name),
                    timeout_s, f"pod {namespace}/{name} bound")


def wait_pod_running(core: client.CoreV1Api, namespace: str, name: str, timeout_s: float = 60.0) -> client.V1Pod:
    """Wait until KWOK reports pod `name` Running."""
    return wait_for(lambda: core.read_namespaced_pod(name, namespace), lambda p: p.status.phase == "Running",
                    timeout_s, f"pod {namespace}/{name} Running")


def pod_node(core: client.CoreV1Api, namespace: str, name: str) -> str | None:
    """The node pod `name` is bound to, or None."""
    node: str | None = core.read_namespaced_pod(name, namespace).spec.node_name
    return node


def pod_annotations(core: client.CoreV1Api, namespace: str, name: str) -> dict[str, str]:
    """The annotations of pod `name` (empty dict when it has none)."""
    return dict(core.read_namespaced_pod(name, namespace).metadata.annotations or {})


def pod_events(core: client.CoreV1Api, namespace: str, name: str) -> list[str]:
    """`reason: message` of the events about pod `name`, oldest first (handy in assertion messages)."""
    events = core.list_namespaced_event(namespace, field_selector=f"involvedObject.name={name}").items
    return [f"{e.reason}: {e.message}" for e in sorted(events, key=lambda e: str(e.last_timestamp or ""))]
