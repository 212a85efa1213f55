"""Node loss at 128 GPUs to all Ready against the real API server: one step at a time vs waves (issue 17, part 3).

Builds the e2e control plane once (tests/e2e/harness, binaries from `make e2e-tools`, warm cache
~/.cache/kvsched-e2e): `--nodes` KWOK nodes of 8 GPUs of 80Gi (16: 128 GPUs). Then for each run and each variant
(a disruption budget, `--budgets 1,4,8`: `C` is `--max-restarting=C` with `--max-restarting-per-node` from
`--per-node`, `C:N` sets both; `1` is the old rule, one step at a time):

1. a fresh namespace with the world: `--models` annotated Deployments (a seeded draw, `world`: 8-40 GiB, 1-10
   req/s, SLO 1-5 s, one in four with 2 replicas), whose pods take `--start-delay` from bind to Ready (the e2e
   KWOK stage, `e2e.kvsched.io/start-delay`: the engine's weight loading);
2. `kvsched serve` with that budget (GPU holders off, as bench/load.py: holders would add a pod per GPU; the moves
   here go to GPUs already in use) and a kube-scheduler with the chart's configuration calling its extender; both
   start after the Deployments exist, so the first plan sees the whole world at once and every run starts from
   the same plan (its max KVPR and the lost node's replicas are reported per run to show it);
3. once every wanted replica is Ready on its slot: the node with the most replicas is deleted, its pods with it
   (`--pod-gc bench`, the default: deleted with no grace, as PodGC deletes the pods of a deleted node once its
   40 s quarantine is over; PodGC's timing, 4-60 s in trials, would otherwise decide when the lost replicas come
   back; `--pod-gc cluster` leaves them to PodGC), and from that moment it measures, polling the pods,
   ModelServings, Deployments and kvsched's /metrics every 0.5 s:
   `replan_s` (every status moved off the lost node), `ready_s` (every model has its wanted replicas Ready off
   the lost node), `settled_s` (the plan carried out: every live pod Ready on one of its model's slots, no pod
   pending or stopping off the lost node, no surge open); the steps kvsched decided (`kvsched_replan_steps_total`
   move and resize), its evictions (`kvsched_migrations_total` by reason) and make-before-break surges (distinct
   `kvsched.io/surge` records seen); the peak of `kvsched_restarting_pods`, and from the pods themselves the
   most starting at once (bound, not Ready), on one node and on one GPU, and the most wanted replicas not Ready
   at once (`max_down`);
4. kvsched and the scheduler stop, the namespace is deleted and the node created again; the next variant waits
   until the namespace's pods are gone.

Variants alternate within a run, so a slow minute of the machine (2 cores shared) hits all of them; `--runs N`
reports medians. The time scales with the start delay: one at a time it is about steps x (the start-ups a step
waits for x delay + ~1 s of eviction, scheduling and the controller's round); after the default world's node loss
a step is a restart in place and then the lost replica on the memory it frees, 2 start-ups (10.8 s a step with
5 s). A budget of C divides that by at most C (docs/controller.md, "Figures", has the measured ratios).
Run it under the e2e lock (it starts a control plane), from the worktree root:

    flock /tmp/kvsched-e2e.lock .venv/bin/python -m bench.waves --budgets 1,4,8 [--runs 1] [--json PATH]

Figures, not tests: nothing asserts; exit code 0 unless no run finished. Pure parts are tested in tests/bench.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bench.results import figure, jsonable, table
from kvsched.api.names import (
    DEFAULT_SCHEDULER_NAME, GPU_ANNOTATION, MODEL_LABEL, RATE_ANNOTATION, SIZE_ANNOTATION, SLO_ANNOTATION,
    SURGE_ANNOTATION,
)

GPUS_PER_NODE = 8
GPU_MEMORY_MIB = 81920
POLL_S = 0.5
GROUP, VERSION, PLURAL = "kvsched.io", "v1alpha1", "modelservings"
# The e2e KWOK stage's annotation (tests/e2e/harness/cluster.py START_DELAY_ANNOTATION; repeated here so the
# pure parts import no harness).
START_DELAY_ANNOTATION = "e2e.kvsched.io/start-delay"
_GO_DURATION = re.compile(r"(\d+(\.\d+)?(ms|s|m|h))+")


# -- what is run -------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Variant:
    """A disruption budget: `kvsched serve --max-restarting=C --max-restarting-per-node=N` (both >= 1)."""

    max_restarting: int
    max_restarting_per_node: int

    @property
    def name(self) -> str:
        return f"{self.max_restarting}/{self.max_restarting_per_node}"

    def args(self) -> list[str]:
        return [f"--max-restarting={self.max_restarting}",
                f"--max-restarting-per-node={self.max_restarting_per_node}"]


def parse_variants(text: str, per_node: int = 1) -> list[Variant]:
    """`"1,4,8,8:2"` -> budgets: `C` is C cluster-wide and `per_node` per node, `C:N` both. Raises ValueError
    naming the item that is not a positive integer (or pair), and on an empty list or a repeated budget."""
    if per_node < 1:
        raise ValueError(f"--per-node: {per_node} is not a positive integer")
    out: list[Variant] = []
    for item in (i.strip() for i in text.split(",")):
        parts = item.split(":")
        if not item or len(parts) > 2 or not all(p.isdigit() and int(p) >= 1 for p in parts):
            raise ValueError(f"--budgets: {item!r} is not C or C:N with positive integers (e.g. 4 or 8:2)")
        variant = Variant(int(parts[0]), int(parts[1]) if len(parts) == 2 else per_node)
        if variant in out:
            raise ValueError(f"--budgets: {item!r} is listed twice ({variant.name})")
        out.append(variant)
    return out


def check_duration(text: str) -> str:
    """`text` when it is a Go duration such as 5s or 1m30s (the KWOK stage parses it); ValueError otherwise."""
    if not _GO_DURATION.fullmatch(text):
        raise ValueError(f"--start-delay: {text!r} is not a Go duration such as 5s or 1m30s")
    return text


@dataclass(frozen=True)
class ModelSpec:
    """One model of the world: weights GiB, rate req/s, SLO s, replicas."""

    name: str
    size_gib: float
    rate_rps: float
    slo_s: float
    replicas: int


def world(models: int, seed: int = 0) -> list[ModelSpec]:
    """A seeded world: sizes uniform in 8-40 GiB, rates 1-10 req/s, SLOs 1-5 s, one model in four with 2
    replicas. 160 models (about 200 replicas) fill 128 GPUs of 80Gi to about 60% of their memory in weights."""
    rng = np.random.default_rng(seed)
    out = []
    for j in range(models):
        replicas = 2 if rng.random() < 0.25 else 1
        out.append(ModelSpec(f"m{j:03d}", round(float(rng.uniform(8.0, 40.0)), 1),
                             round(float(rng.uniform(1.0, 10.0)), 1), round(float(rng.uniform(1.0, 5.0)), 1),
                             replicas))
    return out


def deployment(spec: ModelSpec, start_delay: str) -> dict[str, Any]:
    """The annotated Deployment of `spec` (kvsched adopts it and keeps its ModelServing); its pods go to the
    kvsched scheduler and take `start_delay` from bind to Ready."""
    return {
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": spec.name, "annotations": {
            SIZE_ANNOTATION: f"{spec.size_gib}Gi", RATE_ANNOTATION: str(spec.rate_rps),
            SLO_ANNOTATION: str(spec.slo_s)}},
        "spec": {
            "replicas": spec.replicas,
            "selector": {"matchLabels": {"app": spec.name}},
            "template": {
                "metadata": {"labels": {"app": spec.name}, "annotations": {START_DELAY_ANNOTATION: start_delay}},
                "spec": {"schedulerName": DEFAULT_SCHEDULER_NAME, "containers": [
                    {"name": "server", "image": "registry.invalid/kvsched/fake:latest"}]}},
        },
    }


# -- what is seen --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class PodView:
    """What the bench reads of a pod: its model (label), node and GPU (None: not bound), Ready, stopping."""

    name: str
    model: str
    node: str | None
    gpu: int | None
    ready: bool
    deleting: bool


def pod_view(pod: Mapping[str, Any]) -> PodView:
    """A pod as the API serves it (JSON) -> PodView (model "" when it carries no model label)."""
    meta, spec, status = pod.get("metadata") or {}, pod.get("spec") or {}, pod.get("status") or {}
    gpu = (meta.get("annotations") or {}).get(GPU_ANNOTATION)
    return PodView(
        name=meta.get("name", ""), model=(meta.get("labels") or {}).get(MODEL_LABEL, ""),
        node=spec.get("nodeName") or None, gpu=int(gpu) if gpu is not None and str(gpu).isdigit() else None,
        ready=any(c.get("type") == "Ready" and c.get("status") == "True" for c in status.get("conditions") or []),
        deleting=bool(meta.get("deletionTimestamp")))


@dataclass(frozen=True)
class Snapshot:
    """One look at the pods of the world, the lost node's left out. `down`: wanted replicas not Ready (per model
    wanted less Ready, summed); `starting`: bound, not Ready, not stopping; `restarting`: per model the larger of
    its pods stopping and its pods starting or pending, summed (what kvsched's budget counts)."""

    ready: Mapping[str, int]
    down: int
    starting: int
    starting_per_node: int
    starting_per_gpu: int
    pending: int
    stopping: int
    restarting: int


def snapshot(pods: Iterable[PodView], wanted: Mapping[str, int], lost: str | None = None) -> Snapshot:
    """Count `pods` (those on node `lost` left out) against `wanted` (model -> replicas). O(pods)."""
    ready: dict[str, int] = defaultdict(int)
    stopping: dict[str, int] = defaultdict(int)
    coming: dict[str, int] = defaultdict(int)
    per_node: dict[str, int] = defaultdict(int)
    per_gpu: dict[tuple[str, int], int] = defaultdict(int)
    starting = pending = 0
    for p in pods:
        if p.node is not None and p.node == lost:
            continue
        if p.deleting:
            stopping[p.model] += 1
        elif p.node is None:
            pending += 1
            coming[p.model] += 1
        elif p.ready:
            ready[p.model] += 1
        else:
            starting += 1
            coming[p.model] += 1
            per_node[p.node] += 1
            if p.gpu is not None:
                per_gpu[(p.node, p.gpu)] += 1
    return Snapshot(
        ready=dict(ready), down=sum(max(0, n - ready.get(m, 0)) for m, n in wanted.items()), starting=starting,
        starting_per_node=max(per_node.values(), default=0), starting_per_gpu=max(per_gpu.values(), default=0),
        pending=pending, stopping=sum(stopping.values()),
        restarting=sum(max(stopping[m], coming[m]) for m in set(stopping) | set(coming)))


def on_slots(pods: Iterable[PodView], slots: Mapping[str, set[tuple[str, int]]], wanted: Mapping[str, int],
             lost: str | None = None) -> bool:
    """The plan carried out: off node `lost`, no pod pending or stopping, and each model's live pods are exactly
    its wanted replicas, Ready, each on one of its slots (model -> {(node, gpu)}). O(pods)."""
    held: dict[str, list[tuple[str, int]]] = defaultdict(list)
    for p in pods:
        if p.node is not None and p.node == lost:
            continue
        if p.deleting or p.node is None or p.gpu is None or not p.ready:
            return False
        held[p.model].append((p.node, p.gpu))
    return all(len(held.get(m, [])) == n and set(held.get(m, [])) <= slots.get(m, set()) for m, n in wanted.items())


def metric(metrics: Mapping[str, float], name: str, **labels: str) -> float:
    """The sum of `name`'s samples whose labels include `labels` (from read_metrics' `name{labels}` keys)."""
    total = 0.0
    for key, value in metrics.items():
        base, _, rest = key.partition("{")
        if base != name:
            continue
        if all(f'{k}="{v}"' in rest for k, v in labels.items()):
            total += value
    return total


# -- figures -------------------------------------------------------------------------------------------------------
@dataclass
class RunFigures:
    """One node loss under one budget. Times in s from the node's deletion (None: not reached in time)."""

    variant: str
    run: int
    namespace: str = ""
    replicas: int = 0
    build_s: float | None = None           # Deployments created -> every replica Ready on its slot
    start_max_kvpr: float | None = None    # the world's plan before the loss (the same in every run)
    lost_node: str = ""
    lost_replicas: int = 0
    replan_s: float | None = None
    ready_s: float | None = None
    settled_s: float | None = None
    end_max_kvpr: float | None = None
    moves: int = 0                         # kvsched_replan_steps_total{kind="move"} since the loss
    resizes: int = 0                       # ... {kind="resize"}
    evictions: dict[str, int] = field(default_factory=dict)  # kvsched_migrations_total by reason
    surges: int = 0                        # make-before-break moves (distinct surge records seen)
    peak_restarting_metric: int = 0        # max kvsched_restarting_pods seen
    peak_restarting: int = 0               # the same counted from the pods
    peak_starting: int = 0
    peak_starting_per_node: int = 0
    peak_starting_per_gpu: int = 0
    max_down: int = 0                      # most wanted replicas not Ready at once
    error: str = ""


FIGURES = ("replan_s", "ready_s", "settled_s", "moves", "resizes", "surges", "peak_restarting_metric",
           "peak_restarting", "peak_starting", "peak_starting_per_node", "peak_starting_per_gpu", "max_down",
           "lost_replicas", "build_s")


def _median(values: Sequence[float | None]) -> float | None:
    """The median of the values reached; None when a run did not reach it (a timeout is not a time)."""
    if not values or any(v is None for v in values):
        return None
    return float(statistics.median(v for v in values if v is not None))


def summarise(runs: Sequence[RunFigures]) -> list[dict[str, Any]]:
    """Per variant, in the order first seen: the runs' count and the median of each figure in FIGURES (None when
    any run missed it) and of the evictions."""
    by_variant: dict[str, list[RunFigures]] = {}
    for r in runs:
        by_variant.setdefault(r.variant, []).append(r)
    out = []
    for variant, rs in by_variant.items():
        row: dict[str, Any] = {"variant": variant, "runs": len(rs), "failed": sum(1 for r in rs if r.error)}
        for key in FIGURES:
            row[key] = _median([getattr(r, key) for r in rs])
        row["evictions"] = _median([float(sum(r.evictions.values())) for r in rs])
        out.append(row)
    return out


def format_table(summary: Sequence[Mapping[str, Any]]) -> str:
    """The summary as a table: one row per budget (cluster-wide/per node), medians."""
    headers = ["budget", "runs", "re-plan s", "ready s", "settled s", "moves", "resizes", "evictions", "surges",
               "peak restarting", "peak starting/node", "max down"]
    rows = []
    for s in summary:
        rows.append([s["variant"], f"{s['runs']}" + (f" ({s['failed']} failed)" if s["failed"] else ""),
                     figure(s["replan_s"], ".1f"), figure(s["ready_s"], ".1f"), figure(s["settled_s"], ".1f"),
                     figure(s["moves"], ".0f"), figure(s["resizes"], ".0f"), figure(s["evictions"], ".0f"),
                     figure(s["surges"], ".0f"),
                     f"{figure(s['peak_restarting_metric'], '.0f')} ({figure(s['peak_restarting'], '.0f')})",
                     figure(s["peak_starting_per_node"], ".0f"), figure(s["max_down"], ".0f")])
    return "\n".join(table(headers, rows))


# -- the cluster ---------------------------------------------------------------------------------------------------
def _items(raw: Any) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = json.loads(raw.data)["items"]
    return items


class World:
    """The control plane's clients and the bench's nodes (imperative shell)."""

    def __init__(self, plane: Any, nodes: int) -> None:
        from kubernetes import client

        from tests.e2e.harness.kube import api_client

        self.plane = plane
        self.api = api_client(plane.kubeconfig)
        self.core = client.CoreV1Api(self.api)
        self.apps = client.AppsV1Api(self.api)
        self.custom = client.CustomObjectsApi(self.api)
        self.nodes = [f"waves-{n:02d}" for n in range(nodes)]

    def ensure_nodes(self) -> None:
        """Create the bench's nodes that do not exist (the one deleted by the last run) and wait until Ready."""
        from kubernetes.client.exceptions import ApiException

        from tests.e2e.harness.kube import create_gpu_nodes, gpu_node_manifest

        missing = []
        for name in self.nodes:
            try:
                self.core.read_node(name)
            except ApiException as e:
                if e.status != 404:
                    raise
                missing.append(gpu_node_manifest(name, gpus=GPUS_PER_NODE, gpu_memory_mib=GPU_MEMORY_MIB))
        if missing:
            create_gpu_nodes(self.core, missing)

    def pods(self, namespace: str) -> list[PodView]:
        return [pod_view(p) for p in _items(self.core.list_namespaced_pod(namespace, _preload_content=False))]

    def force_delete_pods(self, namespace: str, node: str) -> None:
        """Delete the pods of `namespace` bound to `node` with no grace (what PodGC does to the pods of a deleted
        node once its quarantine is over)."""
        for p in self.pods(namespace):
            if p.node == node:
                try:
                    self.core.delete_namespaced_pod(p.name, namespace, grace_period_seconds=0)
                except Exception as e:  # gone already
                    if getattr(e, "status", None) != 404:
                        raise

    def slots(self, namespace: str) -> dict[str, set[tuple[str, int]]]:
        """Model -> its planned slots (node, GPU) from the ModelServings' status."""
        listed: Any = self.custom.list_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL)
        items = listed["items"]
        return {ms["metadata"]["name"]: {(s["node"], int(s["gpu"])) for s in (ms.get("status") or {}).get("slots")
                                         or []} for ms in items}

    def surges(self, namespace: str) -> set[tuple[str, str]]:
        """(Deployment, surge record) of every Deployment with a make-before-break surge open."""
        out = set()
        for d in _items(self.apps.list_namespaced_deployment(namespace, _preload_content=False)):
            record = (d["metadata"].get("annotations") or {}).get(SURGE_ANNOTATION)
            if record:
                out.add((d["metadata"]["name"], record))
        return out

    def create(self, namespace: str, specs: Sequence[ModelSpec], start_delay: str) -> None:
        from tests.e2e.harness.kube import wait_for

        self.core.create_namespace({"metadata": {"name": namespace}})
        wait_for(lambda: self.core.read_namespaced_service_account("default", namespace), lambda sa: True, 60.0,
                 f"ServiceAccount {namespace}/default")
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(lambda s: self.apps.create_namespaced_deployment(namespace, deployment(s, start_delay)),
                          specs))

    def remove(self, namespace: str, timeout_s: float = 300.0) -> None:
        """Delete the namespace, create the lost node again and wait until the namespace's pods are gone (those
        bound to the lost node are finalised by KWOK once it is back)."""
        from tests.e2e.harness.kube import wait_for

        self.core.delete_namespace(namespace)
        self.ensure_nodes()
        wait_for(lambda: _items(self.core.list_namespaced_pod(namespace, _preload_content=False)),
                 lambda items: not items, timeout_s, f"the pods of namespace {namespace} gone")


