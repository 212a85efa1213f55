"""Contract: the stock kube-scheduler sends pods with `schedulerName: kvsched` through an HTTP extender's
filter, prioritize and bind verbs with kube-scheduler's PascalCase wire format, and the pod ends on the node the
extender bound it to. A test-local stand-in plays the extender until kvsched's own replaces it."""
from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator

import pytest
from kubernetes import client

from .harness.kube import (
    create_gpu_nodes, delete_nodes, deployment_manifest, gpu_node_manifest, pod_annotations, pod_events,
    pod_node, wait_for, wait_pod_running, wait_pods_bound,
)
from .harness.processes import Component
from .standin_extender import BOUND_BY_ANNOTATION, StandIn, serve

pytestmark = pytest.mark.e2e


@pytest.fixture
def gpu_nodes(core: client.CoreV1Api) -> Iterator[list[str]]:
    """Three identical KWOK GPU nodes, so only the extender can tell them apart."""
    prefix = f"contract-{uuid.uuid4().hex[:6]}"
    names = [f"{prefix}-{s}" for s in ("a", "b", "c")]
    create_gpu_nodes(core, [gpu_node_manifest(n, gpus=2, gpu_memory_mib=81920) for n in names])
    yield names
    delete_nodes(core, names)


def test_kvsched_pod_is_filtered_prioritised_and_bound_by_the_extender(
        core: client.CoreV1Api, apps: client.AppsV1Api, namespace: str, gpu_nodes: list[str],
        kvsched_scheduler: Callable[..., Component]) -> None:
    a, b, c = gpu_nodes
    with serve(StandIn(keep={b, c}, prefer=c), core) as standin:
        kvsched_scheduler(standin.url)
        apps.create_namespaced_deployment(namespace, deployment_manifest("served", scheduler_name="kvsched"))
        (pod,) = wait_pods_bound(core, namespace, "app=served", count=1)
        name = pod.metadata.name

        assert pod_node(core, namespace, name) == c, pod_events(core, namespace, name)
        assert pod_annotations(core, namespace, name)[BOUND_BY_ANNOTATION] == "stand-in"
        assert wait_pod_running(core, namespace, name).spec.scheduler_name == "kvsched"

        (filter_args, *_) = standin.bodies("filter")
        assert filter_args["Pod"]["metadata"]["name"] == name
        assert filter_args["Pod"]["spec"]["schedulerName"] == "kvsched"
        assert {a, b, c} <= set(filter_args["NodeNames"])  # nodeCacheCapable: names, not Node objects
        assert not filter_args.get("Nodes")

        (prioritize_args, *_) = standin.bodies("prioritize")
        assert prioritize_args["Pod"]["metadata"]["uid"] == pod.metadata.uid
        assert set(prioritize_args["NodeNames"]) == {b, c}  # only what filter kept

        assert standin.bodies("bind") == [
            {"PodName": name, "PodNamespace": namespace, "PodUID": pod.metadata.uid, "Node": c}]


def test_extender_rejection_leaves_the_pod_pending_with_its_reason(
        core: client.CoreV1Api, apps: client.AppsV1Api, namespace: str, gpu_nodes: list[str],
        kvsched_scheduler: Callable[..., Component]) -> None:
    reason = "no free planned slot for this model"
    with serve(StandIn(keep=set(), prefer="", reject_reason=reason), core) as standin:
        kvsched_scheduler(standin.url)
        apps.create_namespaced_deployment(namespace, deployment_manifest("refused", scheduler_name="kvsched"))
        pods = wait_for(lambda: core.list_namespaced_pod(namespace, label_selector="app=refused").items,
                        lambda items: len(items) == 1, 30.0, "the Deployment's pod")
        name = pods[0].metadata.name
        events = wait_for(lambda: pod_events(core, namespace, name),
                          lambda evs: any(e.startswith("FailedScheduling") and reason in e for e in evs),
                          60.0, f"a FailedScheduling event quoting {reason!r}")
        assert pod_node(core, namespace, name) is None, events
        assert not standin.bodies("bind")
