"""`make cluster`: a local cluster to try kvsched on a laptop with no GPU, in the foreground until Ctrl-C/SIGTERM.

It reuses the e2e harness (tests/e2e/harness): the control plane from the e2e cache (built first by `make`),
KWOK GPU nodes as listed in examples/cluster.yaml, the Helm chart installed with the cache's helm (CRDs, RBAC,
ServiceAccounts, scheduler ConfigMap; its in-cluster Deployment is scaled to 0 because kvsched runs here), then
`kvsched serve` and a stock kube-scheduler as local processes with the chart's rendered flags and scheduler
configuration and tokens of the chart's two ServiceAccounts (kvsched's; the scheduler's, from the chart's token
Secret), so each has exactly the RBAC the chart grants it, and
Prometheus scraping kvsched. It creates the example's models as annotated Deployments (not with
KVSCHED_CLUSTER_EXAMPLES=0), writes $KVSCHED_CLUSTER_DIR/env (default .kvsched-cluster/env) and prints `ready`.

KVSCHED_CLUSTER_SERVE replaces the `kvsched serve` command line (shell words; for tests and for trying another
build). `--start-delay 10s` (or KVSCHED_CLUSTER_START_DELAY=10s) gives every example pod an engine start-up of that
long: KWOK keeps it Running and not Ready for that Go duration after its bind (the e2e harness's stage,
tests/e2e/cluster/stages/pod-start-delay.yaml), so the start gate (one engine starting per GPU) shows.
`kvsched serve` is restarted whenever it exits (1 s doubling to 10 s, logged in its log), as the kubelet restarts
the chart's Deployment: kvsched exits when it loses its lease, e.g. while the apiserver is slow to answer.
Exit codes: 0 stopped by a signal, 1 a component failed, 2 a prerequisite is missing.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any, Sequence

import yaml
from kubernetes import client

from hack.chart import CHART_DIR, NAMESPACE, RELEASE
from kvsched.api.names import GPU_MEMORY_LABEL, RATE_ANNOTATION, SIZE_ANNOTATION, SLO_ANNOTATION
from kvsched.cluster_file import ClusterFileError, load_cluster_file
from tests.e2e.harness.chart import HelmFailed, install_chart
from tests.e2e.harness.cluster import START_DELAY_ANNOTATION, ControlPlane
from tests.e2e.harness.kube import api_client, create_gpu_nodes, deployment_manifest, gpu_node_manifest, wait_for
from tests.e2e.harness.processes import Component, ComponentFailed, Restart, free_port, http_ok
from tests.e2e.harness.prometheus import start_prometheus
from tests.e2e.harness.tools import locate_tools, missing_tools, prometheus_path

REPO_ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = REPO_ROOT / "examples" / "cluster.yaml"
DEMO_NAMESPACE = "kvsched-demo"
READY_TIMEOUT_S = 120.0


class Unavailable(RuntimeError):
    """A prerequisite is missing (exit code 2); the message says what to do."""


def say(message: str) -> None:
    print(f"[cluster] {message}", flush=True)


def serve_command() -> list[str]:
    """The `kvsched serve` command line, checked to exist (raises Unavailable with what to do otherwise)."""
    override = os.environ.get("KVSCHED_CLUSTER_SERVE")
    command = shlex.split(override) if override else [str(Path(sys.executable).parent / "kvsched"), "serve"]
    probe = subprocess.run([*command, "--help"], capture_output=True, text=True)
    if probe.returncode != 0:
        said = (probe.stderr or probe.stdout).strip().splitlines()
        raise Unavailable(
            f"`{' '.join(command)}` is not available ({said[-1] if said else f'exit code {probe.returncode}'}). "
            "`kvsched serve` runs the controller and the scheduler extender; make cluster needs a kvsched that "
            "has it")
    return command


def ensure_tools() -> None:
    """Build whatever the cache lacks (control plane, helm, Prometheus) with tests/e2e/cluster/build.sh."""
    tools = locate_tools()
    if missing_tools(tools) or not tools.helm.exists() or not prometheus_path().exists():
        say("building the missing e2e components into the cache (tests/e2e/cluster/build.sh)")
        subprocess.run([str(REPO_ROOT / "tests" / "e2e" / "cluster" / "build.sh")], check=True)
    tools = locate_tools()
    missing = missing_tools(tools) + [str(p) for p in (tools.helm, prometheus_path()) if not p.exists()]
    if missing:
        raise Unavailable(f"still missing after the build: {', '.join(missing)}")


def example_nodes(path: Path) -> list[dict[str, Any]]:
    """KWOK node manifests for the GPUs of a cluster file: one node per name, its GPU count and per-GPU memory
    (the smallest of its GPUs, also as the kvsched.io/gpu-memory label)."""
    cluster = load_cluster_file(path)
    gpus: dict[str, list[float]] = defaultdict(list)
    for gpu in cluster.gpus:
        gpus[gpu.node].append(gpu.memory_gib)
    return [gpu_node_manifest(node, gpus=len(mem), gpu_memory_mib=int(min(mem) * 1024),
                              labels={GPU_MEMORY_LABEL: f"{int(min(mem) * 1024)}Mi"})
            for node, mem in sorted(gpus.items())]


def example_deployments(path: Path, start_delay: str = "") -> list[dict[str, Any]]:
    """Annotated Deployments for the models of a cluster file (values as written there; plain numbers of GiB
    get their unit). `start_delay` (a Go duration, e.g. "10s"; "": none) becomes each pod's simulated engine
    start-up (the e2e harness's START_DELAY_ANNOTATION)."""
    load_cluster_file(path)  # the same checks and messages as `kvsched plan`
    raw = yaml.safe_load(path.read_text())
    manifests = []
    for model in raw.get("models", []):
        size = model["size"]
        annotations = {
            SIZE_ANNOTATION: f"{size}Gi" if isinstance(size, (int, float)) else str(size),
            RATE_ANNOTATION: str(model["requestRate"]),
            SLO_ANNOTATION: str(model["sloSeconds"]),
        }
        manifests.append(deployment_manifest(model["name"], replicas=int(model.get("replicas", 1)),
                                             annotations=annotations,
                                             pod_annotations={START_DELAY_ANNOTATION: start_delay}
                                             if start_delay else None))
    return manifests


def kvsched_component(argv: list[str], log: Path, kubeconfig: Path) -> Component:
    """`kvsched serve` as a component restarted whenever it exits (as the kubelet restarts the chart's Deployment;
    kvsched exits on a lost lease), with `kubeconfig` (the chart's ServiceAccount's token)."""
    return Component("kvsched", argv, log, env={"KUBECONFIG": str(kubeconfig)}, restart=Restart())


def exited(components: Sequence[Component]) -> list[str]:
    """The names of the components that exited for good (not those a restart is bringing back)."""
    return [c.name for c in components if not c.alive]


@dataclasses.dataclass
class LocalCluster:
    """Everything `make cluster` runs; `stop` is idempotent and stops in reverse order."""

    workdir: Path
    serve: list[str]
    examples: bool = True
    start_delay: str = ""                                          # each example pod's start-up ("": none)
    extra_args: list[str] = dataclasses.field(default_factory=list)  # after the chart's flags of `kvsched serve`
    created_at: float | None = None                                # monotonic s the example Deployments were created
    plane: ControlPlane | None = None
    components: list[Component] = dataclasses.field(default_factory=list)

    def start(self) -> dict[str, str]:
        """Start every part; returns the env file's lines (name -> value). A previous run's state in `workdir`
        is dropped (each run starts a fresh cluster)."""
        marker = self.workdir / ".kvsched-cluster"
        if self.workdir.exists() and any(self.workdir.iterdir()):
            if not marker.exists():
                raise Unavailable(f"{self.workdir} is not empty and was not made by `make cluster`: choose "
                                  "another KVSCHED_CLUSTER_DIR")
            shutil.rmtree(self.workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        marker.write_text("made by `make cluster`; deleted and remade by its next run\n")
        logs = self.workdir / "logs"
        logs.mkdir(exist_ok=True)
        tools = locate_tools()
        say(f"control plane (Kubernetes {tools.k8s_version}) in {self.workdir}")
        self.plane = ControlPlane(workdir=self.workdir / "plane", tools=tools)
        self.plane.start()
        assert self.plane.kubeconfig is not None and self.plane.creds is not None
        admin = api_client(self.plane.kubeconfig)
        core, apps = client.CoreV1Api(admin), client.AppsV1Api(admin)

        nodes = example_nodes(EXAMPLE)
        gpus = sum(int(n["status"]["capacity"]["nvidia.com/gpu"]) for n in nodes)
        say(f"{len(nodes)} KWOK nodes with {gpus} GPUs from {EXAMPLE.relative_to(REPO_ROOT)}")
        create_gpu_nodes(core, nodes)

        metrics_port, extender_port = free_port(), free_port()
        say(f"helm install {RELEASE} {CHART_DIR.relative_to(REPO_ROOT)} (namespace {NAMESPACE})")
        chart = install_chart(self.plane, admin, tools.helm, self.workdir, RELEASE, NAMESPACE,
                              {"metricsPort": metrics_port, "extenderPort": extender_port,
                               # never on a KWOK node, which would only pretend to run it
                               "nodeSelector": {"kvsched.io/local-cluster": "runs-outside"}})
        # kvsched and its scheduler run here, not in the cluster: keep the chart's objects, drop its pod.
        chart.scale_in_cluster_pod_to_zero()
        sa_kubeconfig = chart.service_account_kubeconfig(self.workdir / "kvsched.kubeconfig")
        kvsched_args = chart.kvsched_args()
        scheduler_kubeconfig = chart.scheduler_kubeconfig(self.workdir / "kvsched-scheduler.kubeconfig")
        scheduler_config = chart.local_scheduler_config(scheduler_kubeconfig)

        say(f"kvsched: {' '.join(self.serve)} (extender on :{extender_port}, metrics on :{metrics_port})")
        kvsched = kvsched_component([*self.serve, *kvsched_args[1:], *self.extra_args], logs / "kvsched.log",
                                    sa_kubeconfig).start()
        self.components.append(kvsched)
        metrics_url = f"http://127.0.0.1:{metrics_port}"
        kvsched.wait_ready(lambda: http_ok(f"{metrics_url}/metrics"), READY_TIMEOUT_S, "serving /metrics")

        config_path = self.workdir / "scheduler-config.yaml"
        config_path.write_text(yaml.safe_dump(scheduler_config, sort_keys=False))
        scheduler_port = free_port()
        say(f"kube-scheduler, profile {scheduler_config['profiles'][0]['schedulerName']}, with the chart's "
            "configuration")
        scheduler = Component("kvsched-scheduler", [
            str(tools.kube_scheduler), f"--config={config_path}",
            f"--authentication-kubeconfig={scheduler_kubeconfig}",
            f"--authorization-kubeconfig={scheduler_kubeconfig}",
            "--bind-address=127.0.0.1", f"--secure-port={scheduler_port}", "--v=2",
        ], logs / "kvsched-scheduler.log").start()
        self.components.append(scheduler)
        scheduler.wait_ready(lambda: http_ok(f"https://127.0.0.1:{scheduler_port}/readyz"), READY_TIMEOUT_S)

        prometheus, prometheus_url = start_prometheus(prometheus_path(), self.workdir / "prometheus",
                                                      {"kvsched": f"127.0.0.1:{metrics_port}"},
                                                      scrape_interval_s=5.0, log_dir=logs)
        self.components.append(prometheus)
        say(f"Prometheus at {prometheus_url}, scraping kvsched")

        if self.examples:
            manifests = example_deployments(EXAMPLE, self.start_delay)
            core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=DEMO_NAMESPACE)))
            wait_for(lambda: core.read_namespaced_service_account("default", DEMO_NAMESPACE), lambda sa: True,
                     60.0, f"ServiceAccount {DEMO_NAMESPACE}/default")
            self.created_at = time.monotonic()
            for manifest in manifests:
                apps.create_namespaced_deployment(DEMO_NAMESPACE, manifest)
            replicas = sum(m["spec"]["replicas"] for m in manifests)
            delay = f", each starting for {self.start_delay}" if self.start_delay else ""
            say(f"{len(manifests)} annotated Deployments ({replicas} replicas{delay}) in namespace {DEMO_NAMESPACE}")
        admin.close()
        return {
            "KUBECONFIG": str(self.plane.kubeconfig),
            "KVSCHED_METRICS_URL": f"{metrics_url}/metrics",
            "KVSCHED_EXTENDER_URL": f"http://127.0.0.1:{extender_port}",
            "PROMETHEUS_URL": prometheus_url,
        }

    def plane_components(self) -> list[Component]:
        return list(self.plane.components) if self.plane is not None else []

    def stop(self) -> None:
        for component in reversed(self.components):
            component.stop()
        self.components.clear()
        if self.plane is not None:
            self.plane.stop()


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="make cluster", description="a local cluster to try kvsched on")
    parser.add_argument("--start-delay", default=os.environ.get("KVSCHED_CLUSTER_START_DELAY", ""),
                        metavar="DURATION", help="simulated engine start-up of every example pod, a Go duration "
                        "such as 10s (env KVSCHED_CLUSTER_START_DELAY; default: none, Ready at once)")
    args = parser.parse_args(argv)
    if args.start_delay and not re.fullmatch(r"(\d+(\.\d+)?(ms|s|m|h))+", args.start_delay):
        parser.error(f"--start-delay {args.start_delay!r} is not a Go duration such as 10s or 1m30s")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    workdir = Path(os.environ.get("KVSCHED_CLUSTER_DIR") or REPO_ROOT / ".kvsched-cluster").resolve()
    examples = os.environ.get("KVSCHED_CLUSTER_EXAMPLES", "1") != "0"
    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    for sig in (signal.SIGINT, signal.SIGTERM):  # Ctrl-C and SIGTERM both stop it cleanly, even mid-start
        signal.signal(sig, interrupt)
    try:
        serve = serve_command()
        ensure_tools()
    except (Unavailable, subprocess.CalledProcessError, ClusterFileError) as e:
        print(f"make cluster: {e}", file=sys.stderr)
        return 2
    cluster = LocalCluster(workdir=workdir, serve=serve, examples=examples, start_delay=args.start_delay)
    try:
        env = cluster.start()
        env_file = workdir / "env"
        env_file.write_text("".join(f"{k}={v}\n" for k, v in env.items()))
        for key, value in env.items():
            say(f"{key}={value}")
        say(f"environment in {env_file}; logs in {workdir / 'logs'} and {workdir / 'plane' / 'logs'}")
        say(f"try, in another shell: set -a; . {env_file}; set +a; kubectl get modelservings -A")
        print("ready", flush=True)
        while True:
            time.sleep(1.0)
            dead = exited([*cluster.components, *cluster.plane_components()])
            if dead:
                print(f"make cluster: {', '.join(dead)} exited; see {workdir / 'logs'}", file=sys.stderr)
                return 1
    except Unavailable as e:
        print(f"make cluster: {e}", file=sys.stderr)
        return 2
    except (ComponentFailed, HelmFailed, TimeoutError, client.ApiException) as e:
        print(f"make cluster: {e}", file=sys.stderr)
        if cluster.plane is not None:
            print(cluster.plane.log_tails(20), file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        say("stopping")
        return 0
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, signal.SIG_IGN)
        cluster.stop()


if __name__ == "__main__":
    sys.exit(main())
