"""`kvsched serve` from the image (tests/image builds it with buildah) against the real control plane, as the chart
runs it: `helm install`, the Deployment's arguments, a token of the chart's ServiceAccount, the image's user; a
local kube-scheduler with the chart's configuration and its own ServiceAccount's token. One annotated Deployment: its ModelServing is Placed and its pod
bound to a planned GPU.

It lives with the e2e tests (one control plane per session); the image is built by the same cached steps as
tests/image's.
"""
from __future__ import annotations

import base64
import os
import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client

from hack.image import Build, Buildah
from kvsched.api.names import (
    DEFAULT_SCHEDULER_NAME,
    GPU_ANNOTATION,
    GROUP,
    MODEL_LABEL,
    PLURAL,
    RATE_ANNOTATION,
    SIZE_ANNOTATION,
    SLO_ANNOTATION,
    VERSION,
)
from tests.image.building import built_image

from .harness.chart import install_chart, uninstall_chart
from .harness.cluster import ControlPlane
from .harness.kube import create_gpu_nodes, delete_nodes, deployment_manifest, gpu_node_manifest, wait_for
from .harness.processes import Component, free_port, http_ok
from .harness.tools import unavailable

pytestmark = [pytest.mark.e2e, pytest.mark.image]

IMAGE_UID = 65532  # the Dockerfile's USER and the chart's runAsUser
KUBECONFIG_IN_IMAGE = "/etc/kvsched/kubeconfig"


@pytest.fixture(scope="module")
def image() -> tuple[Buildah, Build]:
    return built_image()


def self_contained_kubeconfig(source: Path, destination: Path) -> Path:
    """`source` with its CA file embedded (certificate-authority-data), so one read-only file mounted into the
    container is all it needs; mode 0644, since pytest's directories are 0700 and the image's user is not root."""
    config: dict[str, Any] = yaml.safe_load(source.read_text())
    for entry in config["clusters"]:
        cluster = entry["cluster"]
        ca = Path(cluster.pop("certificate-authority"))
        cluster["certificate-authority-data"] = base64.b64encode(ca.read_bytes()).decode()
    destination.write_text(yaml.safe_dump(config))
    destination.chmod(0o644)
    return destination


def group_uids(pgid: int, needle: str) -> list[int]:
    """Real uids of the processes of group `pgid` whose command line contains `needle`."""
    uids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if os.getpgid(int(entry.name)) != pgid:
                continue
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            status = (entry / "status").read_text()
        except (OSError, ProcessLookupError):
            continue
        if needle in cmdline and "buildah" not in cmdline:
            uids.append(int(next(line.split()[1] for line in status.splitlines() if line.startswith("Uid:"))))
    return uids


def condition(serving: dict[str, Any], kind: str) -> dict[str, Any]:
    return next((c for c in (serving.get("status") or {}).get("conditions") or [] if c["type"] == kind), {})


