"""Load on the extender's HTTP API from a second process on loopback: p50/p99 latency per verb and requests/s.

The server is the real app (`create_app`) on uvicorn in a child process, with an in-memory cache holding a
synthetic cluster: 500 GPU nodes of 8 GPUs, 200 models with 2-8 planned slots each, half of the slots held by
bound pods. The client (this process) sends realistic ExtenderArgs: a vLLM Deployment's pod (about 7 KB of JSON)
with the 500 node names (`nodeCacheCapable: true`) or the 500 Node objects (`false`), over keep-alive
connections, sequentially and from 4 concurrent clients (threads, one connection each). Bind is measured against
a no-op binder (the app's own cost; the API calls are not included).
Figures, not tests: nothing asserts. Run: `python -m bench.extender_load [--requests N] [--repeat R] [--json PATH]`.
The aim (issue 8, 2-core machine): filter and prioritize p99 <= 3 ms and >= 1000 requests/s sequential.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import platform
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from kvsched.api.names import DEFAULT_SCHEDULER_NAME, GPU_ANNOTATION, MEMORY_FRACTION_ANNOTATION, MODEL_LABEL

NODES = 500
GPUS_PER_NODE = 8
MODELS = 200
CONCURRENCY = 4
POD_NAMESPACE = "ml"
POD_MODEL = "model-7"  # a model with slots on a few nodes


def node_object(i: int) -> dict[str, Any]:
    """A Node as kube-scheduler sends it with nodeCacheCapable false (about 2.5 KB of JSON)."""
    name = f"gpu-node-{i:03d}"
    capacity = {"cpu": "96", "memory": "1056Gi", "pods": "110", "nvidia.com/gpu": str(GPUS_PER_NODE),
                "ephemeral-storage": "3750Gi", "hugepages-1Gi": "0", "hugepages-2Mi": "0"}
    return {
        "metadata": {"name": name, "uid": f"0000-{i:08d}", "resourceVersion": str(1000 + i),
                     "creationTimestamp": "2026-01-01T00:00:00Z",
                     "labels": {"kubernetes.io/hostname": name, "kubernetes.io/os": "linux",
                                "kubernetes.io/arch": "amd64", "node.kubernetes.io/instance-type": "p5.48xlarge",
                                "topology.kubernetes.io/zone": "zone-a", "nvidia.com/gpu.memory": "81920",
                                "nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3", "nvidia.com/gpu.count": "8",
                                "kvsched.io/pool": "h100"},
                     "annotations": {"node.alpha.kubernetes.io/ttl": "0",
                                     "volumes.kubernetes.io/controller-managed-attach-detach": "true"}},
        "spec": {"podCIDR": f"10.{i // 256}.{i % 256}.0/24", "providerID": f"aws:///zone-a/i-{i:017x}"},
        "status": {"capacity": capacity, "allocatable": capacity,
                   "conditions": [{"type": t, "status": "False" if t != "Ready" else "True",
                                   "lastHeartbeatTime": "2026-01-01T00:00:00Z",
                                   "lastTransitionTime": "2026-01-01T00:00:00Z", "reason": f"Kubelet{t}",
                                   "message": f"kubelet reports {t}"}
                                  for t in ("MemoryPressure", "DiskPressure", "PIDPressure", "Ready")],
                   "addresses": [{"type": "InternalIP", "address": f"10.1.{i // 256}.{i % 256}"},
                                 {"type": "Hostname", "address": name}],
                   "nodeInfo": {"kubeletVersion": "v1.36.5", "containerRuntimeVersion": "containerd://2.1.0",
                                "kernelVersion": "6.8.0", "osImage": "Ubuntu 24.04", "architecture": "amd64",
                                "operatingSystem": "linux", "machineID": f"{i:032x}", "systemUUID": f"{i:032x}",
                                "bootID": f"{i:032x}", "kubeProxyVersion": ""}},
    }


def vllm_pod(name: str, uid: str) -> dict[str, Any]:
    """A pod of a vLLM Deployment patched by the controller (about 7 KB of JSON)."""
    env = [{"name": k, "value": v} for k, v in [
        ("HF_HOME", "/models/cache"), ("VLLM_WORKER_MULTIPROC_METHOD", "spawn"), ("VLLM_LOGGING_LEVEL", "INFO"),
        ("HUGGING_FACE_HUB_TOKEN", ""), ("VLLM_USAGE_SOURCE", "production-docker-image"),
        ("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True"), ("NCCL_DEBUG", "WARN"),
        ("OMP_NUM_THREADS", "8"), ("TOKENIZERS_PARALLELISM", "false"), ("VLLM_ATTENTION_BACKEND", "FLASH_ATTN")]]
    env += [{"name": "NVIDIA_VISIBLE_DEVICES", "valueFrom": {"fieldRef": {
        "apiVersion": "v1", "fieldPath": f"metadata.annotations['{GPU_ANNOTATION}']"}}},
        {"name": "KVSCHED_GPU_MEMORY_FRACTION", "valueFrom": {"fieldRef": {
            "apiVersion": "v1", "fieldPath": f"metadata.annotations['{MEMORY_FRACTION_ANNOTATION}']"}}}]
    probe = {"httpGet": {"path": "/health", "port": 8000, "scheme": "HTTP"}, "periodSeconds": 10,
             "timeoutSeconds": 5, "failureThreshold": 3, "successThreshold": 1}
    return {
        "metadata": {
            "name": name, "generateName": f"{POD_MODEL}-7d9f8c6b5-", "namespace": POD_NAMESPACE, "uid": uid,
            "resourceVersion": "123456", "creationTimestamp": "2026-01-01T00:00:00Z",
            "labels": {"app": POD_MODEL, MODEL_LABEL: POD_MODEL, "pod-template-hash": "7d9f8c6b5",
                       "app.kubernetes.io/name": "vllm", "app.kubernetes.io/instance": POD_MODEL},
            "annotations": {"kubectl.kubernetes.io/restartedAt": "2026-01-01T00:00:00Z",
                            "prometheus.io/scrape": "true", "prometheus.io/port": "8000"},
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": f"{POD_MODEL}-7d9f8c6b5",
                                 "uid": "rs-uid", "controller": True, "blockOwnerDeletion": True}],
        },
        "spec": {
            "schedulerName": DEFAULT_SCHEDULER_NAME, "serviceAccountName": "vllm", "terminationGracePeriodSeconds": 60,
            "restartPolicy": "Always", "dnsPolicy": "ClusterFirst", "enableServiceLinks": False,
            "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
                {"matchExpressions": [{"key": "kvsched.io/pool", "operator": "In", "values": ["h100"]}]}]}}},
            "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"},
                            {"key": "node.kubernetes.io/not-ready", "operator": "Exists",
                             "effect": "NoExecute", "tolerationSeconds": 300},
                            {"key": "node.kubernetes.io/unreachable", "operator": "Exists",
                             "effect": "NoExecute", "tolerationSeconds": 300}],
            "containers": [{
                "name": "vllm", "image": "vllm/vllm-openai:v0.6.3", "imagePullPolicy": "IfNotPresent",
                "command": ["python3", "-m", "vllm.entrypoints.openai.api_server"],
                "args": ["--model", "meta-llama/Llama-3.1-8B-Instruct", "--port", "8000",
                         "--gpu-memory-utilization", "$(KVSCHED_GPU_MEMORY_FRACTION)", "--max-model-len", "8192",
                         "--enable-prefix-caching", "--disable-log-requests", "--tensor-parallel-size", "1"],
                "env": env,
                "ports": [{"name": "http", "containerPort": 8000, "protocol": "TCP"}],
                "resources": {"requests": {"cpu": "8", "memory": "64Gi"}, "limits": {"memory": "64Gi"}},
                "volumeMounts": [{"name": "models", "mountPath": "/models"},
                                 {"name": "shm", "mountPath": "/dev/shm"},
                                 {"name": "kube-api-access", "mountPath": "/var/run/secrets/kubernetes.io/"
                                  "serviceaccount", "readOnly": True}],
                "readinessProbe": probe, "livenessProbe": {**probe, "initialDelaySeconds": 120},
                "startupProbe": {**probe, "failureThreshold": 60},
                "terminationMessagePath": "/dev/termination-log", "terminationMessagePolicy": "File",
                "securityContext": {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}},
            }],
            "volumes": [{"name": "models", "persistentVolumeClaim": {"claimName": "model-cache"}},
                        {"name": "shm", "emptyDir": {"medium": "Memory", "sizeLimit": "16Gi"}},
                        {"name": "kube-api-access", "projected": {"defaultMode": 420, "sources": [
                            {"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}},
                            {"configMap": {"name": "kube-root-ca.crt", "items": [
                                {"key": "ca.crt", "path": "ca.crt"}]}},
                            {"downwardAPI": {"items": [{"path": "namespace", "fieldRef": {
                                "apiVersion": "v1", "fieldPath": "metadata.namespace"}}]}}]}}],
            "priority": 0, "preemptionPolicy": "PreemptLowerPriority",
        },
        "status": {"phase": "Pending", "qosClass": "Burstable", "conditions": [
            {"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
             "message": "0/500 nodes are available: 497 no slot of model-7 planned on this node.",
             "lastTransitionTime": "2026-01-01T00:00:00Z"}]},
    }


def build_cache() -> Any:
    """The synthetic cluster in an in-memory Cache (runs in the server process)."""
    from kvsched.extender.cache import Cache

    cache = Cache()
    for i in range(NODES):
        cache.on_node("ADDED", node_object(i))
    held = 0
    for m in range(MODELS):
        replicas = 2 + m % 7
        slots = [{"node": f"gpu-node-{(m * 13 + r * 37) % NODES:03d}", "gpu": (m + r) % GPUS_PER_NODE,
                  "memoryFraction": 0.3} for r in range(replicas)]
        cache.on_model("ADDED", {"metadata": {"name": f"model-{m}", "namespace": POD_NAMESPACE},
                                 "spec": {"modelSize": "16Gi"}, "status": {"slots": slots}})
        for r, slot in enumerate(slots[: replicas // 2]):
            held += 1
            cache.on_pod("ADDED", {"metadata": {"name": f"model-{m}-{r}", "namespace": POD_NAMESPACE,
                                                "uid": f"held-{m}-{r}", "labels": {MODEL_LABEL: f"model-{m}"},
                                                "annotations": {GPU_ANNOTATION: str(slot["gpu"])}},
                                   "spec": {"schedulerName": DEFAULT_SCHEDULER_NAME, "nodeName": slot["node"]},
                                   "status": {"phase": "Running"}})
    for i in range(20_000):  # unrelated pods the watch also delivers
        cache.on_pod("ADDED", {"metadata": {"name": f"web-{i}", "namespace": "web", "uid": f"web-{i}"},
                               "spec": {"schedulerName": "default-scheduler", "nodeName": f"cpu-{i % 300}"},
                               "status": {"phase": "Running"}})
    cache.sync_checks = [lambda: True]
    return cache


class NoopBinder:
    def bind(self, namespace: str, name: str, uid: str, node: str, annotations: dict[str, str] | None) -> None:
        return None


def serve(port: int) -> None:
    """Child process: the real app on uvicorn, as `kvsched extender` runs it."""
    import uvicorn

    from kvsched.extender.app import create_app
    from kvsched.metrics import Metrics
    from kvsched.settings import ExtenderSettings

    settings = ExtenderSettings(host="127.0.0.1", port=port, max_request_bytes=16 * 2**20)
    app = create_app(settings, build_cache(), NoopBinder(), Metrics())
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)


def _post(conn: http.client.HTTPConnection, path: str, body: bytes) -> float:
    started = time.perf_counter()
    conn.request("POST", path, body, {"Content-Type": "application/json"})
    response = conn.getresponse()
    data = response.read()
    elapsed = time.perf_counter() - started
    if response.status != 200:
        raise RuntimeError(f"{path}: HTTP {response.status}: {data[:200]!r}")
    return elapsed


def server_cpu_s(pid: int) -> float:
    """CPU seconds (user + system) the server process has used, from /proc (Linux); 0.0 elsewhere."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return 0.0


