"""Run kvsched's controller (`kvsched serve` or `kvsched controller`) against the e2e control plane with the
RBAC the chart grants.

- `service_account_kubeconfig`: a ServiceAccount bound to the chart's ClusterRole and its Roles (Leases, GPU holder
  pods; deploy/kvsched.yaml) in the test's namespace, with the holders' PriorityClass and ServiceAccount, and a
  kubeconfig with a token for it, so the controller does not run as system:masters;
- `scheduler_service_account_kubeconfig`: a ServiceAccount with the bindings the chart gives its kube-scheduler
  container (the built-in system:kube-scheduler and system:volume-scheduler ClusterRoles, the
  extension-apiserver-authentication-reader Role in kube-system) and its kubeconfig;
- `KvschedProcess`: `kvsched serve|controller ...` as a `processes.Component` registered with the control plane (its
  log tail is attached to failing tests and it is stopped with the plane), restarted whenever it exits as the
  kubelet restarts the chart's Deployment (`processes.Restart`; kvsched exits on a lost lease), `restarts` counted;
- small readers for /metrics and /readyz, Leases, and an API-write counter based on resourceVersions.
Called by: tests/e2e/test_controller.py, tests/e2e/test_watch_gone.py, the `kvsched_scheduler` fixture.
"""
from __future__ import annotations

import sys
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import yaml
from kubernetes import client
from kubernetes.client.rest import ApiException

from .cluster import ControlPlane


def read_metrics(url: str) -> dict[str, float]:
    """`name{labels}` -> value from a /metrics URL."""
    with urllib.request.urlopen(url, timeout=5) as r:
        text = r.read().decode()
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.rpartition(" ")
            out[key] = float(value)
    return out
from .kube import REPO_ROOT
from .processes import Component, Restart, free_port, http_ok

# The chart's default rendering (tests/chart checks it equals `helm template`): the e2e tests run kvsched with
# exactly the permissions the chart grants.
RBAC_PATH = REPO_ROOT / "deploy" / "kvsched.yaml"


def kvsched_executable() -> Path:
    """The `kvsched` console script of the running interpreter's environment."""
    return Path(sys.executable).parent / "kvsched"


def apply_rbac(api: client.ApiClient, path: Path = RBAC_PATH) -> list[str]:
    """Create or replace every ClusterRole in `path`; returns their names."""
    rbac = client.RbacAuthorizationV1Api(api)
    names = []
    for doc in yaml.safe_load_all(path.read_text()):
        if not isinstance(doc, dict) or doc.get("kind") != "ClusterRole":
            continue
        name = doc["metadata"]["name"]
        try:
            rbac.create_cluster_role(body=doc)
        except ApiException as e:
            if e.status != 409:
                raise
            rbac.replace_cluster_role(name, body=doc)
        names.append(name)
    return names


# The chart's holder PriorityClass under another name: PriorityClasses are cluster-wide, and a `helm install` in
# the same session (test_rbac_audit.py, test_chart_install.py) must create its own. Pools pass
# `--holder-priority-class` with it.
E2E_HOLDER_PRIORITY_CLASS = "e2e-kvsched-gpu-holder"


def holder_prerequisites(api: client.ApiClient, namespace: str, path: Path = RBAC_PATH) -> None:
    """What the chart installs for GPU holder pods, here in `namespace`: the holders' PriorityClass (cluster-wide,
    as E2E_HOLDER_PRIORITY_CLASS) and ServiceAccount; pods naming either are refused until they exist.
    Idempotent."""
    for doc in yaml.safe_load_all(path.read_text()):
        if not isinstance(doc, dict):
            continue
        try:
            if doc.get("kind") == "PriorityClass":
                client.SchedulingV1Api(api).create_priority_class({
                    **{k: v for k, v in doc.items() if k != "metadata"},
                    "metadata": {"name": E2E_HOLDER_PRIORITY_CLASS}})
            elif doc.get("kind") == "ServiceAccount" and "gpu-holder" in doc["metadata"]["name"]:
                client.CoreV1Api(api).create_namespaced_service_account(
                    namespace, {"metadata": {"name": doc["metadata"]["name"]}})
        except ApiException as e:
            if e.status != 409:
                raise


