"""Load and memory of `kvsched serve` against the real API server (the e2e control plane). Figures, not tests.

Builds a control plane with tests/e2e/harness (binaries from `make e2e-tools`): N GPU nodes on KWOK (8 GPUs each,
80Gi and 40Gi alternating), M models (a ModelServing each, one replica, its Deployment at 0 replicas: the figure is
kvsched's, not the scheduler's) and P pods bound to the nodes by `nodeName` (KWOK runs them): vLLM-shaped pods of
about 7 KB of JSON before the apiserver adds managedFields and status, in a namespace of their own (other tenants'
workloads: both the controller's and the extender's pod watches hold them). Then runs `kvsched serve` as a process
(once per variant: this tree's code, and with `--baseline DIR` another checkout's, e.g. main's, through PYTHONPATH)
and measures, for each variant and run:
(a) memory: VmRSS of the process and its children (the solver process) sampled every 0.1 s, from start to
    settled (every status written), then during a forced relist of every watch (kube-apiserver restarted), and
    VmHWM (the peak RSS of the process's life; its children's apart);
(b) extender `/filter` latency (a managed pod, every node name; one client process on a keep-alive connection,
    as kube-scheduler's scheduling cycle calls it, or `--clients N`; and the share of answers whose handler took
    <= 10 ms by kvsched's own histogram) while idle, and while a re-plan of every model runs (one node deleted: its replicas move and every model is placed
    again within the time budget), from the change until the plan is done and written;
(c) `/healthz` latency on the metrics port with 2000 idle TCP connections open to that port.
Run: `flock /tmp/kvsched-e2e.lock python -m bench.load [--nodes 63] [--models 1000] [--pods 5000] [--runs 3]
[--baseline /tmp/load-base] [--json PATH]`. The aims (issue 16): peak RSS <= 400 MiB, filter p99 <= 10 ms during
the re-plan.
"""

from __future__ import annotations

import argparse
import http.client
import json
import multiprocessing
import resource
import shutil
import socket
import statistics
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

from kubernetes import client

from bench.extender_load import vllm_pod
from kvsched.api.names import API_VERSION, DEFAULT_SCHEDULER_NAME, MODEL_LABEL

NS = "bench"            # ModelServings and their Deployments
PODS_NS = "bench-pods"  # the other pods
GPUS_PER_NODE = 8
CLIENTS = 1  # kube-scheduler calls the extender from its one scheduling cycle at a time (per profile)
SERVER_FAST_S = 0.01  # a bucket bound of kvsched_extender_request_duration_seconds: the aim's 10 ms
IDLE_CONNECTIONS = 2000


@dataclass
class RunFigures:
    """One run of one variant. Memory in MiB, latencies in ms."""

    variant: str
    start_to_settled_s: float = 0.0
    rss_settled_mib: float = 0.0
    rss_peak_sampled_mib: float = 0.0
    rss_relist_peak_mib: float = 0.0
    rss_after_relist_mib: float = 0.0
    vm_hwm_mib: float = 0.0           # the kvsched process alone
    children_hwm_mib: float = 0.0     # its children (the solver process), summed
    relist_s: float = 0.0
    filter_idle_ms: dict[str, float] = field(default_factory=dict)
    filter_replan_ms: dict[str, float] = field(default_factory=dict)
    # The share (%) of filter answers whose handler took <= 10 ms by the server's own histogram (no client, no
    # queueing in front of the app): what kvsched adds, apart from the machine's scheduling of the client.
    server_filter_idle_fast_pct: float = 0.0
    server_filter_replan_fast_pct: float = 0.0
    replan_s: float = 0.0
    healthz_idle_conns_ms: dict[str, float] = field(default_factory=dict)
    idle_connections_open: int = 0
    rss_idle_conns_peak_mib: float = 0.0


