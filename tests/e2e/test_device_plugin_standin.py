"""The device plugin stand-in (harness/device_plugin.py): its allocation rule without a cluster, then on the
control plane: pods requesting `nvidia.com/gpu` on one KWOK node get disjoint devices, a holder pod gets the UUID
`kvsched gpu-holder` would report, and devices are given again once their pod is gone."""
from __future__ import annotations

import uuid

import pytest
from kubernetes import client

from kvsched.api.names import GPU_UUID_ANNOTATION, HOLDER_LABEL

from .harness.device_plugin import ALLOCATION_ANNOTATION, GpuPod, allocate, fake_uuid, parse_devices
from .harness.kube import (
    GPU_RESOURCE, create_gpu_nodes, delete_nodes, deployment_manifest, gpu_node_manifest, wait_for,
)


def pod(uid: str, request: int, devices: tuple[int, ...] = (), node: str = "n1", live: bool = True) -> GpuPod:
    return GpuPod(uid, "ns", uid, node, request, devices, False, live)


@pytest.mark.parametrize("wanted, others, gpus, expected", [
    pytest.param(1, [], 0, None, id="node without GPUs"),
    pytest.param(1, [], 4, (0,), id="empty node: lowest index"),
    pytest.param(2, [pod("a", 1, (0,)), pod("b", 1, (2,))], 4, (1, 3), id="skips allocated devices"),
    pytest.param(1, [pod("a", 4, (0, 1, 2, 3))], 4, None, id="node full"),
    pytest.param(1, [pod("a", 4, (0, 1, 2, 3), live=False)], 4, (0,), id="finished pod frees its devices"),
    pytest.param(1, [pod("a", 1, (0,), node="n2")], 4, (0,), id="another node's devices do not count"),
    pytest.param(4, [pod("a", 1, (3,))], 4, None, id="exact shortfall: 3 free, 4 wanted"),
])
def test_allocate(wanted: int, others: list[GpuPod], gpus: int, expected: tuple[int, ...] | None) -> None:
    assert allocate(pod("me", wanted), others, gpus) == expected


def test_fake_uuid_is_stable_per_node_and_device() -> None:
    assert fake_uuid("n1", 0) == fake_uuid("n1", 0)
    assert len({fake_uuid("n1", 0), fake_uuid("n1", 1), fake_uuid("n2", 0)}) == 3
    assert fake_uuid("n1", 0).startswith("GPU-")
    assert parse_devices("0,3") == (0, 3) and parse_devices(None) == () and parse_devices("") == ()


def _allocations(core: client.CoreV1Api, namespace: str, selector: str) -> dict[str, tuple[int, ...]]:
    pods = core.list_namespaced_pod(namespace, label_selector=selector).items
    return {p.metadata.name: parse_devices((p.metadata.annotations or {}).get(ALLOCATION_ANNOTATION))
            for p in pods if p.metadata.deletion_timestamp is None}


@pytest.mark.e2e
def test_standin_allocates_disjoint_devices_and_reports_holder_uuids(
        core: client.CoreV1Api, apps: client.AppsV1Api, namespace: str) -> None:
    node = f"dp-node-{uuid.uuid4().hex[:6]}"
    try:
        create_gpu_nodes(core, [gpu_node_manifest(node, gpus=4, gpu_memory_mib=81920)])
        two = deployment_manifest("two", replicas=1, resources={"requests": {GPU_RESOURCE: "2"},
                                                                "limits": {GPU_RESOURCE: "2"}})
        two["spec"]["template"]["spec"]["nodeName"] = node
        apps.create_namespaced_deployment(namespace, two)
        got = wait_for(lambda: _allocations(core, namespace, "app=two"),
                       lambda a: len(a) == 1 and all(len(d) == 2 for d in a.values()), 60.0, "2 GPUs allocated")
        (devices_two,) = got.values()
        holder = {"apiVersion": "v1", "kind": "Pod",
                  "metadata": {"name": "holder", "labels": {HOLDER_LABEL: "true", "app": "holder"}},
                  "spec": {"nodeName": node, "containers": [{
                      "name": "hold", "image": "registry.invalid/kvsched:latest",
                      "resources": {"requests": {GPU_RESOURCE: "1"}, "limits": {GPU_RESOURCE: "1"}}}]}}
        core.create_namespaced_pod(namespace, holder)
        held = wait_for(lambda: core.read_namespaced_pod("holder", namespace).metadata.annotations or {},
                        lambda a: GPU_UUID_ANNOTATION in a, 60.0, "the holder's UUID")
        (device,) = parse_devices(held[ALLOCATION_ANNOTATION])
        assert device not in devices_two
        assert held[GPU_UUID_ANNOTATION] == fake_uuid(node, device)
        # The 2-GPU pod goes; its replacement gets devices again, never the holder's.
        apps.delete_namespaced_deployment("two", namespace)
        wait_for(lambda: _allocations(core, namespace, "app=two"), lambda a: not a, 60.0, "the 2-GPU pod gone")
        apps.create_namespaced_deployment(namespace, two)
        again = wait_for(lambda: _allocations(core, namespace, "app=two"),
                         lambda a: len(a) == 1 and all(len(d) == 2 for d in a.values()), 60.0, "re-allocated")
        (devices_again,) = again.values()
        assert device not in devices_again and len(set(devices_again)) == 2
    finally:
        delete_nodes(core, [node])