def kvsched_roles(path: Path = RBAC_PATH) -> list[dict[str, Any]]:
    """The Roles of `path` bound to kvsched's own ServiceAccount outside kube-system (the leader-election Role
    and the Role to create and delete GPU holder pods), without their namespace."""
    docs = [d for d in yaml.safe_load_all(path.read_text()) if isinstance(d, dict)]
    account = next(d["spec"]["template"]["spec"]["serviceAccountName"] for d in docs if d.get("kind") == "Deployment")
    bound = {d["roleRef"]["name"] for d in docs if d.get("kind") == "RoleBinding"
             and d["metadata"].get("namespace") != "kube-system"
             and any(s.get("name") == account for s in d.get("subjects") or [])}
    return [{"metadata": {"name": d["metadata"]["name"]}, "rules": d["rules"]} for d in docs
            if d.get("kind") == "Role" and d["metadata"]["name"] in bound]


def service_account_kubeconfig(api: client.ApiClient, plane: ControlPlane, namespace: str,
                               name: str = "kvsched") -> Path:
    """A ServiceAccount `namespace/name` bound to the chart's ClusterRole and Lease Role; a kubeconfig using a 2-hour
    token for it, written next to the plane's own kubeconfig."""
    assert plane.creds is not None
    core = client.CoreV1Api(api)
    rbac = client.RbacAuthorizationV1Api(api)
    try:
        core.create_namespaced_service_account(namespace, {"metadata": {"name": name}})
    except ApiException as e:
        if e.status != 409:
            raise
    subjects = [{"kind": "ServiceAccount", "name": name, "namespace": namespace}]
    for role in apply_rbac(api):
        binding = {"metadata": {"name": f"{role}-{namespace}-{name}"},
                   "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role},
                   "subjects": subjects}
        try:
            rbac.create_cluster_role_binding(binding)
        except ApiException as e:
            if e.status != 409:
                raise
    # The chart grants Leases and GPU holder pods in its release namespace only; here both live in `namespace`.
    holder_prerequisites(api, namespace)
    for role_doc in kvsched_roles():
        role_name = role_doc["metadata"]["name"]
        try:
            rbac.create_namespaced_role(namespace, role_doc)
            rbac.create_namespaced_role_binding(namespace, {
                "metadata": {"name": role_name},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": role_name},
                "subjects": subjects})
        except ApiException as e:
            if e.status != 409:
                raise
    return token_kubeconfig(api, plane, namespace, name)


def token_kubeconfig(api: client.ApiClient, plane: ControlPlane, namespace: str, name: str) -> Path:
    """A kubeconfig for the plane with a 2-hour token of ServiceAccount `namespace/name`, next to the plane's own."""
    assert plane.creds is not None
    token = client.CoreV1Api(api).create_namespaced_service_account_token(
        name, namespace, {"spec": {"expirationSeconds": 7200}}).status.token
    config = {
        "apiVersion": "v1", "kind": "Config",
        "clusters": [{"name": "e2e", "cluster": {"server": plane.server,
                                                 "certificate-authority": str(plane.creds.ca_cert)}}],
        "users": [{"name": name, "user": {"token": token}}],
        "contexts": [{"name": "e2e", "context": {"cluster": "e2e", "user": name}}],
        "current-context": "e2e",
    }
    path = plane.workdir / f"kubeconfig-{namespace}-{name}"
    path.write_text(yaml.safe_dump(config))
    return path


def scheduler_bindings(path: Path = RBAC_PATH) -> list[tuple[str, str, str]]:
    """The chart's bindings for its kube-scheduler container: (kind, namespace or "", role) for every
    ClusterRoleBinding to a built-in `system:` ClusterRole and every RoleBinding in kube-system in `path`."""
    out = []
    for doc in yaml.safe_load_all(path.read_text()):
        if not isinstance(doc, dict):
            continue
        role = doc.get("roleRef", {}).get("name", "")
        if doc.get("kind") == "ClusterRoleBinding" and role.startswith("system:"):
            out.append(("ClusterRoleBinding", "", role))
        elif doc.get("kind") == "RoleBinding" and doc["metadata"].get("namespace") == "kube-system":
            out.append(("RoleBinding", "kube-system", role))
    return out