# -- the cluster -------------------------------------------------------------------------------------------------
def bench_pod(i: int, node: str) -> dict[str, Any]:
    """A vLLM-shaped pod of another tenant, bound to `node` (no GPU request, no kvsched label)."""
    pod = vllm_pod(f"web-{i:05d}", "")
    meta = pod["metadata"]
    for key in ("uid", "resourceVersion", "creationTimestamp", "ownerReferences", "generateName"):
        meta.pop(key, None)
    meta["namespace"] = PODS_NS
    meta["labels"] = {k: v for k, v in meta["labels"].items() if k != MODEL_LABEL}
    pod["spec"]["nodeName"] = node
    pod["spec"]["schedulerName"] = "default-scheduler"
    pod["spec"].pop("affinity", None)
    pod["spec"]["volumes"] = [v for v in pod["spec"]["volumes"] if "persistentVolumeClaim" not in v]
    pod["spec"]["volumes"] = [v for v in pod["spec"]["volumes"] if v["name"] != "kube-api-access"]
    pod["spec"]["containers"][0]["volumeMounts"] = [
        m for m in pod["spec"]["containers"][0]["volumeMounts"] if m["name"] == "shm"]
    pod["spec"]["serviceAccountName"] = "default"
    pod["spec"]["tolerations"].append({"operator": "Exists"})
    pod.pop("status", None)
    return pod


def build_cluster(api: client.ApiClient, nodes: int, models: int, pods: int, workers: int = 8) -> list[str]:
    """Create the namespaces, nodes, models and pods (threads: the apiserver takes them in parallel); returns the
    node names."""
    from tests.e2e.harness.kube import gpu_node_manifest

    core, apps, custom = client.CoreV1Api(api), client.AppsV1Api(api), client.CustomObjectsApi(api)
    for ns in (NS, PODS_NS):
        core.create_namespace({"metadata": {"name": ns}})
    names = [f"bench-{n:03d}" for n in range(nodes)]
    # KWOK nodes admit 110 pods by default; room for every bench pod with some to spare.
    per_node = max(110, 2 * pods // max(1, nodes))
    for n, name in enumerate(names):
        core.create_node(gpu_node_manifest(name, gpus=GPUS_PER_NODE, pods=per_node,
                                           gpu_memory_mib=81920 if n % 2 == 0 else 40960))

    def model(m: int) -> None:
        name = f"m{m:04d}"
        apps.create_namespaced_deployment(NS, {
            "metadata": {"name": name}, "spec": {"replicas": 0, "selector": {"matchLabels": {"app": name}},
                                                 "template": {"metadata": {"labels": {"app": name}},
                                                              "spec": {"containers": [
                                                                  {"name": "server", "image": "registry.invalid/x"}]}}}})
        custom.create_namespaced_custom_object("kvsched.io", "v1alpha1", NS, "modelservings", {
            "apiVersion": API_VERSION, "kind": "ModelServing", "metadata": {"name": name},
            "spec": {"workloadRef": {"name": name}, "modelSize": f"{[2, 4, 8, 14][m % 4]}Gi",
                     "requestRate": 0.5 + (m * 37 % 45) / 10, "sloSeconds": [0.5, 1, 2][m % 3], "replicas": 1}})

    def pod(i: int) -> None:
        core.create_namespaced_pod(PODS_NS, bench_pod(i, names[i % len(names)]))

    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(model, range(models)))
        list(pool.map(pod, range(pods)))
    return names


def fields_v1(value: Any) -> Any:
    """The managedFields skeleton the apiserver records for `value` ("f:" per key, "k:" per named list entry)."""
    if isinstance(value, dict):
        return {f"f:{k}": fields_v1(v) for k, v in value.items()}
    if isinstance(value, list) and value and all(isinstance(v, dict) and "name" in v for v in value):
        return {f'k:{{"name":"{v["name"]}"}}': {".": {}, **fields_v1(v)} for v in value}
    return {}


def served_pod(i: int, node: str) -> dict[str, Any]:
    """`bench_pod` as the apiserver serves it once KWOK runs it: uid, managedFields of its writers, status."""
    pod = bench_pod(i, node)
    ts = "2026-01-01T00:00:00Z"
    status = {"phase": "Running", "hostIP": "10.0.0.1", "podIP": f"10.1.{i // 256 % 256}.{i % 256}",
              "podIPs": [{"ip": f"10.1.{i // 256 % 256}.{i % 256}"}], "startTime": ts, "qosClass": "Burstable",
              "conditions": [{"type": t, "status": "True", "lastProbeTime": None, "lastTransitionTime": ts}
                             for t in ("PodReadyToStartContainers", "Initialized", "Ready", "ContainersReady",
                                       "PodScheduled")],
              "containerStatuses": [{"name": "vllm", "ready": True, "restartCount": 0, "started": True,
                                     "image": "vllm/vllm-openai:v0.6.3", "imageID": "sha256:" + "0" * 64,
                                     "containerID": "containerd://" + "1" * 64,
                                     "state": {"running": {"startedAt": ts}}}]}
    pod["metadata"].update({"uid": f"{i:08d}-0000-0000-0000-000000000000", "resourceVersion": str(1000 + i),
                            "creationTimestamp": ts, "managedFields": [
                                {"manager": "kubectl-create", "operation": "Update", "apiVersion": "v1", "time": ts,
                                 "fieldsType": "FieldsV1", "fieldsV1": fields_v1({"metadata": pod["metadata"],
                                                                                  "spec": pod["spec"]})},
                                {"manager": "kwok", "operation": "Update", "apiVersion": "v1", "time": ts,
                                 "fieldsType": "FieldsV1", "fieldsV1": fields_v1({"status": status}),
                                 "subresource": "status"}]})
    pod["status"] = status
    return pod


