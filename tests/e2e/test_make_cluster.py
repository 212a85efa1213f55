"""`make cluster` (hack/cluster.py): it starts, writes its env file, reports ready, places the example, and stops
cleanly on SIGTERM leaving no process behind; without `kvsched serve` it says so and exits 2.

With a kvsched that has `serve` (the controller and the extender), the test runs the real thing and checks that
every model of examples/cluster.yaml is Placed and every replica bound to a GPU. A kvsched without it (a branch
that predates them) runs tests/e2e/metrics_standin.py in its place (through KVSCHED_CLUSTER_SERVE) and checks the
rest.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from kubernetes import client

from .harness.kube import api_client, wait_for
from .harness.prometheus import wait_for_samples
from .harness.tools import Tools, locate_tools, prometheus_path, unavailable

from kvsched.api.names import DEFAULT_SCHEDULER_NAME, GPU_ANNOTATION, SIZE_ANNOTATION

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).resolve().parents[2]
STARTUP_TIMEOUT_S = 240.0


def processes_mentioning(text: str) -> list[str]:
    """`pid cmdline` of live processes whose command line or environment contains `text`."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            environ = (proc / "environ").read_bytes().decode(errors="replace")
            state = next(ln for ln in (proc / "status").read_text().splitlines() if ln.startswith("State:"))
        except (OSError, StopIteration):
            continue
        if "zombie" not in state and (text in cmdline or text in environ):
            found.append(f"{proc.name} {cmdline}")
    return found


KVSCHED = Path(sys.executable).parent / "kvsched"
DASHBOARD = ROOT / "helm" / "kvsched" / "dashboards" / "kvsched.json"


def dashboard_queries() -> list[str]:
    panels = json.loads(DASHBOARD.read_text())["panels"]
    return [t["expr"] for p in panels for t in p.get("targets", []) if t.get("expr")]


def has_serve() -> bool:
    return subprocess.run([str(KVSCHED), "serve", "--help"], capture_output=True).returncode == 0


def run_cluster(workdir: Path, **env: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "hack.cluster"], cwd=ROOT, text=True, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, env={**os.environ, "KVSCHED_CLUSTER_DIR": str(workdir), **env})


@pytest.fixture(scope="module")
def tools_and_prometheus() -> Tools:
    tools = locate_tools()
    missing = [str(p) for p in (tools.kube_apiserver, tools.helm, prometheus_path()) if not p.exists()]
    if missing:
        reason = f"make cluster needs the e2e cache: missing {', '.join(missing)} (run `make e2e-tools`)"
        unavailable(reason)
    return tools


def assert_example_placed(api: client.ApiClient, timeout_s: float = 180.0) -> None:
    """Every ModelServing of the example Placed, and all 38 replicas bound by kvsched with a GPU index."""
    custom, core = client.CustomObjectsApi(api), client.CoreV1Api(api)

    def placed(items: list[dict[str, object]]) -> bool:
        return len(items) == 30 and all(
            any(c["type"] == "Placed" and c["status"] == "True"
                for c in m.get("status", {}).get("conditions", []))  # type: ignore[attr-defined]
            for m in items)

    wait_for(lambda: custom.list_namespaced_custom_object("kvsched.io", "v1alpha1", "kvsched-demo",
                                                          "modelservings")["items"],
             placed, timeout_s, "the example's 30 ModelServings Placed")
    wait_for(lambda: core.list_namespaced_pod("kvsched-demo").items,
             lambda pods: len(pods) == 38 and all(
                 p.spec.node_name and p.spec.scheduler_name == DEFAULT_SCHEDULER_NAME
                 and (p.metadata.annotations or {}).get(GPU_ANNOTATION) is not None for p in pods),
             timeout_s, "the example's 38 replicas bound by kvsched to a GPU")


def test_make_cluster_without_kvsched_serve_says_so(tmp_path: Path) -> None:
    missing = f"{Path(sys.executable).parent / 'kvsched'} no-such-command"
    proc = run_cluster(tmp_path, KVSCHED_CLUSTER_SERVE=missing)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 2, out
    assert "kvsched serve" in out and "no-such-command" in out
    assert "Traceback" not in out


def test_make_cluster_starts_reports_ready_and_stops_cleanly(tools_and_prometheus: Tools, tmp_path: Path) -> None:
    workdir = tmp_path / "cluster"
    real = has_serve()
    proc = run_cluster(workdir) if real else run_cluster(
        workdir, KVSCHED_CLUSTER_SERVE=f"{sys.executable} -m tests.e2e.metrics_standin")
    lines: list[str] = []
    try:
        assert proc.stdout is not None
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        for line in proc.stdout:
            lines.append(line.rstrip())
            if line.strip() == "ready" or time.monotonic() > deadline:
                break
        assert lines and lines[-1] == "ready", "\n".join(lines)

        env = dict(line.split("=", 1) for line in (workdir / "env").read_text().splitlines())
        assert set(env) == {"KUBECONFIG", "KVSCHED_METRICS_URL", "KVSCHED_EXTENDER_URL", "PROMETHEUS_URL"}
        api = api_client(Path(env["KUBECONFIG"]))
        try:
            nodes = {n.metadata.name: n for n in client.CoreV1Api(api).list_node().items}
            assert {"h100-node-a", "h100-node-b", "a100-node-c"} <= set(nodes)
            assert nodes["a100-node-c"].status.capacity["nvidia.com/gpu"] == "4"
            deployments = client.AppsV1Api(api).list_namespaced_deployment("kvsched-demo").items
            assert len(deployments) == 30
            assert all(SIZE_ANNOTATION in d.metadata.annotations for d in deployments)
            # The chart's objects are installed; its in-cluster kvsched pod is not (kvsched runs locally).
            rbac = client.RbacAuthorizationV1Api(api)
            assert rbac.read_cluster_role("kvsched").rules
            assert client.AppsV1Api(api).read_namespaced_deployment("kvsched", "kvsched-system").spec.replicas == 0
            if real:
                assert_example_placed(api)
        finally:
            api.close()
        wait_for_samples(env["PROMETHEUS_URL"], 'up{job="kvsched"} == 1', 30.0)
        wait_for_samples(env["PROMETHEUS_URL"], "kvsched_max_kvpr", 30.0)
        if real:  # every dashboard query has data from the real kvsched serve
            for expr in dashboard_queries():
                wait_for_samples(env["PROMETHEUS_URL"], expr.replace("$__rate_interval", "1m"), 60.0, finite=False)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            rest, _ = proc.communicate(timeout=90)
        except subprocess.TimeoutExpired:
            proc.kill()
            rest, _ = proc.communicate()
    assert proc.returncode == 0, "\n".join(lines) + rest
    leftovers = processes_mentioning(str(workdir))
    assert leftovers == [], leftovers
