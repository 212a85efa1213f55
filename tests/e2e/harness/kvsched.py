"""kvsched's own processes in e2e tests: `kvsched extender` as a harness Component against the control plane,
and ModelServing objects written the way the controller writes them (spec, then the status subresource).

Called by tests/e2e/conftest.py (fixture `extender`), test_extender.py and test_extender_contract.py.
"""
from __future__ import annotations

import sys
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kubernetes import client
from kubernetes.client.rest import ApiException

from kvsched.api.names import (
    DEFAULT_SCHEDULER_NAME,
    GPU_ANNOTATION,
    GROUP,
    MEMORY_FRACTION_ANNOTATION,
    MODEL_LABEL,
    PLURAL,
    VERSION,
)

from .cluster import ControlPlane
from .processes import Component, free_port, http_ok


def kvsched_argv(*args: str) -> list[str]:
    """argv running the `kvsched` CLI of this checkout with the test's interpreter."""
    return [sys.executable, "-c", "import sys; from kvsched.cli import main; sys.exit(main())", *args]


@dataclass
class ExtenderProcess:
    """`kvsched extender` on a fixed loopback port, so kube-scheduler keeps its URL across restarts, as the user
    of `kubeconfig` (in the e2e tests a ServiceAccount with the chart's RBAC, controller.service_account_kubeconfig)."""

    plane: ControlPlane
    kubeconfig: Path
    port: int = field(default_factory=free_port)
    # The tests write ModelServing slots themselves (no controller, so no GPU holder pods): holders off.
    args: list[str] = field(default_factory=lambda: ["--gpu-holders=false"])
    starts: int = 0
    component: Component | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout_s: float = 60.0) -> ExtenderProcess:
        """Start it (from the main thread) and wait until /readyz says its watches have synced."""
        self.starts += 1
        log = self.plane.workdir / "logs" / f"kvsched-extender-{self.port}-{self.starts}.log"
        self.component = Component(f"kvsched-extender-{self.starts}", kvsched_argv(
            "extender", f"--kubeconfig={self.kubeconfig}", "--host=127.0.0.1", f"--port={self.port}",
            "--log-level=info", *self.args), Path(log)).start()
        self.plane.components.append(self.component)
        self.component.wait_ready(lambda: http_ok(f"{self.url}/readyz"), timeout_s, "ready (/readyz)")
        return self

    def requests(self) -> dict[tuple[str, str], float]:
        """(verb, outcome) -> kvsched_extender_requests_total from its /metrics (since this start)."""
        with urllib.request.urlopen(f"{self.url}/metrics", timeout=5) as response:
            text = response.read().decode()
        counts = {}
        for line in text.splitlines():
            if line.startswith("kvsched_extender_requests_total{"):
                labels, _, value = line.removeprefix("kvsched_extender_requests_total").rpartition(" ")
                pairs = dict(p.split("=", 1) for p in labels.strip("{}").split(","))
                counts[(pairs["verb"].strip('"'), pairs["outcome"].strip('"'))] = float(value)
        return counts

    def kill(self) -> None:
        """SIGKILL, as a crash or an OOM kill would."""
        if self.component is not None and self.component.process is not None:
            self.component.process.kill()
            self.component.process.wait(10)
            self.component.stop()

    def stop(self) -> None:
        if self.component is not None:
            self.component.stop()


def write_model(custom: client.CustomObjectsApi, namespace: str, name: str, size: str,
                slots: list[tuple[str, int, float]]) -> dict[str, Any]:
    """Create (or update) ModelServing `name` and write `slots` [(node, gpu, memoryFraction)] to its status,
    acting as the controller."""
    body = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "ModelServing",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {"workloadRef": {"kind": "Deployment", "name": name}, "modelSize": size, "requestRate": 1.0,
                     "sloSeconds": 1.0, "replicas": len(slots)}}
    try:
        custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, body)
    except ApiException as e:
        if e.status != 409:
            raise
    status = {"status": {"replicas": len(slots), "placedReplicas": len(slots),
                         "slots": [{"node": n, "gpu": g, "memoryFraction": f} for n, g, f in slots]}}
    result: dict[str, Any] = custom.patch_namespaced_custom_object_status(GROUP, VERSION, namespace, PLURAL, name,
                                                                         status)
    return result


def managed_deployment(name: str, replicas: int, model: str | None = None) -> dict[str, Any]:
    """A Deployment whose pods carry the model label and `schedulerName: kvsched`, as the controller patches
    them (replacement only after an old pod is gone: maxSurge 0, maxUnavailable 1)."""
    from .kube import deployment_manifest

    manifest = deployment_manifest(name, replicas=replicas, scheduler_name=DEFAULT_SCHEDULER_NAME)
    manifest["spec"]["template"]["metadata"]["labels"][MODEL_LABEL] = model or name
    manifest["spec"]["strategy"] = {"type": "RollingUpdate",
                                    "rollingUpdate": {"maxSurge": 0, "maxUnavailable": 1}}
    return manifest
