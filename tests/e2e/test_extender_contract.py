"""Contract: the stock kube-scheduler, configured as the Helm chart configures it, sends pods with
`schedulerName: kvsched` through `kvsched extender`'s filter, prioritize and bind verbs, and the pod ends on the
node and GPU the extender bound it to; a pod the extender rejects stays Pending with the extender's reason in its
FailedScheduling event. The test writes the ModelServing status itself, acting as the controller."""
from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator

import pytest
from kubernetes import client

from kvsched.api.names import DEFAULT_SCHEDULER_NAME
from .harness.kube import (
    create_gpu_nodes, delete_nodes, gpu_node_manifest, pod_annotations, pod_events, pod_node, wait_for,
    wait_pod_running, wait_pods_bound,
)
from .harness.kvsched import (
    MEMORY_FRACTION_ANNOTATION, GPU_ANNOTATION, ExtenderProcess, managed_deployment, write_model,
)
from .harness.processes import Component

pytestmark = pytest.mark.e2e


@pytest.fixture
def gpu_nodes(core: client.CoreV1Api) -> Iterator[list[str]]:
    """Three identical KWOK GPU nodes, so only the extender can tell them apart."""
    prefix = f"contract-{uuid.uuid4().hex[:6]}"
    names = [f"{prefix}-{s}" for s in ("a", "b", "c")]
    create_gpu_nodes(core, [gpu_node_manifest(n, gpus=2, gpu_memory_mib=81920) for n in names])
    yield names
    delete_nodes(core, names)


@pytest.fixture
def custom(kube: client.ApiClient, project_crds: list[str]) -> client.CustomObjectsApi:
    assert "modelservings.kvsched.io" in project_crds
    return client.CustomObjectsApi(kube)


def test_kvsched_pods_are_filtered_prioritised_and_bound_by_the_extender(
        core: client.CoreV1Api, apps: client.AppsV1Api, custom: client.CustomObjectsApi, namespace: str,
        gpu_nodes: list[str], extender: ExtenderProcess, kvsched_scheduler: Callable[..., Component]) -> None:
    a, b, c = gpu_nodes
    # Two slots on two nodes: the first pod passes filter on both, so the scheduler must also call prioritize
    # (it skips scoring when one node is feasible); the second finds b's GPU held and only c left.
    write_model(custom, namespace, "served", "16Gi", [(b, 1, 0.25), (c, 0, 0.5)])
    kvsched_scheduler(extender.url)
    apps.create_namespaced_deployment(namespace, managed_deployment("served", replicas=2))
    pods = wait_pods_bound(core, namespace, "app=served", count=2)

    placed = sorted((pod_node(core, namespace, p.metadata.name),
                     pod_annotations(core, namespace, p.metadata.name).get(GPU_ANNOTATION),
                     pod_annotations(core, namespace, p.metadata.name).get(MEMORY_FRACTION_ANNOTATION)) for p in pods)
    assert placed == [(b, "1", "0.250"), (c, "0", "0.500")], [pod_events(core, namespace, p.metadata.name)
                                                             for p in pods]
    for pod in pods:
        assert wait_pod_running(core, namespace, pod.metadata.name).spec.scheduler_name == DEFAULT_SCHEDULER_NAME

    calls = extender.requests()
    assert calls.get(("filter", "managed"), 0) >= 2, calls
    assert calls.get(("prioritize", "managed"), 0) >= 1, calls
    assert calls.get(("bind", "managed")) == 2, calls  # one bind per pod, each on its first try
    assert not {k: v for k, v in calls.items() if k[1] in ("error", "bad_request", "conflict", "rejected")}, calls


@pytest.mark.parametrize("slots, reason", [
    pytest.param([], "no slot of refused planned on this node", id="no slot planned on any node"),
    pytest.param([(0, 5, 0.5)], "GPU 5 planned for refused is past the node's 2 GPU(s)",
                 id="plan names a GPU past the node's count"),
])
def test_extender_rejection_leaves_the_pod_pending_with_its_reason(
        core: client.CoreV1Api, apps: client.AppsV1Api, custom: client.CustomObjectsApi, namespace: str,
        gpu_nodes: list[str], extender: ExtenderProcess, kvsched_scheduler: Callable[..., Component],
        slots: list[tuple[int, int, float]], reason: str) -> None:
    """`slots`: (index into gpu_nodes, GPU, memory fraction) of the plan the controller would have written."""
    write_model(custom, namespace, "refused", "16Gi", [(gpu_nodes[i], g, f) for i, g, f in slots])
    kvsched_scheduler(extender.url)
    apps.create_namespaced_deployment(namespace, managed_deployment("refused", replicas=1))
    pods = wait_for(lambda: core.list_namespaced_pod(namespace, label_selector="app=refused").items,
                    lambda items: len(items) == 1, 30.0, "the Deployment's pod")
    name = pods[0].metadata.name
    events = wait_for(lambda: pod_events(core, namespace, name),
                      lambda evs: any(e.startswith("FailedScheduling") and reason in e for e in evs),
                      60.0, f"a FailedScheduling event quoting {reason!r}")
    assert pod_node(core, namespace, name) is None, events
    calls = extender.requests()
    assert calls.get(("filter", "managed"), 0) >= 1, calls
    assert not any(verb == "bind" for verb, _ in calls), calls
