"""Time-to-all-Ready of the bundled example (examples/cluster.yaml, 38 replicas) on the real control plane, each pod
taking a simulated engine start-up (`--start-delay`, default 10s), with the start gate and without it.

Each run is `make cluster`'s LocalCluster (control plane, KWOK GPU nodes, the chart, `kvsched serve`, a
kube-scheduler with the chart's configuration) in a fresh directory; the clock starts when the example's
Deployments are created and stops when every one of their pods is Ready (and as many as the example wants). A
watch on the pods also records the most pods ever bound and not Ready at once on one GPU. `--gate off` runs kvsched
with `--start-timeout-seconds=0`; `--holders off` with `--gpu-holders=false` (on, the default: replicas wait for
their GPU's holder pod, which the harness's device plugin stand-in serves at once). Run it under the e2e lock (it
starts a control plane):

    flock /tmp/kvsched-e2e.lock .venv/bin/python -m hack.start_bench --gate on --gate off [--holders off]

Prints one line per run and the figures as JSON. Not part of `make test`.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Sequence

from kubernetes import client, watch

from hack.cluster import DEMO_NAMESPACE, EXAMPLE, LocalCluster, example_deployments, serve_command
from kvsched.api.names import GPU_ANNOTATION, MODEL_LABEL
from tests.e2e.harness.kube import api_client


class StartWatch:
    """Pods of the demo namespace through a watch: how many are Ready, and the most bound and not Ready at once on
    one GPU."""

    def __init__(self, kube: client.ApiClient) -> None:
        self.core = client.CoreV1Api(kube)
        self.pods: dict[str, Any] = {}
        self.max_starting_per_gpu = 0
        self.ready = 0
        self._stop = threading.Event()
        self._watch = watch.Watch()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                for event in self._watch.stream(self.core.list_namespaced_pod, DEMO_NAMESPACE, timeout_seconds=5):
                    pod = event["object"]
                    if event["type"] == "DELETED":
                        self.pods.pop(pod.metadata.name, None)
                    else:
                        self.pods[pod.metadata.name] = pod
                    self._count()
        except Exception:
            if not self._stop.is_set():
                raise

    def _count(self) -> None:
        starting: dict[tuple[str, str], int] = {}
        ready = 0
        for pod in self.pods.values():
            if pod.metadata.deletion_timestamp or MODEL_LABEL not in (pod.metadata.labels or {}):
                continue
            is_ready = any(c.type == "Ready" and c.status == "True" for c in pod.status.conditions or [])
            ready += is_ready
            gpu = (pod.metadata.annotations or {}).get(GPU_ANNOTATION)
            if pod.spec.node_name and gpu is not None and not is_ready:
                key = (pod.spec.node_name, gpu)
                starting[key] = starting.get(key, 0) + 1
        self.ready = ready
        self.max_starting_per_gpu = max([self.max_starting_per_gpu, *starting.values()])

    def stop(self) -> None:
        self._stop.set()
        self._watch.stop()


def run_once(gate: bool, holders: bool, start_delay: str, timeout_s: float) -> dict[str, Any]:
    wanted = sum(d["spec"]["replicas"] for d in example_deployments(EXAMPLE))
    workdir = Path(tempfile.mkdtemp(prefix="kvsched-start-bench-"))
    extra = ([] if gate else ["--start-timeout-seconds=0"]) + ([] if holders else ["--gpu-holders=false"])
    cluster = LocalCluster(workdir=workdir, serve=serve_command(), start_delay=start_delay, extra_args=extra)
    try:
        cluster.start()
        assert cluster.created_at is not None and cluster.plane is not None and cluster.plane.kubeconfig
        kube = api_client(cluster.plane.kubeconfig)
        starts = StartWatch(kube)
        deadline = cluster.created_at + timeout_s
        while starts.ready < wanted and time.monotonic() < deadline:
            time.sleep(0.1)  # the watch thread counts
        elapsed = time.monotonic() - cluster.created_at
        starts.stop()
        kube.close()
        return {"gate": "on" if gate else "off", "holders": "on" if holders else "off", "start_delay": start_delay,
                "replicas": wanted,
                "ready": starts.ready, "seconds_to_all_ready": round(elapsed, 1) if starts.ready >= wanted else None,
                "max_starting_per_gpu": starts.max_starting_per_gpu}
    finally:
        cluster.stop()
        shutil.rmtree(workdir, ignore_errors=True)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m hack.start_bench", description=__doc__.splitlines()[0])
    parser.add_argument("--gate", action="append", choices=("on", "off"), help="runs, in order (default: on off)")
    parser.add_argument("--holders", choices=("on", "off"), default="on", help="GPU holder pods in every run")
    parser.add_argument("--start-delay", default="10s", help="each pod's simulated start-up (Go duration)")
    parser.add_argument("--timeout-seconds", type=float, default=900.0, help="give up a run after this long")
    args = parser.parse_args(argv)
    results = []
    for gate in args.gate or ["on", "off"]:
        result = run_once(gate == "on", args.holders == "on", args.start_delay, args.timeout_seconds)
        print(f"gate {result['gate']}, holders {result['holders']}: {result['ready']}/{result['replicas']} Ready "
              f"after "
              f"{result['seconds_to_all_ready']} s; at most {result['max_starting_per_gpu']} starting on one GPU",
              flush=True)
        results.append(result)
    print(json.dumps(results, indent=2))
    return 0 if all(r["seconds_to_all_ready"] is not None for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
