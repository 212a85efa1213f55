"""An e2e control plane on 127.0.0.1: etcd, kube-apiserver, kube-controller-manager, KWOK and kube-schedulers,
and a stand-in for the NVIDIA device plugin (harness/device_plugin.py) on the KWOK nodes.

Called by the session fixture `control_plane` in tests/e2e/conftest.py. Two kube-scheduler processes mirror the
production shape in DESIGN.md: the cluster's own scheduler (profile `default-scheduler`, no extender) starts with
the control plane, and `start_scheduler` runs a second one configured as the Helm chart configures its own (the
KubeSchedulerConfiguration of helm/kvsched's ConfigMap, rendered by `helm template`) with the extender at a URL
the caller chooses. One process cannot host both: kube-scheduler shares its extenders with every profile.
kube-apiserver writes an audit log of every ServiceAccount's requests to `audit_log` (harness/audit.py).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from hack.chart import CHART_DIR, Helm, RenderFailed, documents

from . import audit
from .certs import Credentials, write_credentials, write_kubeconfig
from .device_plugin import DevicePluginStandIn
from .processes import Component, ComponentFailed, free_port, http_ok
from .tools import Tools

KWOK_NODE_ANNOTATION = "kwok.x-k8s.io/node"
KWOK_NODE_VALUE = "fake"
SERVICE_CIDR = "10.96.0.0/16"
READY_TIMEOUT_S = 120.0
GPU_RUNTIME_CLASSES = ("nvidia", "nvidia-cdi", "nvidia-legacy")  # what the NVIDIA GPU Operator installs
SCHEDULER_CONFIG_KEY = "scheduler-config.yaml"  # the chart's ConfigMap key the kube-scheduler container reads
# KWOK stages kept in the repo (applied by _start_kwok, so a warm cache needs no rebuild) and the pod annotations
# they read: an engine's start-up (Running, Ready after a Go duration) and a pod that never becomes Ready.
REPO_STAGES = Path(__file__).resolve().parents[1] / "cluster" / "stages"
START_DELAY_ANNOTATION = "e2e.kvsched.io/start-delay"
NEVER_READY_ANNOTATION = "e2e.kvsched.io/never-ready"


@dataclass
class ExtenderConfig:
    """What an e2e kvsched scheduler changes in the chart's own KubeSchedulerConfiguration (helm/kvsched's
    scheduler ConfigMap, rendered by `helm template`; see `chart_scheduler_config`).

    `url`: where this test's extender listens (the chart's is 127.0.0.1:extenderPort in its own pod).
    `values`: chart values to render with, e.g. {"extender": {"httpTimeout": "2s"}} or {"schedulerName": ...}.
    `node_cache_capable`: overrides the rendered entry, for the mode the chart does not use (None: the chart's).
    `kubeconfig`: the scheduler's credentials, for the API and for delegated authentication and authorization of
    its own endpoints, as the chart's pod uses its ServiceAccount for all three (None: the plane's admin).
    """

    url: str
    values: dict[str, Any] = field(default_factory=dict)
    node_cache_capable: bool | None = None
    kubeconfig: Path | None = None


def chart_scheduler_config(tools: Tools, extender: ExtenderConfig, kubeconfig: Path) -> dict[str, Any]:
    """The chart's KubeSchedulerConfiguration with only what differs on this machine substituted: the extender's
    URL (and `node_cache_capable` when given), the client kubeconfig (the chart's pod uses its in-cluster
    ServiceAccount) and leader election off (each test runs its own scheduler). Everything else (profile name,
    verbs, weight, timeout, ignorable, managedResources, ...) is the chart's, so a change there is exercised here.

    Raises ComponentFailed when helm is missing or fails, or the chart does not render exactly one scheduler
    ConfigMap with one profile and one extender.
    """
    if not tools.helm.exists():
        raise ComponentFailed(f"helm is not built: {tools.helm} is missing (run `make e2e-tools`)")
    try:
        rendered = documents(Helm(tools.helm, tools.k8s_version).template(extender.values))
    except RenderFailed as e:
        raise ComponentFailed(f"helm template {CHART_DIR} failed: {e}") from None
    configs = [yaml.safe_load(d["data"][SCHEDULER_CONFIG_KEY]) for d in rendered
               if d.get("kind") == "ConfigMap" and SCHEDULER_CONFIG_KEY in (d.get("data") or {})]
    if len(configs) != 1:
        raise ComponentFailed(f"{CHART_DIR} renders {len(configs)} ConfigMaps with {SCHEDULER_CONFIG_KEY}, not 1")
    config: dict[str, Any] = configs[0]
    if len(config.get("profiles") or []) != 1 or len(config.get("extenders") or []) != 1:
        raise ComponentFailed(f"{CHART_DIR}'s KubeSchedulerConfiguration has {len(config.get('profiles') or [])} "
                              f"profiles and {len(config.get('extenders') or [])} extenders; the e2e expects 1 and 1")
    config["clientConnection"] = {"kubeconfig": str(extender.kubeconfig or kubeconfig)}
    config["leaderElection"] = {"leaderElect": False}
    [entry] = config["extenders"]
    entry["urlPrefix"] = extender.url
    if extender.node_cache_capable is not None:
        entry["nodeCacheCapable"] = extender.node_cache_capable
    return config


@dataclass
class ControlPlane:
    """A running control plane; `start` it, use `kubeconfig`, always `stop` it (idempotent)."""

    workdir: Path
    tools: Tools
    components: list[Component] = field(default_factory=list)
    kubeconfig: Path | None = None
    server: str = ""
    creds: Credentials | None = None
    apiserver_args: list[str] = field(default_factory=list)  # extra kube-apiserver flags, e.g. --watch-cache=false
    etcd_url: str = ""  # etcd's client URL (its v3 HTTP gateway too), set by `start`
    device_plugin: DevicePluginStandIn | None = None  # allocates nvidia.com/gpu on KWOK nodes (harness/device_plugin)

    @property
    def audit_log(self) -> Path:
        """kube-apiserver's audit log (JSON lines, Metadata level, ServiceAccounts only: harness/audit.py)."""
        return audit.audit_log_path(self.workdir)

    # -- lifecycle -------------------------------------------------------------------------------------------
    def start(self) -> ControlPlane:
        """Start every component in dependency order and wait for each to be ready.

        Raises ComponentFailed (with the failing component's log tail) on a crash or a readiness timeout; the
        components already started keep running until `stop`.
        """
        if self.tools.openssl is None:
            raise ComponentFailed("openssl is not on PATH")
        (self.workdir / "logs").mkdir(parents=True, exist_ok=True)
        self.creds = write_credentials(self.workdir / "pki", self.tools.openssl)
        etcd_url = self._start_etcd()
        self._start_apiserver(etcd_url)
        self._start_controller_manager()
        self._start_kwok()
        self._start_default_scheduler()
        self._wait_api_object("/api/v1/namespaces/default/serviceaccounts/default", "serving the default account")
        self._create_gpu_runtime_classes()
        self.device_plugin = DevicePluginStandIn(config.new_client_from_config(config_file=str(self.kubeconfig)))
        self.device_plugin.start()
        return self

    def stop(self) -> None:
        """Stop the device plugin stand-in, then the components in reverse start order."""
        if self.device_plugin is not None:
            self.device_plugin.stop()
            self.device_plugin = None
        for component in reversed(self.components):
            component.stop()

    def log_tails(self, lines: int = 40) -> str:
        """The last lines of every component's log, for failure reports."""
        return "\n\n".join(f"===== {c.name} ({c.log_path}) =====\n{c.tail(lines)}" for c in self.components)

    # -- components ------------------------------------------------------------------------------------------
    def _component(self, name: str, argv: list[str]) -> Component:
        component = Component(name, argv, self.workdir / "logs" / f"{name}.log").start()
        self.components.append(component)
        return component

    def _start_etcd(self) -> str:
        client, peer = free_port(), free_port()
        client_url, peer_url = f"http://127.0.0.1:{client}", f"http://127.0.0.1:{peer}"
        etcd = self._component("etcd", [
            str(self.tools.etcd), "--name=e2e", f"--data-dir={self.workdir / 'etcd'}",
            f"--listen-client-urls={client_url}", f"--advertise-client-urls={client_url}",
            f"--listen-peer-urls={peer_url}", f"--initial-advertise-peer-urls={peer_url}",
            f"--initial-cluster=e2e={peer_url}", "--unsafe-no-fsync", "--log-level=warn",
        ])
        etcd.wait_ready(lambda: http_ok(f"{client_url}/health"), READY_TIMEOUT_S)
        self.etcd_url = client_url
        return client_url

    def _start_apiserver(self, etcd_url: str) -> None:
        assert self.creds is not None
        port = free_port()
        self.server = f"https://127.0.0.1:{port}"
        self.kubeconfig = write_kubeconfig(self.workdir / "kubeconfig", self.server, self.creds)
        c = self.creds
        apiserver = self._component("kube-apiserver", [
            str(self.tools.kube_apiserver),
            f"--etcd-servers={etcd_url}",
            "--bind-address=127.0.0.1", f"--secure-port={port}",
            # The machine may have no default route, from which the apiserver would pick its address.
            "--advertise-address=127.0.0.1",
            f"--cert-dir={self.workdir / 'pki'}",
            f"--tls-cert-file={c.serving_cert}", f"--tls-private-key-file={c.serving_key}",
            f"--client-ca-file={c.ca_cert}",
            # Without a front-proxy CA every delegating component logs an error about it several times a second.
            f"--requestheader-client-ca-file={c.ca_cert}", "--requestheader-allowed-names=front-proxy-client",
            "--requestheader-username-headers=X-Remote-User", "--requestheader-group-headers=X-Remote-Group",
            "--requestheader-extra-headers-prefix=X-Remote-Extra-",
            f"--token-auth-file={c.token_file}",
            "--authorization-mode=RBAC",
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
            f"--service-account-key-file={c.service_account_pub}",
            f"--service-account-signing-key-file={c.service_account_key}",
            f"--service-cluster-ip-range={SERVICE_CIDR}",
            # Endpoints of the `kubernetes` Service may not be loopback addresses, so do not reconcile them.
            "--endpoint-reconciler-type=none",
            "--allow-privileged=true",
            # On top of the defaults: clusters that guard owner references (OpenShift does) need `update` on
            # the owner's finalizers for an ownerReference with blockOwnerDeletion, as kvsched's ModelServings
            # carry. With it on here, a chart that lacks that grant fails the e2e tests with a 403.
            "--enable-admission-plugins=OwnerReferencesPermissionEnforcement",
            "--profiling=false",
            "--v=1",
            *audit.apiserver_flags(self.workdir),
            *self.apiserver_args,
        ])
        apiserver.wait_ready(
            lambda: http_ok(f"{self.server}/readyz", c.admin_token, c.ca_cert), READY_TIMEOUT_S, "ready (/readyz)")

    def _start_controller_manager(self) -> None:
        assert self.creds is not None and self.kubeconfig is not None
        port = free_port()
        kcm = self._component("kube-controller-manager", [
            str(self.tools.kube_controller_manager),
            f"--kubeconfig={self.kubeconfig}",
            f"--authentication-kubeconfig={self.kubeconfig}", f"--authorization-kubeconfig={self.kubeconfig}",
            "--bind-address=127.0.0.1", f"--secure-port={port}",
            f"--service-account-private-key-file={self.creds.service_account_key}",
            f"--root-ca-file={self.creds.ca_cert}",
            "--use-service-account-credentials=false",
            "--controllers=*",
            "--leader-elect=false",
            f"--service-cluster-ip-range={SERVICE_CIDR}",
            "--v=1",
        ])
        kcm.wait_ready(lambda: http_ok(f"https://127.0.0.1:{port}/healthz"), READY_TIMEOUT_S, "healthy")

    def _start_kwok(self) -> None:
        assert self.kubeconfig is not None
        # kwok has no built-in Stages; build.sh keeps the published defaults (node init, lease heartbeat, pod
        # ready/complete/delete), and the repo adds its own (REPO_STAGES: an engine's start-up delay, a pod that
        # never becomes Ready); they all go into one multi-document config file.
        published = sorted(self.tools.kwok_stages.glob("*.yaml"))
        if not published:
            raise ComponentFailed(f"no KWOK stages in {self.tools.kwok_stages}; rerun tests/e2e/cluster/build.sh")
        stages = published + sorted(REPO_STAGES.glob("*.yaml"))
        config = self.workdir / "kwok.yaml"
        config.write_text("\n---\n".join(p.read_text() for p in stages))
        port = free_port()
        kwok = self._component("kwok", [
            str(self.tools.kwok),
            f"--kubeconfig={self.kubeconfig}", f"--config={config}",
            "--manage-all-nodes=false",
            f"--manage-nodes-with-annotation-selector={KWOK_NODE_ANNOTATION}={KWOK_NODE_VALUE}",
            "--node-lease-duration-seconds=40",
            "--cidr=10.244.0.0/16", "--node-ip=10.0.0.1",
            f"--server-address=127.0.0.1:{port}",
        ])
        kwok.wait_ready(lambda: http_ok(f"http://127.0.0.1:{port}/healthz"), READY_TIMEOUT_S, "healthy")

    def _scheduler(self, name: str, config: dict[str, Any], auth_kubeconfig: Path | None = None) -> Component:
        """Run kube-scheduler with KubeSchedulerConfiguration `config` and wait until it is ready.
        `auth_kubeconfig`: its delegated authentication and authorization (None: the plane's admin)."""
        assert self.kubeconfig is not None
        auth = auth_kubeconfig or self.kubeconfig
        path = self.workdir / f"{name}.yaml"
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        port = free_port()
        scheduler = self._component(name, [
            str(self.tools.kube_scheduler), f"--config={path}",
            f"--authentication-kubeconfig={auth}", f"--authorization-kubeconfig={auth}",
            "--bind-address=127.0.0.1", f"--secure-port={port}", "--v=2",
        ])
        scheduler.wait_ready(lambda: http_ok(f"https://127.0.0.1:{port}/readyz"), READY_TIMEOUT_S, "ready")
        return scheduler

    def _start_default_scheduler(self) -> None:
        assert self.kubeconfig is not None
        self._scheduler("kube-scheduler", {
            "apiVersion": "kubescheduler.config.k8s.io/v1",
            "kind": "KubeSchedulerConfiguration",
            "clientConnection": {"kubeconfig": str(self.kubeconfig)},
            "leaderElection": {"leaderElect": False},
            "profiles": [{"schedulerName": "default-scheduler"}],
        })

    def start_scheduler(self, extender: ExtenderConfig, name: str = "kvsched-scheduler") -> Component:
        """Start a kube-scheduler configured as the chart configures its own (`chart_scheduler_config`): its one
        profile (the chart's schedulerName, `kvsched` by default) calls `extender`. The caller stops it
        (ControlPlane.stop also does). Each call needs a distinct `name` while the previous one runs."""
        assert self.kubeconfig is not None
        return self._scheduler(name, chart_scheduler_config(self.tools, extender, self.kubeconfig),
                               extender.kubeconfig)

    def restart_apiserver(self, down_s: float = 2.0) -> None:
        """Stop kube-apiserver, wait `down_s`, start it again on the same port and wait until it is ready."""
        assert self.creds is not None
        creds = self.creds
        apiserver = next(c for c in self.components if c.name == "kube-apiserver")
        apiserver.stop()
        time.sleep(down_s)
        apiserver.start()
        apiserver.wait_ready(lambda: http_ok(f"{self.server}/readyz", creds.admin_token, creds.ca_cert),
                             READY_TIMEOUT_S, "ready again (/readyz)")

    # -- helpers ---------------------------------------------------------------------------------------------
    def _create_gpu_runtime_classes(self) -> None:
        """Create the RuntimeClasses the NVIDIA GPU Operator installs (`nvidia`, `nvidia-cdi`, `nvidia-legacy`):
        kvsched sets `runtimeClassName` on managed templates, and the apiserver refuses a pod whose class does not
        exist. KWOK runs no container, so the handlers are names only (simulated)."""
        assert self.kubeconfig is not None
        api = config.new_client_from_config(config_file=str(self.kubeconfig))
        try:
            node = client.NodeV1Api(api)
            for name in GPU_RUNTIME_CLASSES:
                try:
                    node.create_runtime_class({"apiVersion": "node.k8s.io/v1", "kind": "RuntimeClass",
                                               "metadata": {"name": name}, "handler": name})
                except ApiException as e:
                    if e.status != 409:
                        raise ComponentFailed(f"RuntimeClass {name} was refused: {e.status} {e.reason}") from e
        finally:
            api.close()

    def _wait_api_object(self, path: str, what: str) -> None:
        creds = self.creds
        assert creds is not None
        apiserver = next(c for c in self.components if c.name == "kube-apiserver")
        apiserver.wait_ready(lambda: http_ok(f"{self.server}{path}", creds.admin_token, creds.ca_cert),
                             READY_TIMEOUT_S, what)