def offline_store_mib(pods: int, nodes: int) -> dict[str, float]:
    """Python heap (tracemalloc) of what the informers hold for `pods` pods as served (`served_pod`, parsed from
    JSON as the informer parses it): whole in two stores (`kvsched serve` before issue 16: the controller's and the
    extender's) and trimmed in one. No control plane."""
    import tracemalloc

    from kvsched.api.trim import trim_pod

    texts = [json.dumps(served_pod(i, f"bench-{i % nodes:03d}")) for i in range(pods)]
    out: dict[str, float] = {"pods": pods, "json_kib_per_pod": sum(map(len, texts)) / len(texts) / 1024}
    for label, build in (("whole_one_store", lambda t: json.loads(t)),
                         ("trimmed_one_store", lambda t: trim_pod(json.loads(t)))):
        tracemalloc.start()
        store = {i: build(t) for i, t in enumerate(texts)}
        out[label + "_mib"] = tracemalloc.get_traced_memory()[0] / 2**20
        tracemalloc.stop()
        del store
    out["before_two_stores_mib"] = 2 * out["whole_one_store_mib"]
    out["after_shared_trimmed_mib"] = out["trimmed_one_store_mib"]
    return out


def pod_json_bytes(api: client.ApiClient) -> float:
    """Mean JSON size of the bench pods as the apiserver serves them (managedFields and status included)."""
    raw = client.CoreV1Api(api).list_namespaced_pod(PODS_NS, limit=50, _preload_content=False)
    items = json.loads(raw.data)["items"]
    return sum(len(json.dumps(i)) for i in items) / max(1, len(items))