def scheduler_service_account_kubeconfig(api: client.ApiClient, plane: ControlPlane,
                                         namespace: str = "kvsched-e2e", name: str = "kube-scheduler") -> Path:
    """A ServiceAccount `namespace/name` with the chart's kube-scheduler bindings (`scheduler_bindings`: the
    roles, not copies of them, so they follow the apiserver's version) and a kubeconfig with its token. The
    chart shares one ServiceAccount between kvsched and kube-scheduler; here the scheduler has its own, so a
    test's kvsched keeps only the chart's kvsched ClusterRole. Idempotent."""
    core = client.CoreV1Api(api)
    rbac = client.RbacAuthorizationV1Api(api)
    subjects = [{"kind": "ServiceAccount", "name": name, "namespace": namespace}]
    bindings = scheduler_bindings()
    assert bindings, f"{RBAC_PATH} binds no role for the kube-scheduler container"
    for create in (lambda: core.create_namespace({"metadata": {"name": namespace}}),
                   lambda: core.create_namespaced_service_account(namespace, {"metadata": {"name": name}})):
        try:
            create()
        except ApiException as e:
            if e.status != 409:
                raise
    for kind, role_namespace, role in bindings:
        binding = {"metadata": {"name": f"e2e-{namespace}-{name}-{role.removeprefix('system:')}"},
                   "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": kind.removesuffix("Binding"),
                               "name": role},
                   "subjects": subjects}
        try:
            if kind == "ClusterRoleBinding":
                rbac.create_cluster_role_binding(binding)
            else:
                rbac.create_namespaced_role_binding(role_namespace, binding)
        except ApiException as e:
            if e.status != 409:
                raise
    return token_kubeconfig(api, plane, namespace, name)


class KvschedProcess:
    """A `kvsched serve` (controller + extender) or `kvsched controller` process on free loopback ports, restarted
    (same ports, same log file) whenever it exits until `stop`, unless `restart` is None."""

    def __init__(self, plane: ControlPlane, kubeconfig: Path, args: list[str], name: str,
                 command: str = "serve", restart: Restart | None = Restart()) -> None:
        self.metrics_port = free_port()
        self.extender_port = free_port()
        extender = ["--host=127.0.0.1", f"--port={self.extender_port}"] if command == "serve" else []
        argv = [str(kvsched_executable()), command, f"--kubeconfig={kubeconfig}", *extender,
                "--metrics-host=127.0.0.1", f"--metrics-port={self.metrics_port}", "--log-level=info", *args]
        self.component = Component(name, argv, plane.workdir / "logs" / f"{name}.log", restart=restart)
        self.plane = plane

    @property
    def extender_url(self) -> str:
        return f"http://127.0.0.1:{self.extender_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.metrics_port}"

    def start(self, timeout_s: float = 60.0) -> KvschedProcess:
        self.component.start()
        self.plane.components.append(self.component)
        self.component.wait_ready(lambda: http_ok(f"{self.metrics_url}/readyz"), timeout_s, "ready (/readyz)")
        return self

    @property
    def restarts(self) -> int:
        """How often the harness restarted it (as a kubelet would) since `start`."""
        return self.component.restarts

    @property
    def exit_codes(self) -> list[int]:
        """Every exit seen so far, in order (1: kvsched lost its lease)."""
        return list(self.component.exit_codes)

    def stop(self) -> None:
        self.component.stop()

    def kill(self) -> None:
        """SIGKILL, no clean-up (no Lease release); restarted as a crashed container would be."""
        import os
        import signal
        assert self.component.process is not None
        os.killpg(self.component.process.pid, signal.SIGKILL)
        self.component.process.wait(10)

    def metrics(self) -> dict[str, float]:
        """`name{labels}` -> value from /metrics."""
        return read_metrics(f"{self.metrics_url}/metrics")

    def readyz(self) -> str:
        try:
            with urllib.request.urlopen(f"{self.metrics_url}/readyz", timeout=5) as r:
                return str(r.read().decode())
        except Exception as e:  # 503 before sync
            return f"error: {e}"


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:6]}"


def lease_holder(api: client.ApiClient, namespace: str, name: str) -> str | None:
    try:
        lease = client.CoordinationV1Api(api).read_namespaced_lease(name, namespace)
    except ApiException as e:
        if e.status == 404:
            return None
        raise
    holder: str | None = lease.spec.holder_identity
    return holder


def resource_versions(api: client.ApiClient, namespace: str) -> dict[str, Any]:
    """resourceVersion of every Deployment, ModelServing and Pod in `namespace` (a change is an API write)."""
    apps, core = client.AppsV1Api(api), client.CoreV1Api(api)
    custom = client.CustomObjectsApi(api)
    out: dict[str, Any] = {}
    for d in apps.list_namespaced_deployment(namespace).items:
        out[f"deployment/{d.metadata.name}"] = d.metadata.resource_version
    for m in custom.list_namespaced_custom_object("kvsched.io", "v1alpha1", namespace, "modelservings")["items"]:
        out[f"modelserving/{m['metadata']['name']}"] = m["metadata"]["resourceVersion"]
    for p in core.list_namespaced_pod(namespace).items:
        out[f"pod/{p.metadata.name}"] = p.metadata.resource_version
    return out