def measure(port: int, path: str, bodies: Callable[[int], bytes], requests: int, clients: int,
            server_pid: int) -> dict[str, float]:
    """Latencies (ms), throughput and the server's CPU ms per request of `requests` POSTs per client from
    `clients` threads. CPU per request hardly depends on what else the machine runs; latency does."""
    latencies: list[float] = []
    lock = threading.Lock()

    def worker(offset: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        for i in range(20):  # warm-up
            _post(conn, path, bodies(offset + i))
        mine = [_post(conn, path, bodies(offset + 20 + i)) for i in range(requests)]
        conn.close()
        with lock:
            latencies.extend(mine)

    threads = [threading.Thread(target=worker, args=(c * 1_000_000,)) for c in range(clients)]
    cpu_before = server_cpu_s(server_pid)
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - started
    cpu = server_cpu_s(server_pid) - cpu_before
    latencies.sort()
    return {"server_cpu_ms_per_request": 1000 * cpu / (len(latencies) + 20 * clients),
            "p50_ms": 1000 * latencies[len(latencies) // 2],
            "p99_ms": 1000 * latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))],
            "requests_per_s": len(latencies) / wall, "requests": len(latencies)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=2000, help="requests per client per case (default 2000)")
    parser.add_argument("--repeat", type=int, default=3, help="runs per case; the report gives medians")
    parser.add_argument("--json", type=Path, help="also write the figures as JSON here")
    parser.add_argument("--names-only", action="store_true", help="skip the nodeCacheCapable=false cases (slow)")
    parser.add_argument("--serve", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve:
        serve(args.serve)
        return 0

    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen([sys.executable, "-m", "bench.extender_load", "--serve", str(port)],
                              cwd=Path(__file__).resolve().parents[1])
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
                conn.request("GET", "/readyz")
                if conn.getresponse().status == 200:
                    break
            except OSError:
                pass
            if time.monotonic() > deadline or server.poll() is not None:
                raise RuntimeError("the extender did not start")
            time.sleep(0.2)

        names = [f"gpu-node-{i:03d}" for i in range(NODES)]
        node_objects = [node_object(i) for i in range(NODES)]
        by_names = {"NodeNames": names}
        by_objects = {"Nodes": {"kind": "NodeList", "apiVersion": "v1", "items": node_objects}}

        def args_body(nodes: dict[str, Any]) -> Callable[[int], bytes]:
            cached = json.dumps({"Pod": vllm_pod("model-7-7d9f8c6b5-abcde", "pod-uid"), **nodes}).encode()
            return lambda i: cached

        def bind_body(i: int) -> bytes:
            # An unmanaged pod the server does not know: exercises parsing and the cache lookup, no API call.
            return json.dumps({"PodName": f"web-{i % 20000}", "PodNamespace": "web", "PodUID": f"web-{i % 20000}",
                               "Node": "cpu-1"}).encode()

        filter_names = args_body(by_names)
        filter_objects = args_body(by_objects)
        print(f"load average before: {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
        print(f"request sizes: filter/prioritize with names {len(filter_names(0)) / 1024:.1f} KiB, "
              f"with Node objects {len(filter_objects(0)) / 1024:.0f} KiB, pod alone "
              f"{len(json.dumps(vllm_pod('x', 'y'))) / 1024:.1f} KiB")
        cases = [
            ("filter", "nodeCacheCapable=true", "/filter", filter_names),
            ("prioritize", "nodeCacheCapable=true", "/prioritize", filter_names),
            ("filter", "nodeCacheCapable=false", "/filter", filter_objects),
            ("prioritize", "nodeCacheCapable=false", "/prioritize", filter_objects),
            ("bind", "unmanaged pod, no-op binder", "/bind", bind_body),
        ]
        results = []
        print(f"{'verb':<11}{'mode':<30}{'clients':>8}{'p50 ms':>9}{'p99 ms':>9}{'req/s':>9}{'cpu ms':>8}"
              f"  (median of {args.repeat} runs; cpu: server CPU per request)")
        for verb, mode, path, bodies in cases:
            if args.names_only and mode == "nodeCacheCapable=false":
                continue
            for clients in (1, CONCURRENCY):
                slow = mode == "nodeCacheCapable=false"
                n = max(50, args.requests // (10 if slow else 1) // clients)
                runs = [measure(port, path, bodies, n, clients, server.pid) for _ in range(args.repeat)]
                row = {key: statistics.median(r[key] for r in runs)
                       for key in ("p50_ms", "p99_ms", "requests_per_s", "server_cpu_ms_per_request")}
                row.update(verb=verb, mode=mode, clients=clients, requests_per_run=n * clients)
                results.append(row)
                print(f"{verb:<11}{mode:<30}{clients:>8}{row['p50_ms']:>9.2f}{row['p99_ms']:>9.2f}"
                      f"{row['requests_per_s']:>9.0f}{row['server_cpu_ms_per_request']:>8.2f}")
        if args.json:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps({
                "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                            "load_average": os.getloadavg()},
                "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "results": results}, indent=2))
    finally:
        server.terminate()
        server.wait(10)
    return 0


if __name__ == "__main__":
    sys.exit(main())
