"""Install the Helm chart (helm/kvsched) on the e2e control plane and run its parts the way its pod would.

`install_chart` runs `helm install` with the e2e cache's helm; `InstalledChart` then gives what a local kvsched and
kube-scheduler need to run with exactly the chart's permissions and configuration: for kvsched a kubeconfig
holding a token of the pod's ServiceAccount (TokenRequest API, as the pod's projected token), for kube-scheduler
one holding the token kube-controller-manager wrote into the chart's Secret for the scheduler's own ServiceAccount
(what its container mounts), the `kvsched serve` arguments of its Deployment and the KubeSchedulerConfiguration of
its ConfigMap. Called by tests/e2e/test_chart_install.py, test_rbac_audit.py and `make cluster`.
"""
from __future__ import annotations

import base64
import dataclasses
import os
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from kubernetes import client

from .certs import write_kubeconfig
from .cluster import ControlPlane
from .kube import REPO_ROOT

CHART_DIR = REPO_ROOT / "helm" / "kvsched"
TOKEN_SECONDS = 24 * 3600
TOKEN_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"
SECRET_FILLED_S = 60.0  # kube-controller-manager's token controller fills a new token Secret within a second


class HelmFailed(RuntimeError):
    """helm exited non-zero; the message is its output."""


@dataclass(frozen=True)
class InstalledChart:
    """A release of the chart on a control plane: its name, namespace and the objects it rendered."""

    plane: ControlPlane
    release: str
    namespace: str
    api: client.ApiClient

    @property
    def deployment(self) -> client.V1Deployment:
        apps = client.AppsV1Api(self.api)
        [deployment] = apps.list_namespaced_deployment(
            self.namespace, label_selector=f"app.kubernetes.io/instance={self.release}").items
        return deployment

    def service_account(self) -> str:
        return str(self.deployment.spec.template.spec.service_account_name)

    def scheduler_token_secret(self) -> str:
        """The Secret whose token the kube-scheduler container mounts at the in-cluster token path."""
        spec = self.deployment.spec.template.spec
        [container] = [c for c in spec.containers if c.name == "kube-scheduler"]
        [mount] = [m for m in container.volume_mounts or [] if m.mount_path == TOKEN_DIR]
        [volume] = [v for v in spec.volumes if v.name == mount.name]
        return str(volume.secret.secret_name)

    def scheduler_service_account(self) -> str:
        """The kube-scheduler container's ServiceAccount: the one its token Secret is for."""
        secret = client.CoreV1Api(self.api).read_namespaced_secret(self.scheduler_token_secret(), self.namespace)
        return str(secret.metadata.annotations["kubernetes.io/service-account.name"])

    def scheduler_kubeconfig(self, path: Path) -> Path:
        """A kubeconfig with the token of the chart's scheduler Secret, once kube-controller-manager has filled it
        (the container's secret volume waits for the same). Raises TimeoutError."""
        assert self.plane.creds is not None
        core = client.CoreV1Api(self.api)
        name = self.scheduler_token_secret()
        deadline = time.monotonic() + SECRET_FILLED_S
        while True:
            data = core.read_namespaced_secret(name, self.namespace).data or {}
            if data.get("token"):
                break
            if time.monotonic() > deadline:
                raise TimeoutError(f"Secret {self.namespace}/{name} has no token after {SECRET_FILLED_S:.0f}s: "
                                   "does kube-controller-manager run its token controller?")
            time.sleep(0.2)
        token = base64.b64decode(data["token"]).decode()
        return write_kubeconfig(path, self.plane.server, dataclasses.replace(self.plane.creds, admin_token=token))

    def kvsched_args(self) -> list[str]:
        """The arguments the chart passes to the kvsched container (`serve` first)."""
        containers = self.deployment.spec.template.spec.containers
        return list(next(c.args for c in containers if c.name == "kvsched"))

    def scheduler_config(self) -> dict[str, Any]:
        """The KubeSchedulerConfiguration of the chart's ConfigMap, as the kube-scheduler container reads it."""
        volumes = self.deployment.spec.template.spec.volumes
        name = next(v.config_map.name for v in volumes if v.config_map)
        data = client.CoreV1Api(self.api).read_namespaced_config_map(name, self.namespace).data
        return yaml.safe_load(data["scheduler-config.yaml"])  # type: ignore[no-any-return]

    def scale_in_cluster_pod_to_zero(self) -> None:
        """Keep the chart's objects but not its pod, when its processes run locally instead."""
        client.AppsV1Api(self.api).patch_namespaced_deployment_scale(
            self.deployment.metadata.name, self.namespace, {"spec": {"replicas": 0}})

    def service_account_kubeconfig(self, path: Path) -> Path:
        """A kubeconfig for the control plane that authenticates as the chart's pod (kvsched's) ServiceAccount."""
        assert self.plane.creds is not None
        request = client.AuthenticationV1TokenRequest(
            spec=client.V1TokenRequestSpec(audiences=[], expiration_seconds=TOKEN_SECONDS))
        token = client.CoreV1Api(self.api).create_namespaced_service_account_token(
            self.service_account(), self.namespace, request).status.token
        return write_kubeconfig(path, self.plane.server, dataclasses.replace(self.plane.creds, admin_token=token))

    def local_scheduler_config(self, kubeconfig: Path) -> dict[str, Any]:
        """The chart's scheduler configuration with the client connection a local process needs."""
        config = self.scheduler_config()
        config["clientConnection"] = {"kubeconfig": str(kubeconfig)}
        return config


def install_chart(plane: ControlPlane, api: client.ApiClient, helm: Path, workdir: Path, release: str,
                  namespace: str, values: dict[str, Any] | None = None) -> InstalledChart:
    """`helm install` the chart (namespace created); raises HelmFailed with helm's output."""
    assert plane.kubeconfig is not None
    workdir.mkdir(parents=True, exist_ok=True)
    values_file = workdir / f"{release}-values.yaml"
    values_file.write_text(yaml.safe_dump(values or {}))
    home = {name: str(workdir / "helm") for name in ("HELM_CACHE_HOME", "HELM_CONFIG_HOME", "HELM_DATA_HOME")}
    done = subprocess.run(
        [str(helm), "install", release, str(CHART_DIR), "--namespace", namespace, "--create-namespace",
         "--kubeconfig", str(plane.kubeconfig), "--values", str(values_file)],
        capture_output=True, text=True, env={**os.environ, **home})
    if done.returncode != 0:
        raise HelmFailed(f"helm install {release} failed: {done.stderr.strip() or done.stdout.strip()}")
    return InstalledChart(plane=plane, release=release, namespace=namespace, api=api)


def uninstall_chart(chart: InstalledChart, helm: Path, workdir: Path) -> None:
    """`helm uninstall` (the CRD stays, as Helm leaves crds/ alone)."""
    assert chart.plane.kubeconfig is not None
    home = {name: str(workdir / "helm") for name in ("HELM_CACHE_HOME", "HELM_CONFIG_HOME", "HELM_DATA_HOME")}
    subprocess.run([str(helm), "uninstall", chart.release, "--namespace", chart.namespace,
                    "--kubeconfig", str(chart.plane.kubeconfig), "--wait"],
                   capture_output=True, text=True, env={**os.environ, **home}, check=False)