# -- the process -------------------------------------------------------------------------------------------------
def proc_kib(pid: int, key: str) -> float:
    """A `VmRSS`-like line of /proc/<pid>/status, KiB (0 when the process is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return float(line.split()[1])
    except OSError:
        pass
    return 0.0


def descendants(pid: int) -> list[int]:
    """Child processes of `pid`, recursively (`kvsched serve`'s solver process), from /proc."""
    out: list[int] = []
    try:
        tasks = [t.name for t in Path(f"/proc/{pid}/task").iterdir()]
    except OSError:
        return out
    for task in tasks:  # each thread's children (the solver process is started by the controller's thread)
        try:
            children = Path(f"/proc/{pid}/task/{task}/children").read_text().split()
        except OSError:
            continue
        for child in map(int, children):
            out += [child, *descendants(child)]
    return out


def tree_kib(pid: int, key: str) -> float:
    """`key` (VmRSS, VmHWM) summed over `pid` and its descendants, KiB."""
    return sum(proc_kib(p, key) for p in [pid, *descendants(pid)])


class RssSampler:
    """VmRSS of a process and its children (summed) every `interval_s` on a thread; `peak_between` is the
    largest sample in a window."""

    def __init__(self, pid: int, interval_s: float = 0.1) -> None:
        self.pid, self.interval_s = pid, interval_s
        self.samples: list[tuple[float, float]] = []  # (monotonic time, MiB)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> RssSampler:
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.samples.append((time.monotonic(), tree_kib(self.pid, "VmRSS") / 1024))

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(2)

    def peak_between(self, start: float, end: float = float("inf")) -> float:
        return max((mib for t, mib in self.samples if start <= t <= end), default=0.0)

    def now(self) -> float:
        return tree_kib(self.pid, "VmRSS") / 1024


def percentiles(latencies_s: Sequence[float]) -> dict[str, float]:
    if not latencies_s:
        return {"n": 0}
    ordered = sorted(latencies_s)

    def at(q: float) -> float:
        return 1000 * ordered[min(len(ordered) - 1, int(q * len(ordered)))]

    return {"n": len(ordered), "p50": at(0.5), "p99": at(0.99), "max": 1000 * ordered[-1]}


def _filter_client(port: int, body: bytes, stop: Any, out: Any) -> None:
    """One client process: post /filter on one keep-alive connection until `stop` is set (putting None on `out`
    after its first answer), then put ([(monotonic time, latency s)], failures) on `out`. A process of its own, so the benchmark's other threads
    (metrics scrapes, watches) and the other clients do not add their GIL waits to the latencies it measures."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    results: list[tuple[float, float]] = []
    failures = 0
    while not stop.is_set():
        started = time.perf_counter()
        try:
            conn.request("POST", "/filter", body, {"Content-Type": "application/json"})
            response = conn.getresponse()
            response.read()
            ok = response.status == 200
        except (OSError, http.client.HTTPException):
            ok = False
            conn.close()
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        elapsed = time.perf_counter() - started
        if ok:
            if not results:
                out.put(None)
            results.append((time.monotonic(), elapsed))
        else:
            failures += 1
            time.sleep(0.05)
    out.put((results, failures))


class FilterLoad:
    """`clients` client processes posting /filter for one managed pod with every node name, until stopped; then
    `results` holds (monotonic time, latency s) of each answer (CLOCK_MONOTONIC is the same in every process).
    `start` returns once each client has had an answer."""

    def __init__(self, port: int, body: bytes, clients: int = CLIENTS) -> None:
        context = multiprocessing.get_context("spawn")  # no fork of this threaded process
        self.results: list[tuple[float, float]] = []
        self.failures = 0
        self._stop = context.Event()
        self._out: Any = context.Queue()
        self._procs = [context.Process(target=_filter_client, args=(port, body, self._stop, self._out), daemon=True)
                       for _ in range(clients)]

    def start(self, timeout_s: float = 120.0) -> FilterLoad:
        for p in self._procs:
            p.start()
        for _ in self._procs:
            if self._out.get(timeout=timeout_s) is not None:
                raise RuntimeError("a filter client stopped before its first answer")
        return self

    def stop(self) -> None:
        self._stop.set()
        for _ in self._procs:
            results, failures = self._out.get(timeout=60)
            self.results.extend(results)
            self.failures += failures
        for p in self._procs:
            p.join(10)

    def between(self, start: float, end: float) -> list[float]:
        """Latencies (s) of answers received between `start` and `end` (monotonic); after `stop`."""
        return [s for t, s in self.results if start <= t <= end]


def filter_body(node_names: list[str]) -> bytes:
    pod = vllm_pod("m0007-abc-xyz12", "bench-pod-uid")
    pod["metadata"]["namespace"] = NS
    pod["metadata"]["labels"] = {"app": "m0007", MODEL_LABEL: "m0007"}
    pod["spec"]["schedulerName"] = DEFAULT_SCHEDULER_NAME
    return json.dumps({"Pod": pod, "NodeNames": node_names}).encode()


def healthz_with_idle_connections(port: int, count: int, requests: int = 100, open_s: float = 20.0,
                                  workers: int = 32) -> tuple[dict[str, float], int]:
    """Open up to `count` idle TCP connections to `port` from `workers` threads (for at most `open_s`), and
    meanwhile, once half are open or `open_s / 2` passed, time `requests` sequential GET /healthz on new
    connections (as a liveness probe makes them); returns the latencies and how many idle connections were open
    when the timing began. The server closes a connection idle for its idle timeout, so "open" counts what the
    client holds."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, count + 1024)), hard))
    idle: list[socket.socket] = []
    lock, stop = threading.Lock(), threading.Event()
    deadline = time.monotonic() + open_s

    def opener() -> None:
        while not stop.is_set() and time.monotonic() < deadline:
            with lock:
                if len(idle) >= count:
                    return
            try:
                s = socket.create_connection(("127.0.0.1", port), timeout=3)
            except OSError:
                continue
            with lock:
                idle.append(s)

    threads = [threading.Thread(target=opener, daemon=True) for _ in range(workers)]
    for t in threads:
        t.start()
    try:
        while time.monotonic() < deadline - open_s / 2 and len(idle) < count // 2:
            time.sleep(0.1)
        opened = len(idle)
        latencies = []
        for _ in range(requests):
            started = time.perf_counter()
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            try:
                conn.request("GET", "/healthz")
                conn.getresponse().read()
            finally:
                conn.close()
            latencies.append(time.perf_counter() - started)
        return percentiles(latencies), opened
    finally:
        stop.set()
        for t in threads:
            t.join(5)
        for s in idle:
            s.close()


def metric(metrics: dict[str, float], name: str) -> float:
    return sum(v for k, v in metrics.items() if k == name or k.startswith(name + "{"))


def server_filter_counts(metrics: dict[str, float]) -> tuple[float, float]:
    """(filter answers, those whose handler took <= SERVER_FAST_S) so far, from the extender's histogram."""
    name = "kvsched_extender_request_duration_seconds"
    fast = next((v for k, v in metrics.items() if k.startswith(name + "_bucket{") and 'verb="filter"' in k
                 and f'le="{SERVER_FAST_S}"' in k), 0.0)
    total = next((v for k, v in metrics.items() if k.startswith(name + "_count{") and 'verb="filter"' in k), 0.0)
    return total, fast


def fast_pct(before: tuple[float, float], after: tuple[float, float]) -> float:
    """The share (%) of the answers between two `server_filter_counts` that were fast."""
    total = after[0] - before[0]
    return 100.0 * (after[1] - before[1]) / total if total > 0 else 0.0


def wait(predicate: Callable[[], bool], timeout_s: float, what: str, interval_s: float = 0.5) -> float:
    start = time.monotonic()
    while time.monotonic() - start < timeout_s:
        if predicate():
            return time.monotonic() - start
        time.sleep(interval_s)
    raise TimeoutError(f"{what}: not after {timeout_s:.0f}s")


def quiet_rounds(proc: Any, quiet_s: float) -> float:
    """Wait until the controller made no round for `quiet_s`; returns when its last round was seen."""
    rounds, since = metric(proc.metrics(), "kvsched_reconcile_rounds_total"), time.monotonic()
    while time.monotonic() - since < quiet_s:
        time.sleep(0.25)
        now = metric(proc.metrics(), "kvsched_reconcile_rounds_total")
        if now != rounds:
            rounds, since = now, time.monotonic()
    return since


def placed(custom: client.CustomObjectsApi) -> int:
    items = custom.list_namespaced_custom_object("kvsched.io", "v1alpha1", NS, "modelservings")["items"]
    return sum(1 for ms in items if (ms.get("status") or {}).get("placedReplicas") == 1)


def one_run(plane: Any, api: client.ApiClient, variant: str, pythonpath: str | None, node_names: list[str],
            models: int, time_budget_s: float, deleted: list[str], partial: list[RunFigures],
            clients: int = CLIENTS) -> RunFigures:
    from bench.controller_api import until_quiet
    from tests.e2e.harness.controller import KvschedProcess

    figures = RunFigures(variant)
    partial.append(figures)  # filled in as it goes: a run that fails half way still reports what it measured
    custom, core = client.CustomObjectsApi(api), client.CoreV1Api(api)
    name = f"load-{variant}-{int(time.time())}"
    # GPU holders off: slots by index (holder pods would add one pod per GPU and need the chart's namespace).
    proc = KvschedProcess(plane, plane.kubeconfig, [
        "--leader-election=false", f"--namespace={NS}", "--gpu-holders=false",
        f"--time-budget-seconds={time_budget_s}"], name)
    if pythonpath:
        proc.component.env = {"PYTHONPATH": pythonpath}
    started = time.monotonic()
    proc.start(timeout_s=300)
    assert proc.component.process is not None
    pid = proc.component.process.pid
    sampler = RssSampler(pid).start()
    try:
        # Settled: a round made, every model placed and the loop idle (no round for 3 s).
        wait(lambda: metric(proc.metrics(), "kvsched_reconcile_rounds_total") >= 1, 600, "a first round", 0.5)
        wait(lambda: placed(custom) >= models, 600, "every status placed", 2.0)
        until_quiet(api, 5.0)  # every status and template write of the first plans done
        quiet_rounds(proc, 3.0)
        figures.start_to_settled_s = time.monotonic() - started
        figures.rss_settled_mib = sampler.now()
        figures.rss_peak_sampled_mib = sampler.peak_between(started)

        # (b) filter latency, idle then during a re-plan of every model.
        load = FilterLoad(proc.extender_port, filter_body([n for n in node_names if n not in deleted]),
                          clients).start()
        idle_server = server_filter_counts(proc.metrics())
        time.sleep(5)
        idle_end = time.monotonic()
        replan_server = server_filter_counts(proc.metrics())
        figures.server_filter_idle_fast_pct = fast_pct(idle_server, replan_server)
        plans = metric(proc.metrics(), "kvsched_placement_duration_seconds_count")
        victim = next(n for n in reversed(node_names) if n not in deleted)
        deleted.append(victim)
        changed = time.monotonic()
        core.delete_node(victim)
        wait(lambda: metric(proc.metrics(), "kvsched_placement_duration_seconds_count") > plans, 300,
             "the re-plan", 0.2)
        until_quiet(api, 3.0, interval_s=1.0)  # ... and its writes (a list of 2000 objects: not 5 times a second)
        done = quiet_rounds(proc, 2.0)
        figures.replan_s = done - changed
        figures.server_filter_replan_fast_pct = fast_pct(replan_server, server_filter_counts(proc.metrics()))
        load.stop()
        figures.filter_idle_ms = percentiles(load.between(idle_end - 4, idle_end))
        figures.filter_replan_ms = percentiles(load.between(changed, done))
        figures.filter_replan_ms["failures"] = load.failures

        # (a) a forced relist: the apiserver restarts, every watch fails and lists again.
        relists = metric(proc.metrics(), "kvsched_watch_relists_total")
        mark = time.monotonic()
        plane.restart_apiserver(down_s=1.0)
        # A list after the first counts once it has come back; wait for pods, nodes and ModelServings at least,
        # then until no list came for 5 s (the backoff spreads them over seconds).
        wait(lambda: metric(proc.metrics(), "kvsched_watch_relists_total") >= relists + 3, 300, "relisted", 0.5)
        last, since = metric(proc.metrics(), "kvsched_watch_relists_total"), time.monotonic()
        while time.monotonic() - since < 5:
            time.sleep(0.5)
            now = metric(proc.metrics(), "kvsched_watch_relists_total")
            if now != last:
                last, since = now, time.monotonic()
        figures.relist_s = since - mark
        figures.rss_relist_peak_mib = sampler.peak_between(mark)
        figures.rss_after_relist_mib = sampler.now()
        figures.vm_hwm_mib = proc_kib(pid, "VmHWM") / 1024
        figures.children_hwm_mib = sum(proc_kib(c, "VmHWM") for c in descendants(pid)) / 1024

        # (c) /healthz with idle connections on the metrics port (after the memory figures: each connection holds
        # a thread in the server until its idle timeout).
        mark = time.monotonic()
        figures.healthz_idle_conns_ms, figures.idle_connections_open = healthz_with_idle_connections(
            proc.metrics_port, IDLE_CONNECTIONS)
        figures.rss_idle_conns_peak_mib = sampler.peak_between(mark)
    finally:
        sampler.stop()
        proc.stop()
    return figures


def median_figures(runs: list[RunFigures]) -> dict[str, Any]:
    """The median of each figure over runs."""
    out: dict[str, Any] = {"variant": runs[0].variant, "runs": len(runs)}
    for key, value in asdict(runs[0]).items():
        if isinstance(value, float) or isinstance(value, int):
            out[key] = statistics.median(getattr(r, key) for r in runs)
        elif isinstance(value, dict):
            out[key] = {k: statistics.median(getattr(r, key).get(k, 0.0) for r in runs) for k in value}
    return out


def format_run(f: dict[str, Any]) -> str:
    def lat(d: dict[str, float]) -> str:
        return f"p50 {d.get('p50', 0):.1f} ms, p99 {d.get('p99', 0):.1f} ms, max {d.get('max', 0):.1f} ms " \
               f"(n={d.get('n', 0):.0f})"

    return "\n".join([
        f"[{f['variant']}] median of {f['runs']} run(s)",
        f"  start -> settled {f['start_to_settled_s']:.1f} s; RSS settled {f['rss_settled_mib']:.0f} MiB, "
        f"peak sampled to then {f['rss_peak_sampled_mib']:.0f} MiB",
        f"  forced relist (apiserver restart, {f['relist_s']:.0f} s): RSS peak {f['rss_relist_peak_mib']:.0f} MiB, "
        f"after {f['rss_after_relist_mib']:.0f} MiB; VmHWM {f['vm_hwm_mib']:.0f} MiB (+ children's "
        f"{f['children_hwm_mib']:.0f} MiB)",
        f"  filter idle: {lat(f['filter_idle_ms'])}; handler <= 10 ms: {f['server_filter_idle_fast_pct']:.2f}%",
        f"  filter during the re-plan ({f['replan_s']:.1f} s): {lat(f['filter_replan_ms'])}; handler <= 10 ms: "
        f"{f['server_filter_replan_fast_pct']:.2f}%",
        f"  /healthz with {f['idle_connections_open']:.0f} idle connections: {lat(f['healthz_idle_conns_ms'])}; "
        f"RSS peak meanwhile {f['rss_idle_conns_peak_mib']:.0f} MiB",
    ])


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--nodes", type=int, default=63, help="KWOK nodes of 8 GPUs (63: 504 GPUs)")
    ap.add_argument("--models", type=int, default=1000)
    ap.add_argument("--pods", type=int, default=5000)
    ap.add_argument("--runs", type=int, default=1, help="runs of each variant (alternating)")
    ap.add_argument("--clients", type=int, default=CLIENTS,
                    help="filter client processes at once (default 1: kube-scheduler filters one pod at a time)")
    ap.add_argument("--time-budget-seconds", type=float, default=5.0, help="kvsched's search budget per re-plan")
    ap.add_argument("--baseline", type=Path, default=None, metavar="DIR",
                    help="another checkout (e.g. main's) run as the variant 'baseline' through PYTHONPATH")
    ap.add_argument("--json", type=Path, default=None, metavar="PATH")
    ap.add_argument("--keep", action="store_true", help="keep the control plane's directory (logs) at the end")
    ap.add_argument("--offline", action="store_true",
                    help="only the informers' pod stores in this process (tracemalloc), no control plane")
    args = ap.parse_args(argv)
    if args.offline:
        figures = offline_store_mib(args.pods, args.nodes)
        print(" ".join(f"{k}={v:.1f}" for k, v in figures.items()))
        return 0

    from tests.e2e.harness.cluster import ControlPlane
    from tests.e2e.harness.kube import api_client, apply_crds, project_crd_paths
    from tests.e2e.harness.tools import locate_tools, missing_tools

    tools = locate_tools()
    if missing_tools(tools):
        print(f"e2e binaries missing: {missing_tools(tools)} (run make e2e-tools)")
        return 0
    plane = ControlPlane(workdir=Path(tempfile.mkdtemp(prefix="kvsched-load-")), tools=tools)
    variants: list[tuple[str, str | None]] = [("this-tree", None)]
    if args.baseline is not None:
        variants.insert(0, ("baseline", str(args.baseline.resolve())))
    runs: dict[str, list[RunFigures]] = {v: [] for v, _ in variants}
    try:
        plane.start()
        assert plane.kubeconfig is not None
        api = api_client(plane.kubeconfig)
        apply_crds(api, project_crd_paths())
        began = time.monotonic()
        node_names = build_cluster(api, args.nodes, args.models, args.pods)
        print(f"{args.nodes} nodes ({args.nodes * GPUS_PER_NODE} GPUs), {args.models} models, {args.pods} pods "
              f"created in {time.monotonic() - began:.0f} s; a pod is {pod_json_bytes(api) / 1024:.1f} KiB of "
              f"JSON as served", flush=True)
        deleted: list[str] = []
        for run in range(args.runs):
            for variant, path in variants:
                partial: list[RunFigures] = []
                try:
                    one_run(plane, api, variant, path, node_names, args.models, args.time_budget_seconds,
                            deleted, partial, args.clients)
                except Exception as e:  # report what was measured, go on with the next variant
                    print(f"run {run + 1} {variant} failed: {type(e).__name__}: {e}", flush=True)
                runs[variant].extend(partial)
                print(f"run {run + 1} {variant}: {json.dumps(asdict(partial[0])) if partial else '-'}",
                      flush=True)
    finally:
        plane.stop()
        if not args.keep:
            shutil.rmtree(plane.workdir, ignore_errors=True)
    summary = [median_figures(r) for r in runs.values() if r]
    for s in summary:
        print(format_run(s))
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "summary": summary,
                                         "runs": {k: [asdict(r) for r in v] for k, v in runs.items()}}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
