"""Smoke: the control plane starts, KWOK keeps fake GPU nodes Ready, and the default scheduler places a
Deployment's pod, which KWOK then reports Running."""
from __future__ import annotations

import os
import subprocess
import uuid
from pathlib import Path

import pytest
from kubernetes import client

from .harness.cluster import ControlPlane
from .harness.tools import read_versions
from .harness.kube import (
    GPU_MEMORY_LABEL, GPU_RESOURCE, apply_crds, create_gpu_nodes, delete_nodes, deployment_manifest,
    gpu_node_manifest, pod_node, wait_pod_running, wait_pods_bound,
)

pytestmark = pytest.mark.e2e


def test_control_plane_reports_the_built_version(control_plane: ControlPlane, core: client.CoreV1Api,
                                                 kube: client.ApiClient) -> None:
    version = client.VersionApi(kube).get_code()
    assert version.git_version == control_plane.tools.k8s_version
    assert core.read_namespace("default").status.phase == "Active"


def test_kwok_nodes_are_ready_with_gpu_inventory(core: client.CoreV1Api) -> None:
    names = [f"smoke-gpu-{uuid.uuid4().hex[:6]}-{i}" for i in range(2)]
    try:
        nodes = create_gpu_nodes(core, [gpu_node_manifest(n, gpus=8, gpu_memory_mib=81920) for n in names])
        for node in nodes:
            assert node.status.allocatable[GPU_RESOURCE] == "8"
            assert node.metadata.labels[GPU_MEMORY_LABEL] == "81920"
    finally:
        delete_nodes(core, names)


def test_default_profile_schedules_a_deployment_pod(core: client.CoreV1Api, apps: client.AppsV1Api,
                                                     namespace: str) -> None:
    node = f"smoke-node-{uuid.uuid4().hex[:6]}"
    try:
        create_gpu_nodes(core, [gpu_node_manifest(node, gpus=1, gpu_memory_mib=24576)])
        apps.create_namespaced_deployment(namespace, deployment_manifest("plain", replicas=1))
        (pod,) = wait_pods_bound(core, namespace, "app=plain", count=1)
        # Other tests' nodes may exist, but every node in this cluster is a KWOK node.
        assert core.read_node(pod.spec.node_name).metadata.annotations["kwok.x-k8s.io/node"] == "fake"
        running = wait_pod_running(core, namespace, pod.metadata.name)
        assert running.spec.scheduler_name == "default-scheduler"
        assert pod_node(core, namespace, pod.metadata.name) == pod.spec.node_name
    finally:
        delete_nodes(core, [node])


def test_apply_crds_establishes_a_crd(kube: client.ApiClient, tmp_path: Path) -> None:
    # A throwaway CRD exercises the helper until the project's ModelServing CRD lands in deploy/.
    crd = tmp_path / "crd.yaml"
    crd.write_text("""
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata: {name: widgets.e2e.kvsched.io}
spec:
  group: e2e.kvsched.io
  scope: Namespaced
  names: {plural: widgets, singular: widget, kind: Widget}
  versions:
  - name: v1alpha1
    served: true
    storage: true
    schema: {openAPIV3Schema: {type: object, x-kubernetes-preserve-unknown-fields: true}}
""")
    assert apply_crds(kube, [crd]) == ["widgets.e2e.kvsched.io"]
    assert apply_crds(kube, [crd]) == ["widgets.e2e.kvsched.io"]  # idempotent: replaced, not duplicated


def test_helm_reaches_the_cluster(control_plane: ControlPlane) -> None:
    # The packaging issue installs the chart with this helm; here it only has to talk to the apiserver.
    helm = control_plane.tools.helm
    if not helm.is_file():
        message = f"helm not built at {helm} (run `make e2e-tools`)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    env = {**os.environ, "HELM_CACHE_HOME": str(control_plane.workdir / "helm"),
           "HELM_CONFIG_HOME": str(control_plane.workdir / "helm"), "HELM_DATA_HOME": str(control_plane.workdir / "helm")}
    version = subprocess.run([str(helm), "version", "--short"], env=env, capture_output=True, text=True, check=True)
    assert version.stdout.startswith(read_versions()["HELM_VERSION"])
    listed = subprocess.run([str(helm), "list", "--all-namespaces", f"--kubeconfig={control_plane.kubeconfig}"],
                            env=env, capture_output=True, text=True, timeout=60)
    assert listed.returncode == 0, listed.stderr
