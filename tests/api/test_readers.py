"""Readers take the shape of API objects only; values are judged by the decision core."""
from __future__ import annotations

from typing import Any

import pytest

from kvsched.api.readers import read_deployment, read_model_serving, read_node, read_pod


def test_node_reads_gpus_labels_cordon_and_readiness() -> None:
    node = read_node({"metadata": {"name": "n1", "uid": "u", "labels": {"nvidia.com/gpu.memory": "81920"}},
                      "spec": {"unschedulable": True},
                      "status": {"capacity": {"nvidia.com/gpu": "8"}, "allocatable": {"nvidia.com/gpu": "7"},
                                 "conditions": [{"type": "Ready", "status": "True"}]}})
    assert (node.name, node.gpu_capacity, node.unschedulable, node.ready) == ("n1", "7", True, True)
    assert node.labels == {"nvidia.com/gpu.memory": "81920"}


@pytest.mark.parametrize("spec, gpus", [
    pytest.param({"containers": [{"resources": {"limits": {"nvidia.com/gpu": 2}}}, {}]}, 2, id="limits only"),
    pytest.param({"containers": [{"resources": {"requests": {"nvidia.com/gpu": "1"}}}] * 2,
                  "initContainers": [{"resources": {"requests": {"nvidia.com/gpu": "3"}}}]}, 3,
                 id="init container larger than the sum"),
    pytest.param({"containers": [{"resources": {"requests": {"nvidia.com/gpu": "lots"}}}]}, 0,
                 id="garbage counts as none"),
    pytest.param({}, 0, id="no containers"),
])
def test_pod_gpu_request_as_the_scheduler_counts_it(spec: dict[str, Any], gpus: int) -> None:
    assert read_pod({"metadata": {"name": "p", "namespace": "ns"}, "spec": spec}).gpu_request == gpus


def test_pod_reads_binding_annotations_and_life_stage() -> None:
    # A pod as the API serves it, names spelled out: the wire format, not kvsched.api.names.
    pod = read_pod({"metadata": {"name": "p", "namespace": "ns", "labels": {"kvsched.io/model": "m"},
                                 "annotations": {"kvsched.io/gpu": "3"}, "deletionTimestamp": "2026-01-01T00:00:00Z"},
                    "spec": {"nodeName": "n1", "schedulerName": "kvsched"},
                    "status": {"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]}})
    assert (pod.node, pod.scheduler_name, pod.ready, pod.deleting, pod.terminal) == ("n1", "kvsched", True, True,
                                                                                   False)


@pytest.mark.parametrize("obj", [
    pytest.param({}, id="empty object"),
    pytest.param({"metadata": [], "spec": "x", "status": 3}, id="every part mistyped"),
])
def test_malformed_objects_read_as_absent_values(obj: dict[str, Any]) -> None:
    assert read_node(obj).gpu_capacity is None
    assert read_pod(obj).node is None
    assert read_deployment(obj).replicas == 1
    ms = read_model_serving(obj)
    assert (ms.spec, ms.status, ms.owner) == ({}, {}, None)


def test_model_serving_reads_its_controlling_owner() -> None:
    ms = read_model_serving({"metadata": {"name": "m", "namespace": "ns", "generation": 4, "ownerReferences": [
        {"kind": "Other", "name": "x", "uid": "1"},
        {"kind": "Deployment", "name": "m", "uid": "2", "controller": True}]}, "spec": {"modelSize": "1Gi"}})
    assert ms.generation == 4 and ms.owner is not None and (ms.owner.kind, ms.owner.uid) == ("Deployment", "2")


@pytest.mark.parametrize("node, status, ready, bound_at", [
    pytest.param("n1", {"conditions": [{"type": "PodScheduled", "status": "True",
                                        "lastTransitionTime": "2026-01-01T00:00:05Z"},
                                       {"type": "Ready", "status": "False"}],
                        "startTime": "2026-01-01T00:00:07Z"}, False, "2026-01-01T00:00:05Z",
                 id="bound, not Ready: PodScheduled's time"),
    pytest.param("n1", {"conditions": [{"type": "PodScheduled", "status": "True",
                                        "lastTransitionTime": "2026-01-01T00:00:05Z"},
                                       {"type": "Ready", "status": "True"}]}, True, "2026-01-01T00:00:05Z",
                 id="bound and Ready"),
    pytest.param("n1", {"startTime": "2026-01-01T00:00:07Z"}, False, "2026-01-01T00:00:07Z",
                 id="no PodScheduled condition: startTime"),
    pytest.param("n1", {"conditions": [{"type": "PodScheduled", "status": "False",
                                        "lastTransitionTime": "2026-01-01T00:00:01Z"}]}, False, "",
                 id="PodScheduled False and no startTime: unknown"),
    pytest.param(None, {"conditions": [{"type": "PodScheduled", "status": "True",
                                        "lastTransitionTime": "2026-01-01T00:00:05Z"}]}, False, "",
                 id="no node: not bound"),
    pytest.param("n1", {"conditions": "garbage"}, False, "", id="mistyped conditions"),
])
def test_pod_reads_readiness_and_when_it_was_bound(node: str | None, status: dict[str, Any], ready: bool,
                                                   bound_at: str) -> None:
    pod = read_pod({"metadata": {"name": "p", "namespace": "ns"}, "spec": {"nodeName": node}, "status": status})
    assert (pod.ready, pod.bound_at) == (ready, bound_at)