def _wait(predicate: Any, timeout_s: float, what: str) -> float:
    started = time.monotonic()
    while time.monotonic() - started < timeout_s:
        if predicate():
            return time.monotonic() - started
        time.sleep(POLL_S)
    raise TimeoutError(f"{what}: not after {timeout_s:.0f} s")


def one_run(w: World, variant: Variant, run: int, specs: Sequence[ModelSpec], start_delay: str,
            timeout_s: float, figures: RunFigures, pod_gc: str = "bench") -> None:
    """Build the world, lose a node, measure until settled (see the module docstring); fills `figures` as it
    goes, so a run that fails half way still reports what it measured."""
    from tests.e2e.harness.cluster import ExtenderConfig
    from tests.e2e.harness.controller import KvschedProcess

    wanted = {s.name: s.replicas for s in specs}
    figures.replicas = sum(wanted.values())
    ns = figures.namespace
    w.ensure_nodes()
    w.create(ns, specs, start_delay)
    built = time.monotonic()
    proc = KvschedProcess(w.plane, w.plane.kubeconfig, [
        "--leader-election=false", f"--namespace={ns}", "--gpu-holders=false", *variant.args()],
        name=f"kvsched-{ns}")
    proc.start(timeout_s=300)
    scheduler = None
    try:
        scheduler = w.plane.start_scheduler(ExtenderConfig(url=proc.extender_url), name=f"scheduler-{ns}")
        _wait(lambda: on_slots(w.pods(ns), w.slots(ns), wanted), timeout_s, "every replica Ready on its slot")
        figures.build_s = time.monotonic() - built
        before = proc.metrics()
        figures.start_max_kvpr = metric(before, "kvsched_max_kvpr")
        per_node: dict[str, int] = defaultdict(int)
        for p in w.pods(ns):
            if p.node is not None:
                per_node[p.node] += 1
        lost = min(per_node, key=lambda n: (-per_node[n], n))
        figures.lost_node, figures.lost_replicas = lost, per_node[lost]
        plans = metric(before, "kvsched_placement_duration_seconds_count")

        changed = time.monotonic()
        w.core.delete_node(lost)
        if pod_gc == "bench":
            w.force_delete_pods(ns, lost)
        surges: set[tuple[str, str]] = set()
        while time.monotonic() - changed < timeout_s:
            now = time.monotonic() - changed
            pods = w.pods(ns)
            snap = snapshot(pods, wanted, lost)
            slots = w.slots(ns)
            open_surges = w.surges(ns)
            surges |= open_surges
            m = proc.metrics()
            figures.peak_restarting_metric = max(figures.peak_restarting_metric,
                                                 int(metric(m, "kvsched_restarting_pods")))
            figures.peak_restarting = max(figures.peak_restarting, snap.restarting)
            figures.peak_starting = max(figures.peak_starting, snap.starting)
            figures.peak_starting_per_node = max(figures.peak_starting_per_node, snap.starting_per_node)
            figures.peak_starting_per_gpu = max(figures.peak_starting_per_gpu, snap.starting_per_gpu)
            figures.max_down = max(figures.max_down, snap.down)
            replanned = metric(m, "kvsched_placement_duration_seconds_count") > plans and all(
                node != lost for s in slots.values() for node, _ in s)
            if figures.replan_s is None and replanned:
                figures.replan_s = now
            if figures.ready_s is None and snap.down == 0 and figures.replan_s is not None:
                figures.ready_s = now
            if (figures.replan_s is not None and not open_surges
                    and metric(m, "kvsched_models", state="migrating") == 0
                    and all(p.deleting for p in pods if p.node == lost) and on_slots(pods, slots, wanted, lost)):
                figures.settled_s = now
                break
            time.sleep(POLL_S)
        after = proc.metrics()
        figures.end_max_kvpr = metric(after, "kvsched_max_kvpr")
        figures.moves = int(metric(after, "kvsched_replan_steps_total", kind="move")
                            - metric(before, "kvsched_replan_steps_total", kind="move"))
        figures.resizes = int(metric(after, "kvsched_replan_steps_total", kind="resize")
                              - metric(before, "kvsched_replan_steps_total", kind="resize"))
        for reason in ("Rebalance", "NodeUnavailable", "Resize"):
            figures.evictions[reason] = int(metric(after, "kvsched_migrations_total", reason=reason)
                                            - metric(before, "kvsched_migrations_total", reason=reason))
        figures.surges = len(surges)
        if figures.settled_s is None:
            figures.error = f"not settled after {timeout_s:.0f} s"
    finally:
        if scheduler is not None:
            scheduler.stop()
        proc.stop()