def test_serve_from_the_image_places_a_model(image: tuple[Buildah, Build], control_plane: ControlPlane,
                                             kube: client.ApiClient, project_crds: list[str],
                                             tmp_path: Path) -> None:
    buildah, build = image
    helm = control_plane.tools.helm
    if not os.access(helm, os.X_OK):
        reason = f"helm is not built: {helm} is missing (run `make e2e-tools`)"
        unavailable(reason)
    assert f"{PLURAL}.{GROUP}" in project_crds
    core, apps, custom = client.CoreV1Api(kube), client.AppsV1Api(kube), client.CustomObjectsApi(kube)
    suffix = uuid.uuid4().hex[:6]
    workload_ns, pool = f"e2e-image-{suffix}", f"image-{suffix}"
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=workload_ns)))
    wait_for(lambda: core.read_namespaced_service_account("default", workload_ns), lambda sa: True, 60.0,
             f"ServiceAccount {workload_ns}/default")
    values = {
        # kvsched runs from the image on this machine; nothing may run the chart's pod (KWOK would pretend it runs).
        "nodeSelector": {"kvsched.io/e2e": "nowhere"},
        "watchNamespace": workload_ns, "gpuNodeSelector": f"e2e-pool={pool}",
        "metricsPort": free_port(), "extenderPort": free_port(), "timeBudgetSeconds": 1,
        "extraArgs": ["--metrics-host=127.0.0.1"],
    }
    chart = install_chart(control_plane, kube, helm, tmp_path, f"kvsched-{suffix}", f"kvsched-{suffix}", values)
    nodes = [f"{pool}-a", f"{pool}-b"]
    try:
        chart.scale_in_cluster_pod_to_zero()
        kubeconfig = self_contained_kubeconfig(chart.service_account_kubeconfig(tmp_path / "sa.kubeconfig"),
                                               tmp_path / "image.kubeconfig")
        args = chart.kvsched_args()
        assert args[0] == "serve"
        metrics_port = next(int(a.split("=", 1)[1]) for a in args if a.startswith("--metrics-port="))
        extender_port = next(int(a.split("=", 1)[1]) for a in args if a.startswith("--port="))
        config = chart.local_scheduler_config(chart.scheduler_kubeconfig(tmp_path / "scheduler.kubeconfig"))
        assert config["extenders"][0]["urlPrefix"] == f"http://127.0.0.1:{extender_port}"
        (tmp_path / "scheduler.yaml").write_text(yaml.safe_dump(config))
        scheduler_port = free_port()
        with buildah.container(build.tag) as container:
            kvsched = Component("kvsched-image", buildah.run_argv(
                container, ["kvsched", *args], volumes=[f"{kubeconfig}:{KUBECONFIG_IN_IMAGE}:ro"],
                env={"KUBECONFIG": KUBECONFIG_IN_IMAGE}, network_host=True), tmp_path / "kvsched-image.log")
            scheduler_kubeconfig = config["clientConnection"]["kubeconfig"]
            scheduler = Component("kvsched-image-scheduler", [
                str(control_plane.tools.kube_scheduler), f"--config={tmp_path / 'scheduler.yaml'}",
                f"--authentication-kubeconfig={scheduler_kubeconfig}",
                f"--authorization-kubeconfig={scheduler_kubeconfig}",
                "--bind-address=127.0.0.1", f"--secure-port={scheduler_port}", "--v=2",
            ], tmp_path / "kvsched-image-scheduler.log")
            control_plane.components.extend([kvsched, scheduler])  # log tails on failure
            try:
                # Cold start in a fresh container (imports, informers) on a busy machine: give it time.
                kvsched.start().wait_ready(lambda: http_ok(f"http://127.0.0.1:{metrics_port}/readyz"), 120.0,
                                           "ready (/readyz)")
                assert kvsched.process is not None
                assert group_uids(kvsched.process.pid, "kvsched serve") == [IMAGE_UID]
                scheduler.start().wait_ready(lambda: http_ok(f"https://127.0.0.1:{scheduler_port}/readyz"), 60.0)

                create_gpu_nodes(core, [gpu_node_manifest(n, gpus=1, gpu_memory_mib=81920,
                                                          labels={"e2e-pool": pool}) for n in nodes])
                apps.create_namespaced_deployment(workload_ns, deployment_manifest(
                    "alpha", replicas=1, scheduler_name=DEFAULT_SCHEDULER_NAME,
                    annotations={SIZE_ANNOTATION: "16Gi", RATE_ANNOTATION: "4", SLO_ANNOTATION: "1"}))
                serving = wait_for(
                    lambda: custom.get_namespaced_custom_object(GROUP, VERSION, workload_ns, PLURAL, "alpha"),
                    lambda ms: condition(ms, "Placed").get("status") == "True", 90, "alpha's ModelServing Placed")
                [pod] = wait_for(
                    lambda: [p for p in core.list_namespaced_pod(
                        workload_ns, label_selector=f"{MODEL_LABEL}=alpha").items if not p.metadata.deletion_timestamp],
                    lambda pods: len(pods) == 1 and bool(pods[0].spec.node_name)
                    and GPU_ANNOTATION in (pods[0].metadata.annotations or {}),
                    90, "alpha's pod bound to a planned GPU")
                assert pod.spec.node_name in nodes
                slots = {(slot["node"], str(slot["gpu"])) for slot in serving["status"]["slots"]}
                assert (pod.spec.node_name, pod.metadata.annotations[GPU_ANNOTATION]) in slots
            finally:
                scheduler.stop()
                kvsched.stop()
    finally:
        delete_nodes(core, nodes)
        uninstall_chart(chart, helm, tmp_path)
        core.delete_namespace(workload_ns)
