"""`make cluster` with the bundled example, driven from a test: start `python -m hack.cluster` (the same harness,
the same 30 models / 38 replicas), read its env file, and watch what kvsched does through /metrics and the API.

Used by tests/e2e/test_idle.py (idle and one change) and tests/e2e/soak/ (many changes).
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kubernetes import client

from .controller import read_metrics
from .kube import api_client

from kvsched.api.names import GPU_ANNOTATION, MODEL_LABEL, RATE_ANNOTATION

ROOT = Path(__file__).resolve().parents[3]
NAMESPACE = "kvsched-demo"
GROUP, VERSION, PLURAL = "kvsched.io", "v1alpha1", "modelservings"
def migrations(metrics: dict[str, float]) -> float:
    """Evictions kvsched started, every reason."""
    return sum(v for k, v in metrics.items() if k.startswith("kvsched_migrations_total"))


def rounds(metrics: dict[str, float]) -> float:
    """Decisions the controller's loop made."""
    return metrics.get("kvsched_reconcile_rounds_total", 0.0)


def planned_steps(metrics: dict[str, float]) -> float:
    """Steps (moves and share restarts) the re-plans called for, counted when each re-plan was made."""
    return sum(v for k, v in metrics.items() if k.startswith("kvsched_replan_steps_total"))


def placements(metrics: dict[str, float]) -> float:
    """Solves kvsched ran."""
    return metrics.get("kvsched_placement_duration_seconds_count", 0.0)


def condition(ms: dict[str, Any], kind: str) -> dict[str, Any]:
    return next((c for c in (ms.get("status") or {}).get("conditions") or [] if c.get("type") == kind), {})


