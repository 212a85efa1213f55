"""Locate the control-plane binaries that tests/e2e/cluster/build.sh cached, keyed by versions.env.

Called by the session fixtures in tests/e2e/conftest.py, which skip (or, with CI=true, fail) when anything
listed by `missing_tools` is absent.
"""
from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from typing import NoReturn
from pathlib import Path

import pytest

CLUSTER_DIR = Path(__file__).resolve().parent.parent / "cluster"
VERSIONS_FILE = CLUSTER_DIR / "versions.env"


def read_versions(path: Path = VERSIONS_FILE) -> dict[str, str]:
    """Parse the KEY=VALUE lines of versions.env (comments and blank lines ignored)."""
    versions: dict[str, str] = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, _, value = line.partition("=")
            versions[key.strip()] = value.strip()
    return versions


def cache_root() -> Path:
    """The build cache: $KVSCHED_E2E_CACHE, or ~/.cache/kvsched-e2e as in build.sh."""
    return Path(os.environ.get("KVSCHED_E2E_CACHE") or Path.home() / ".cache" / "kvsched-e2e")


@dataclass(frozen=True)
class Tools:
    """Absolute paths of every binary the harness runs, and the Kubernetes version they were built at."""

    k8s_version: str
    etcd: Path
    kube_apiserver: Path
    kube_controller_manager: Path
    kube_scheduler: Path
    kwok: Path
    kwok_stages: Path
    helm: Path
    openssl: Path | None


def locate_tools() -> Tools:
    """Paths the binaries have in the cache for the versions in versions.env (they may not exist)."""
    v = read_versions()
    root = cache_root()
    k8s = root / f"kubernetes-{v['K8S_VERSION']}"
    kwok = root / f"kwok-{v['KWOK_VERSION']}"
    openssl = shutil.which("openssl")
    return Tools(
        k8s_version=v["K8S_VERSION"],
        etcd=root / f"etcd-{v['ETCD_VERSION']}" / "bin" / "etcd",
        kube_apiserver=k8s / "bin" / "kube-apiserver",
        kube_controller_manager=k8s / "bin" / "kube-controller-manager",
        kube_scheduler=k8s / "bin" / "kube-scheduler",
        kwok=kwok / "bin" / "kwok",
        kwok_stages=kwok / "stages",
        helm=root / f"helm-{v['HELM_VERSION']}" / "bin" / "helm",
        openssl=Path(openssl) if openssl else None,
    )


def missing_tools(tools: Tools) -> list[str]:
    """What the control plane needs but cannot find, as paths relative to the cache (helm is not needed)."""
    root = cache_root()
    missing = [
        str(path.relative_to(root))
        for path in (tools.etcd, tools.kube_apiserver, tools.kube_controller_manager, tools.kube_scheduler, tools.kwok)
        if not os.access(path, os.X_OK)
    ]
    if not tools.kwok_stages.is_dir():
        missing.append(str(tools.kwok_stages.relative_to(root)))
    if tools.openssl is None:
        missing.append("openssl (on PATH)")
    return missing


def prometheus_path() -> Path:
    """Where build.sh caches Prometheus (tests that need it skip, or fail with CI=true, when it is missing)."""
    return cache_root() / f"prometheus-{read_versions()['PROMETHEUS_VERSION']}" / "bin" / "prometheus"


def unavailable(reason: str) -> NoReturn:
    """A tool or build the test needs is missing: fail under CI=true (CI installs everything), skip otherwise."""
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(reason, pytrace=False)
    pytest.skip(reason)