def run_line(f: RunFigures) -> str:
    return (f"run {f.run + 1} budget {f.variant}: {f.replicas} replicas built in {figure(f.build_s, '.0f')} s, "
            f"max KVPR {figure(f.start_max_kvpr, '.4f')} -> {figure(f.end_max_kvpr, '.4f')}; lost {f.lost_node} "
            f"({f.lost_replicas} replicas): re-plan {figure(f.replan_s, '.1f')} s, all Ready "
            f"{figure(f.ready_s, '.1f')} s, settled {figure(f.settled_s, '.1f')} s; steps {f.moves} moves + "
            f"{f.resizes} resizes, evictions {dict(f.evictions)}, surges {f.surges}; peak restarting "
            f"{f.peak_restarting_metric} (pods: {f.peak_restarting}), starting {f.peak_starting} "
            f"(per node {f.peak_starting_per_node}, per GPU {f.peak_starting_per_gpu}), max down {f.max_down}"
            + (f"; ERROR {f.error}" if f.error else ""))


def write_report(path: Path, args: argparse.Namespace, runs: Sequence[RunFigures]) -> None:
    """The arguments, the medians and every run as JSON at `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(jsonable({"args": {k: str(v) for k, v in vars(args).items()},
                                         "summary": summarise(runs), "runs": [asdict(r) for r in runs]}),
                               indent=1) + "\n")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m bench.waves", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--budgets", default="1,4,8", help="variants, C or C:N (--max-restarting C, "
                    "--max-restarting-per-node N), comma-separated; 1 is one step at a time (default: 1,4,8)")
    ap.add_argument("--per-node", type=int, default=1, help="--max-restarting-per-node of a budget given as C "
                    "(default 1, kvsched's default)")
    ap.add_argument("--nodes", type=int, default=16, help=f"KWOK nodes of {GPUS_PER_NODE} x 80Gi (16: 128 GPUs)")
    ap.add_argument("--models", type=int, default=160, help="annotated Deployments (160: about 200 replicas)")
    ap.add_argument("--seed", type=int, default=0, help="the world's draw")
    ap.add_argument("--start-delay", default="5s", help="each pod's bind-to-Ready time, a Go duration (default 5s)")
    ap.add_argument("--pod-gc", choices=("bench", "cluster"), default="bench",
                    help="who deletes the lost node's pods: the bench, with the node (default; what PodGC does once "
                    "its 40 s quarantine is over, so the times are kvsched's), or kube-controller-manager's PodGC")
    ap.add_argument("--runs", type=int, default=1, help="runs of every variant (alternating); medians reported")
    ap.add_argument("--timeout-seconds", type=float, default=900.0, help="give up one phase of a run after this")
    ap.add_argument("--json", type=Path, default=None, metavar="PATH", help="every run and the medians as JSON")
    ap.add_argument("--keep", action="store_true", help="keep the control plane's directory (logs) at the end")
    args = ap.parse_args(argv)
    try:
        args.variants = parse_variants(args.budgets, args.per_node)
        check_duration(args.start_delay)
    except ValueError as e:
        ap.error(str(e))
    for name in ("nodes", "models", "runs"):
        if getattr(args, name) < 1:
            ap.error(f"--{name}: {getattr(args, name)} is not a positive integer")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    from tests.e2e.harness.cluster import ControlPlane
    from tests.e2e.harness.kube import apply_crds, project_crd_paths
    from tests.e2e.harness.tools import locate_tools, missing_tools

    tools = locate_tools()
    if missing_tools(tools) or not tools.helm.exists():
        print(f"e2e binaries missing: {missing_tools(tools) or [str(tools.helm)]} (run make e2e-tools)")
        return 0
    specs = world(args.models, args.seed)
    print(f"{args.nodes} nodes ({args.nodes * GPUS_PER_NODE} GPUs of 80Gi), {len(specs)} models, "
          f"{sum(s.replicas for s in specs)} replicas, start delay {args.start_delay}; budgets "
          f"{', '.join(v.name for v in args.variants)} (cluster-wide/per node), {args.runs} run(s)", flush=True)
    plane = ControlPlane(workdir=Path(tempfile.mkdtemp(prefix="kvsched-waves-")), tools=tools)
    runs: list[RunFigures] = []
    began = time.monotonic()
    try:
        plane.start()
        w = World(plane, args.nodes)
        apply_crds(w.api, project_crd_paths())
        w.ensure_nodes()
        for run in range(args.runs):
            for i, variant in enumerate(args.variants):
                figures = RunFigures(variant.name, run, namespace=f"waves-{run}-{i}")
                runs.append(figures)
                try:
                    one_run(w, variant, run, specs, args.start_delay, args.timeout_seconds, figures, args.pod_gc)
                except Exception as e:  # report what was measured, go on with the next variant
                    figures.error = f"{type(e).__name__}: {e}"
                print(run_line(figures), flush=True)
                if args.json is not None:  # after every run: a long run stopped half way keeps what it measured
                    write_report(args.json, args, runs)
                try:
                    w.remove(figures.namespace)
                except Exception as e:
                    print(f"cleaning namespace {figures.namespace} up failed: {type(e).__name__}: {e}", flush=True)
    finally:
        plane.stop()
        if not args.keep:
            shutil.rmtree(plane.workdir, ignore_errors=True)
        else:
            print(f"control plane directory kept: {plane.workdir}")
    summary = summarise(runs)
    print(f"\nnode loss at {args.nodes * GPUS_PER_NODE} GPUs, {sum(s.replicas for s in specs)} replicas, start "
          f"delay {args.start_delay}; medians of {args.runs} run(s); {time.monotonic() - began:.0f} s in all")
    print(format_table(summary))
    if args.json is not None:
        write_report(args.json, args, runs)
    return 0 if any(not r.error for r in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