@dataclass
class ExampleCluster:
    """A running `make cluster` (hack.cluster) in `workdir`; `stop()` ends it with SIGTERM."""

    workdir: Path
    proc: subprocess.Popen[str] | None = None
    env: dict[str, str] = field(default_factory=dict)
    lines: list[str] = field(default_factory=list)
    api: client.ApiClient | None = None

    def start(self, timeout_s: float = 240.0) -> ExampleCluster:
        self.proc = subprocess.Popen([sys.executable, "-m", "hack.cluster"], cwd=ROOT, text=True,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     env={**os.environ, "KVSCHED_CLUSTER_DIR": str(self.workdir)})
        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout_s
        for line in self.proc.stdout:
            self.lines.append(line.rstrip())
            if line.strip() == "ready" or time.monotonic() > deadline:
                break
        if not self.lines or self.lines[-1] != "ready":
            raise RuntimeError("make cluster did not report ready:\n" + "\n".join(self.lines[-40:]))
        self.env = dict(line.split("=", 1) for line in (self.workdir / "env").read_text().splitlines())
        self.api = api_client(Path(self.env["KUBECONFIG"]))
        return self

    def stop(self) -> None:
        if self.api is not None:
            self.api.close()
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.communicate(timeout=90)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.communicate()

    @property
    def kvsched_log(self) -> Path:
        return self.workdir / "logs" / "kvsched.log"

    def metrics(self) -> dict[str, float]:
        return read_metrics(self.env["KVSCHED_METRICS_URL"])

    def servings(self) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = client.CustomObjectsApi(self.api).list_namespaced_custom_object(
            GROUP, VERSION, NAMESPACE, PLURAL)["items"]
        return items

    def pods(self) -> list[client.V1Pod]:
        return list(client.CoreV1Api(self.api).list_namespaced_pod(NAMESPACE).items)

    def serving_versions(self) -> dict[str, str]:
        return {m["metadata"]["name"]: m["metadata"]["resourceVersion"] for m in self.servings()}

    def unsettled(self, allow_unschedulable: bool = False) -> list[str]:
        """Why the example is not settled (empty when it is): every model Placed and not Migrating, its pods on
        its slots, bound, Ready, nothing terminating, readyReplicas == replicas. `allow_unschedulable`: a model
        the cluster cannot hold now (Unschedulable, e.g. while a node is cordoned) is settled once its planned
        slots are held by Ready pods; its other pods keep running where they are (a cordon is not a drain)."""
        why = []
        pods = self.pods()
        terminating = [p.metadata.name for p in pods if p.metadata.deletion_timestamp]
        if terminating:
            why.append(f"terminating: {terminating[:3]}")
        deployments = {d.metadata.name: d for d in client.AppsV1Api(self.api).list_namespaced_deployment(
            NAMESPACE).items}
        servings = {m["metadata"]["name"]: m for m in self.servings()}
        for name, dep in sorted(deployments.items()):
            ms = servings.get(name)
            if ms is None:
                why.append(f"{name}: no ModelServing")
                continue
            status = ms.get("status") or {}
            unschedulable = allow_unschedulable and condition(ms, "Unschedulable").get("status") == "True"
            if condition(ms, "Placed").get("status") != "True" and not unschedulable:
                why.append(f"{name}: not Placed")
            if condition(ms, "Migrating").get("status") == "True":
                why.append(f"{name}: Migrating ({condition(ms, 'Migrating').get('message')})")
            slots = {(s["node"], s["gpu"]) for s in status.get("slots") or []}
            mine = [p for p in pods if (p.metadata.labels or {}).get(MODEL_LABEL) == name
                    and not p.metadata.deletion_timestamp]
            held = {(p.spec.node_name or "", int((p.metadata.annotations or {}).get(GPU_ANNOTATION, -1))) for p in mine}
            ready = all(any(c.type == "Ready" and c.status == "True" for c in (p.status.conditions or []))
                        for p in mine)
            if unschedulable:
                if not slots <= held or not ready:
                    why.append(f"{name}: {len(mine)} pods on {sorted(held)} (Ready: {ready}), slots {sorted(slots)}")
            elif len(mine) != dep.spec.replicas or held != slots or not ready:
                why.append(f"{name}: {len(mine)} pods on {sorted(held)} (Ready: {ready}), slots {sorted(slots)}")
            elif status.get("readyReplicas") != dep.spec.replicas:
                why.append(f"{name}: readyReplicas {status.get('readyReplicas')}")
        return why

    def wait_settled(self, timeout_s: float, what: str, allow_unschedulable: bool = False) -> float:
        """Poll until `unsettled()` is empty and a decision of the controller made after that re-planned nothing
        and evicted nothing (kvsched_reconcile_rounds_total advanced, kvsched_placement_duration_seconds_count and
        kvsched_migrations_total did not): a cluster between two waves of a capped re-plan looks settled for a
        moment. Returns the seconds waited. Fails with what is still moving and the evictions meanwhile."""
        start = time.monotonic()
        evictions = migrations(self.metrics())
        why: list[str] = []
        seen: dict[str, float] | None = None  # the metrics when the cluster last looked settled
        while time.monotonic() - start < timeout_s:
            why = self.unsettled(allow_unschedulable)
            now = self.metrics()
            if why:
                seen = None
            elif seen is None:
                seen = now
            elif rounds(now) > rounds(seen):
                if placements(now) == placements(seen) and migrations(now) == migrations(seen):
                    return time.monotonic() - start
                seen = None
            time.sleep(1.0)
        raise AssertionError(f"{what}: not settled after {timeout_s:.0f}s, "
                             f"{migrations(self.metrics()) - evictions:.0f} evictions meanwhile; still: {why[:6]}")

    def patch_rate(self, name: str, rate: float, timeout_s: float = 60.0) -> None:
        """Set the Deployment's request-rate annotation, then wait until the controller has copied it into the
        ModelServing it owns (a new generation) and written a status that observed it, so that what follows sees
        the re-plan of this change rather than the world before it."""
        text = f"{rate:g}"
        if text == f"{self.rate(name):g}":
            return
        serving = next(m for m in self.servings() if m["metadata"]["name"] == name)
        generation = serving["metadata"]["generation"]
        client.AppsV1Api(self.api).patch_namespaced_deployment(
            name, NAMESPACE, {"metadata": {"annotations": {RATE_ANNOTATION: text}}})
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            ms = next(m for m in self.servings() if m["metadata"]["name"] == name)
            if ms["metadata"]["generation"] > generation \
                    and (ms.get("status") or {}).get("observedGeneration") == ms["metadata"]["generation"]:
                return
            time.sleep(0.2)
        raise AssertionError(f"the rate of {name} was not taken into its ModelServing within {timeout_s:.0f}s")

    def rate(self, name: str) -> float:
        dep = client.AppsV1Api(self.api).read_namespaced_deployment(name, NAMESPACE)
        return float(dep.metadata.annotations[RATE_ANNOTATION])

    def eviction_events(self) -> dict[str, tuple[str, str]]:
        """Event name -> (ModelServing, message) of every Migrating event kvsched recorded (one per eviction it
        started). Keyed by name: the API lists events by name, not in the order they were made, so the events of
        a change are those whose names were not there before it (`new_eviction_events`)."""
        events = client.CoreV1Api(self.api).list_namespaced_event(
            NAMESPACE, field_selector="reason=Migrating,involvedObject.kind=ModelServing").items
        return {e.metadata.name: (e.involved_object.name, e.message or "") for e in events}

    def new_eviction_events(self, before: dict[str, tuple[str, str]]) -> list[tuple[str, str]]:
        """The (ModelServing, message) of the Migrating events recorded since `before` (an `eviction_events()`)."""
        return [v for k, v in sorted(self.eviction_events().items()) if k not in before]


def watch_idle(cluster: ExampleCluster, window_s: float, sample_s: float = 3.0) -> dict[str, float]:
    """Sample /metrics every `sample_s` for `window_s`; AssertionError at the first eviction. Returns the change
    of the placement count and the ModelServing writes over the window."""
    start = time.monotonic()
    first = cluster.metrics()
    versions = cluster.serving_versions()
    while time.monotonic() - start < window_s:
        time.sleep(sample_s)
        now = cluster.metrics()
        evicted = migrations(now) - migrations(first)
        if evicted:
            raise AssertionError(
                f"{evicted:.0f} eviction(s) {time.monotonic() - start:.1f}s into an idle window of an unchanged "
                f"cluster (kvsched_migrations_total {migrations(first):.0f} -> {migrations(now):.0f}; "
                f"placements solved meanwhile: {placements(now) - placements(first):.0f})")
    after = cluster.serving_versions()
    written = sorted(k for k in set(versions) | set(after) if versions.get(k) != after.get(k))
    return {"solves": placements(cluster.metrics()) - placements(first), "written": float(len(written)),
            "written_names": written}  # type: ignore[dict-item]
