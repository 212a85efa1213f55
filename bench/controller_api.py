"""The controller against the real API server (the e2e control plane): from start, and from one change, to every
status written, and the API writes each re-plan makes. Figures, not tests.

Builds a control plane with tests/e2e/harness (binaries from `make e2e-tools`), G GPUs on KWOK nodes (8 per node,
80Gi and 40Gi alternating), N ModelServings (one replica each) whose Deployments have 0 replicas (no pods: the
figure is the controller's, not the scheduler's), then runs `kvsched controller` and measures:
1. start -> every status written (the first plan gets the whole time budget);
2. quiet: writes over 10 s with nothing changing (resourceVersions of ModelServings and Deployments);
3. one model's request rate x5 -> every status the re-plan changes written, and how many writes it made.
Run: `python -m bench.controller_api [--models 1000] [--gpus 500]`.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any, Sequence

from kubernetes import client

from tests.e2e.harness.cluster import ControlPlane
from tests.e2e.harness.kube import api_client, apply_crds, gpu_node_manifest, project_crd_paths
from tests.e2e.harness.controller import KvschedProcess
from tests.e2e.harness.tools import locate_tools, missing_tools

from kvsched.api.names import API_VERSION

NS = "bench"


def versions(api: client.ApiClient) -> dict[str, str]:
    """What only the controller (and this script) write: ModelServings' resourceVersions (spec and status) and
    Deployments' generations (spec; their status is the deployment controller's). Read as raw JSON: the typed
    client's objects cost about a second of CPU per thousand Deployments, which polling would take from kvsched."""
    custom, apps = client.CustomObjectsApi(api), client.AppsV1Api(api)
    servings = custom.list_namespaced_custom_object("kvsched.io", "v1alpha1", NS, "modelservings",
                                                    _preload_content=False)
    deployments = apps.list_namespaced_deployment(NS, _preload_content=False)
    out = {f"ms/{m['metadata']['name']}": m["metadata"]["resourceVersion"] for m in json.loads(servings.data)["items"]}
    out.update({f"deploy/{d['metadata']['name']}": str(d["metadata"].get("generation"))
                for d in json.loads(deployments.data)["items"]})
    return out


def until_quiet(api: client.ApiClient, quiet_s: float, interval_s: float = 0.2) -> tuple[float, dict[str, str]]:
    """Poll every `interval_s` until nothing changed for `quiet_s`; returns the monotonic time of the last change
    and the state."""
    last_change, last = time.monotonic(), versions(api)
    while time.monotonic() - last_change < quiet_s:
        time.sleep(interval_s)
        now = versions(api)
        if now != last:
            last, last_change = now, time.monotonic()
    return last_change, last


def statuses(api: client.ApiClient) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = client.CustomObjectsApi(api).list_namespaced_custom_object(
        "kvsched.io", "v1alpha1", NS, "modelservings")["items"]
    return items


def wait(predicate: Any, timeout_s: float) -> float:
    start = time.monotonic()
    while time.monotonic() - start < timeout_s:
        if predicate():
            return time.monotonic() - start
        time.sleep(0.1)
    raise TimeoutError(f"not done after {timeout_s}s")


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", type=int, default=1000)
    ap.add_argument("--gpus", type=int, default=500)
    args = ap.parse_args(argv)
    tools = locate_tools()
    if missing_tools(tools):
        print(f"e2e binaries missing: {missing_tools(tools)} (run make e2e-tools)")
        return 0
    plane = ControlPlane(workdir=Path(tempfile.mkdtemp(prefix="kvsched-bench-")), tools=tools)
    try:
        plane.start()
        assert plane.kubeconfig is not None
        api = api_client(plane.kubeconfig)
        apply_crds(api, project_crd_paths())
        core, apps = client.CoreV1Api(api), client.AppsV1Api(api)
        core.create_namespace({"metadata": {"name": NS}})
        for n in range((args.gpus + 7) // 8):
            core.create_node(gpu_node_manifest(f"bench-{n:03d}", gpus=min(8, args.gpus - 8 * n),
                                               gpu_memory_mib=81920 if n % 2 == 0 else 40960))
        custom = client.CustomObjectsApi(api)
        for m in range(args.models):
            name = f"m{m:04d}"
            apps.create_namespaced_deployment(NS, {
                "metadata": {"name": name}, "spec": {"replicas": 0, "selector": {"matchLabels": {"app": name}},
                "template": {"metadata": {"labels": {"app": name}},
                             "spec": {"containers": [{"name": "server", "image": "registry.invalid/x"}]}}}})
            custom.create_namespaced_custom_object("kvsched.io", "v1alpha1", NS, "modelservings", {
                "apiVersion": API_VERSION, "kind": "ModelServing", "metadata": {"name": name},
                "spec": {"workloadRef": {"name": name}, "modelSize": f"{[2, 4, 8, 14][m % 4]}Gi",
                         "requestRate": 0.5 + (m * 37 % 45) / 10, "sloSeconds": [0.5, 1, 2][m % 3], "replicas": 1}})
        print(f"{args.models} ModelServings, {args.gpus} GPUs created")
        time.sleep(3)  # let the nodes go Ready
        proc = KvschedProcess(plane, plane.kubeconfig, [f"--namespace={NS}", "--leader-election=false",
                                                        "--time-budget-seconds=5"], "bench-controller",
                              command="controller")
        started = time.monotonic()
        proc.start(timeout_s=120)

        def all_written() -> bool:
            return all((ms.get("status") or {}).get("placedReplicas") == 1 for ms in statuses(api))

        wait(all_written, 300)
        print(f"start -> all {args.models} statuses placed: {time.monotonic() - started:.2f} s "
              f"(includes process start and the first lists)")
        done, _ = until_quiet(api, 5.0)  # the template patches after the first statuses
        print(f"start -> every write of the first plans done: {done - started:.2f} s")
        before = versions(api)
        time.sleep(10)
        quiet = sum(1 for k, v in versions(api).items() if before.get(k) != v)
        print(f"quiet 10 s: {quiet} writes")
        first = statuses(api)[0]
        name = first["metadata"]["name"]
        before = versions(api)
        old_kvpr = first["status"].get("kvpr")
        changed_at = time.monotonic()
        custom.patch_namespaced_custom_object("kvsched.io", "v1alpha1", NS, "modelservings", name,
                                              {"spec": {"requestRate": first["spec"]["requestRate"] * 5}})

        def replanned() -> bool:
            ms = custom.get_namespaced_custom_object("kvsched.io", "v1alpha1", NS, "modelservings", name)
            status = ms.get("status") or {}
            return bool(status.get("observedGeneration") == ms["metadata"]["generation"]
                        and status.get("kvpr") != old_kvpr)

        wait(replanned, 120)
        seen = time.monotonic() - changed_at
        last_change, last = until_quiet(api, 3.0)
        settled = last_change - changed_at
        # Objects written: the changed model (its spec patch by this script and its status by the controller
        # count as one object) and every other status or template the re-plan rewrote.
        writes = sum(1 for k, v in last.items() if before.get(k) != v)
        print(f"rate x5 on {name}: its status {seen:.2f} s, every write done {settled:.2f} s, "
              f"{writes} object(s) written (its own status included)")
        proc.stop()
    finally:
        plane.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
