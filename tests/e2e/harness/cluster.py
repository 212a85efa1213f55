"""An e2e control plane on 127.0.0.1: etcd, kube-apiserver, kube-controller-manager, KWOK and kube-schedulers.

Called by the session fixture `control_plane` in tests/e2e/conftest.py. Two kube-scheduler processes mirror the
production shape in DESIGN.md: the cluster's own scheduler (profile `default-scheduler`, no extender) starts with
the control plane, and `start_scheduler` runs a second one with only the `kvsched` profile and an extender at a
URL the caller chooses. One process cannot host both: kube-scheduler shares its extenders with every profile.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .certs import Credentials, write_credentials, write_kubeconfig
from .processes import Component, ComponentFailed, free_port, http_ok
from .tools import Tools

KWOK_NODE_ANNOTATION = "kwok.x-k8s.io/node"
KWOK_NODE_VALUE = "fake"
SERVICE_CIDR = "10.96.0.0/16"
READY_TIMEOUT_S = 120.0


@dataclass
class ExtenderConfig:
    """One `extenders:` entry of a KubeSchedulerConfiguration (kubescheduler.config.k8s.io/v1).

    `managed_resources` empty means the extender sees every pod of the kvsched profile; `ignorable` false means
    an unreachable extender fails the pod's scheduling cycle instead of being skipped.
    """

    url: str
    weight: int = 1
    node_cache_capable: bool = True
    bind: bool = True
    http_timeout_s: float = 10.0
    managed_resources: tuple[str, ...] = ()
    ignorable: bool = False

    def to_config(self) -> dict[str, Any]:
        entry: dict[str, Any] = {
            "urlPrefix": self.url,
            "filterVerb": "filter",
            "prioritizeVerb": "prioritize",
            "weight": self.weight,
            "enableHTTPS": False,
            "nodeCacheCapable": self.node_cache_capable,
            "httpTimeout": f"{self.http_timeout_s}s",
            "ignorable": self.ignorable,
        }
        if self.bind:
            entry["bindVerb"] = "bind"
        if self.managed_resources:
            entry["managedResources"] = [{"name": r, "ignoredByScheduler": True} for r in self.managed_resources]
        return entry


@dataclass
class ControlPlane:
    """A running control plane; `start` it, use `kubeconfig`, always `stop` it (idempotent)."""

    workdir: Path
    tools: Tools
    components: list[Component] = field(default_factory=list)
    kubeconfig: Path | None = None
    server: str = ""
    creds: Credentials | None = None

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
        return self

    def stop(self) -> None:
        """Stop the components in reverse start order."""
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
            "--profiling=false",
            "--v=1",
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
        # ready/complete/delete) and they all go into one multi-document config file.
        stages = sorted(self.tools.kwok_stages.glob("*.yaml"))
        if not stages:
            raise ComponentFailed(f"no KWOK stages in {self.tools.kwok_stages}; rerun tests/e2e/cluster/build.sh")
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

    def _scheduler(self, name: str, profile: dict[str, Any], extenders: list[dict[str, Any]]) -> Component:
        assert self.kubeconfig is not None
        config: dict[str, Any] = {
            "apiVersion": "kubescheduler.config.k8s.io/v1",
            "kind": "KubeSchedulerConfiguration",
            "clientConnection": {"kubeconfig": str(self.kubeconfig)},
            "leaderElection": {"leaderElect": False},
            "profiles": [profile],
        }
        if extenders:
            config["extenders"] = extenders
        path = self.workdir / f"{name}.yaml"
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        port = free_port()
        scheduler = self._component(name, [
            str(self.tools.kube_scheduler), f"--config={path}",
            f"--authentication-kubeconfig={self.kubeconfig}", f"--authorization-kubeconfig={self.kubeconfig}",
            "--bind-address=127.0.0.1", f"--secure-port={port}", "--v=2",
        ])
        scheduler.wait_ready(lambda: http_ok(f"https://127.0.0.1:{port}/readyz"), READY_TIMEOUT_S, "ready")
        return scheduler

    def _start_default_scheduler(self) -> None:
        self._scheduler("kube-scheduler", {"schedulerName": "default-scheduler"}, [])

    def start_scheduler(self, extender: ExtenderConfig, name: str = "kvsched-scheduler",
                        profile_name: str = "kvsched") -> Component:
        """Start a kube-scheduler whose only profile is `profile_name`, calling `extender`; the caller stops it
        (ControlPlane.stop also does). Each call needs a distinct `name` while the previous one runs."""
        return self._scheduler(name, {"schedulerName": profile_name}, [extender.to_config()])

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
    def _wait_api_object(self, path: str, what: str) -> None:
        creds = self.creds
        assert creds is not None
        apiserver = next(c for c in self.components if c.name == "kube-apiserver")
        apiserver.wait_ready(lambda: http_ok(f"{self.server}{path}", creds.admin_token, creds.ca_cert),
                             READY_TIMEOUT_S, what)
