"""Bind latency against a real apiserver: PodBinder.bind (annotate the pod, create the Binding) per pod.

Starts the e2e control plane of tests/e2e (etcd, kube-apiserver, controller-manager, KWOK, scheduler; needs
`make e2e-tools`), creates one KWOK GPU node and N unscheduled pods (schedulerName `kvsched`, which no scheduler
serves here), then binds them one by one, as the extender's bind does, and prints p50/p99 and binds/s.
Figures, not tests: nothing asserts. Run: `python -m bench.extender_bind [--pods N] [--json PATH]`.
The aim (issue 8): bind p99 <= 50 ms.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

from kvsched.api.names import DEFAULT_SCHEDULER_NAME, GPU_ANNOTATION, MEMORY_FRACTION_ANNOTATION, MODEL_LABEL


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pods", type=int, default=200, help="pods to bind (default 200)")
    parser.add_argument("--json", type=Path, help="also write the figures as JSON here")
    args = parser.parse_args(argv)

    from kubernetes import client

    from kvsched.k8s.binding import PodBinder
    from kvsched.k8s.client import api_client
    from tests.e2e.harness.cluster import ControlPlane
    from tests.e2e.harness.kube import create_gpu_nodes, gpu_node_manifest, wait_for
    from tests.e2e.harness.tools import locate_tools, missing_tools

    tools = locate_tools()
    if missing_tools(tools):
        print(f"e2e control plane not built: missing {', '.join(missing_tools(tools))}", file=sys.stderr)
        return 0
    with tempfile.TemporaryDirectory(prefix="kvsched-bind-bench-") as workdir:
        plane = ControlPlane(workdir=Path(workdir), tools=tools)
        try:
            plane.start()
            assert plane.kubeconfig is not None
            api = api_client(str(plane.kubeconfig))
            core = client.CoreV1Api(api)
            create_gpu_nodes(core, [gpu_node_manifest("bench-gpu-0", gpus=8, gpu_memory_mib=81920)])
            wait_for(lambda: core.read_namespaced_service_account("default", "default"), bool, 60.0, "default SA")
            names = [f"bench-{i}" for i in range(args.pods)]
            uids = {}
            for name in names:
                pod = core.create_namespaced_pod("default", {
                    "metadata": {"name": name, "labels": {MODEL_LABEL: "bench"}},
                    "spec": {"schedulerName": DEFAULT_SCHEDULER_NAME,
                             "containers": [{"name": "c", "image": "registry.invalid/kvsched/fake"}]}})
                uids[name] = pod.metadata.uid
            binder = PodBinder(api)
            latencies = []
            started_all = time.perf_counter()
            for i, name in enumerate(names):
                started = time.perf_counter()
                binder.bind("default", name, uids[name], "bench-gpu-0",
                            {GPU_ANNOTATION: str(i % 8), MEMORY_FRACTION_ANNOTATION: "0.125"})
                latencies.append(time.perf_counter() - started)
            wall = time.perf_counter() - started_all
            latencies.sort()
            result = {"pods": len(names), "p50_ms": 1000 * latencies[len(latencies) // 2],
                      "p99_ms": 1000 * latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))],
                      "binds_per_s": len(names) / wall, "load_average": os.getloadavg()}
            print(f"bind (annotate + Binding) x{result['pods']}: p50 {result['p50_ms']:.1f} ms, "
                  f"p99 {result['p99_ms']:.1f} ms, {result['binds_per_s']:.0f} binds/s "
                  f"(load average {result['load_average'][0]:.1f})")
            if args.json:
                args.json.write_text(json.dumps(result, indent=2))
            api.close()
        finally:
            plane.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
