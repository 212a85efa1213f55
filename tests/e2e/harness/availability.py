"""Availability during re-plans: how many replicas of each model serve, over time, and why they did not.

`Availability` is the bookkeeping (pure, no cluster: tests/e2e/test_harness_availability.py checks it): fed every
pod change (a pod *serves* while it is Ready, not terminating and on a node that was not lost), it keeps per model
a step series of serving counts (epoch s, count) and answers where a model was below the replicas it wants, how
low it went, and whether each such dip is explained by a cause the test names: an eviction (a break-before-make
step: kvsched stops the old replica before its replacement starts) or a lost node's replicas. Surge intervals
(a make-before-break move: the Deployment carries kvsched's surge record) are kept per model too.

`AvailabilityWatcher` feeds it from three watches (the namespace's pods, Deployments and ModelServings: their
`Migrating` condition) on threads, with arrival times (`time.time()`, the apiserver's clock on this machine). `audited_evictions` reads the evictions kvsched made
from the apiserver's audit log (harness/audit.py): `create pods/eviction` answered 201, with the time the
apiserver received it. Used by tests/e2e/test_availability.py.
"""
from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kubernetes import client, watch

from kvsched.api.names import MODEL_LABEL, SURGE_ANNOTATION
from kvsched.units import timestamp_s

from . import audit

GROUP, VERSION, PLURAL = "kvsched.io", "v1alpha1", "modelservings"
# A dip may show in the pod watch a little after the eviction that caused it was received (s): the watch event's
# arrival, and the audit log's receive time taken before the handler ran.
SLACK_S = 1.0


@dataclass(frozen=True)
class Dip:
    """A time `start`..`end` (epoch s; `end` None: still below at the end) where `model` served fewer than it wants,
    at least `lowest` replicas."""

    model: str
    start: float
    end: float | None
    lowest: int

    def __str__(self) -> str:
        until = f"{self.end:.1f}" if self.end is not None else "the end"
        return f"{self.model} below its wanted replicas from {self.start:.1f} to {until} (lowest {self.lowest})"


@dataclass
class Availability:
    """Serving replicas per model over time (see the module docstring). `wanted`: replicas per model (the model
    label's value), the Deployment's own count, not the surge's. Times are epoch s, non-decreasing per call."""

    wanted: Mapping[str, int]
    series: dict[str, list[tuple[float, int]]] = field(default_factory=dict)
    surges: dict[str, list[tuple[float, float | None]]] = field(default_factory=dict)
    lost_pods: dict[str, list[tuple[float, str]]] = field(default_factory=dict)
    migrating: dict[str, list[tuple[float, str, str]]] = field(default_factory=dict)  # (t, status, reason)
    model_of: dict[str, str] = field(default_factory=dict)  # every pod name ever seen -> its model
    gone_at: dict[str, float] = field(default_factory=dict)  # pod name -> when it was deleted
    _pods: dict[str, tuple[str, bool, str | None]] = field(default_factory=dict)  # name -> (model, ready, node)
    _lost: set[str] = field(default_factory=set)

    def pod(self, t: float, name: str, model: str | None, ready: bool, node: str | None) -> None:
        """A pod was seen as it is now (`ready`: Ready and not terminating). Pods of no model are ignored."""
        if model is None:
            return
        self.model_of[name] = model
        self._pods[name] = (model, ready, node)
        self._sample(t, model)

    def gone(self, t: float, name: str) -> None:
        """A pod was deleted."""
        entry = self._pods.pop(name, None)
        self.gone_at.setdefault(name, t)
        if entry is not None:
            self._sample(t, entry[0])

    def node_lost(self, t: float, node: str) -> None:
        """From `t` no pod on `node` serves (the node failed; its pods may still look Ready)."""
        self._lost.add(node)
        for name, (model, ready, where) in sorted(self._pods.items()):
            if where == node and ready:
                self.lost_pods.setdefault(model, []).append((t, name))
        for model in sorted({m for m, _, where in self._pods.values() if where == node}):
            self._sample(t, model)

    def surge(self, t: float, model: str, active: bool) -> None:
        """`model`'s Deployment carries a surge record (`active`) or not, from `t`."""
        spans = self.surges.setdefault(model, [])
        if active and (not spans or spans[-1][1] is not None):
            spans.append((t, None))
        elif not active and spans and spans[-1][1] is None:
            spans[-1] = (spans[-1][0], t)

    def condition(self, t: float, model: str, status: str, reason: str) -> None:
        """`model`'s ModelServing shows its `Migrating` condition as (`status`, `reason`) from `t`."""
        seen = self.migrating.setdefault(model, [])
        if not seen or seen[-1][1:] != (status, reason):
            seen.append((t, status, reason))

    def conditions_during(self, model: str, start: float, end: float) -> list[tuple[str, str]]:
        """The `Migrating` (status, reason) pairs `model` showed during `start`..`end`, the one in force at
        `start` first."""
        out: list[tuple[str, str]] = []
        for at, status, reason in self.migrating.get(model, []):
            if at <= start:
                out = [(status, reason)]
            elif at <= end:
                out.append((status, reason))
        return out

    def serving(self, model: str) -> int:
        """Pods of `model` serving now."""
        return sum(1 for m, ready, node in self._pods.values() if m == model and ready and node not in self._lost)

    def _sample(self, t: float, model: str) -> None:
        count = self.serving(model)
        points = self.series.setdefault(model, [])
        if not points or points[-1][1] != count:
            points.append((t, count))

    def count_at(self, model: str, t: float) -> int:
        """Serving count of `model` at `t` (0 before it was first seen)."""
        count = 0
        for at, n in self.series.get(model, []):
            if at > t:
                break
            count = n
        return count

    def lowest(self, model: str, start: float, end: float | None = None) -> int:
        """The fewest serving replicas of `model` during `start`..`end` (None: up to now)."""
        counts = [self.count_at(model, start)]
        counts += [n for at, n in self.series.get(model, []) if start < at and (end is None or at <= end)]
        return min(counts)

    def dips(self, model: str, since: float) -> list[Dip]:
        """The intervals from `since` on where `model` served fewer than it wants."""
        want = self.wanted[model]
        out: list[Dip] = []
        start: float | None = since if self.count_at(model, since) < want else None
        lowest = self.count_at(model, since)
        for at, n in self.series.get(model, []):
            if at <= since:
                continue
            if n < want:
                if start is None:
                    start, lowest = at, n
                lowest = min(lowest, n)
            elif start is not None:
                out.append(Dip(model, start, at, lowest))
                start = None
        if start is not None:
            out.append(Dip(model, start, None, lowest))
        return out

    def causes(self, model: str, evictions: Iterable[tuple[float, str]]) -> list[tuple[float, float]]:
        """When `model` lost a serving replica for a named cause, as (from, to) epoch s: each of its pods'
        evictions (time, pod name), at that time; each of its serving pods on a lost node, from the loss until that
        pod is deleted (its ReplicaSet replaces it only then; inf: never)."""
        spans = [(t, t) for t, pod in evictions if self.model_of.get(pod) == model]
        spans += [(t, self.gone_at.get(pod, float("inf"))) for t, pod in self.lost_pods.get(model, [])]
        return sorted(spans)

    def unexplained(self, since: float, evictions: Iterable[tuple[float, str]],
                    models: Iterable[str] | None = None) -> list[str]:
        """Every dip of `models` (default: all) from `since` on that its causes do not explain. A dip with n causes
        meeting `start - SLACK_S`..`end` may go at most n below wanted; one with none is unexplained; one that never
        ends (the model is not back at wanted) is reported too. `evictions`: (epoch s, pod name)."""
        evictions = list(evictions)
        problems: list[str] = []
        for model in sorted(models if models is not None else self.wanted):
            causes = self.causes(model, evictions)
            for dip in self.dips(model, since):
                end = dip.end if dip.end is not None else float("inf")
                n = sum(1 for a, b in causes if a < end and b >= dip.start - SLACK_S)
                if dip.end is None:
                    problems.append(f"{dip}: never back")
                elif n == 0:
                    problems.append(f"{dip}: no eviction of its pods and no lost node explains it")
                elif dip.lowest < self.wanted[model] - n:
                    problems.append(f"{dip}: deeper than its {n} eviction(s) or lost replica(s) explain")
        return problems

    def surge_lows(self, model: str) -> list[tuple[float, float | None, int]]:
        """Each surge of `model` (start, end, the fewest serving replicas meanwhile)."""
        return [(a, b, self.lowest(model, a, b)) for a, b in self.surges.get(model, [])]

    def back_at(self, since: float) -> float | None:
        """The first time from `since` at which every model served what it wants, and kept doing so to the end;
        None when some model is still below."""
        last = since
        for model in self.wanted:
            dips = self.dips(model, since)
            if dips and dips[-1].end is None:
                return None
            if dips:
                last = max(last, dips[-1].end or last)
        return last


def is_serving(pod: client.V1Pod) -> bool:
    """Ready and not terminating."""
    return not pod.metadata.deletion_timestamp and any(
        c.type == "Ready" and c.status == "True" for c in (pod.status.conditions or []))


class AvailabilityWatcher:
    """An `Availability` fed by a pod watch and a Deployment watch of `namespace` (threads), with arrival times.
    Use as a context manager; `node_lost` marks a node failed now. Reads of `availability` take `lock`."""

    def __init__(self, kube: client.ApiClient, namespace: str, wanted: Mapping[str, int],
                 clock: Callable[[], float] = time.time) -> None:
        self.core = client.CoreV1Api(kube)
        self.apps = client.AppsV1Api(kube)
        self.namespace = namespace
        self.availability = Availability(dict(wanted))
        self.lock = threading.Lock()
        self.clock = clock
        self.failures: list[str] = []
        self._stop = threading.Event()
        custom = client.CustomObjectsApi(kube)

        def servings(namespace: str, **kw: Any) -> Any:
            return custom.list_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, **kw)

        listers: list[tuple[str, Callable[..., Any], Callable[[str, Any], None]]] = [
            ("pods", self.core.list_namespaced_pod, self._on_pod),
            ("deployments", self.apps.list_namespaced_deployment, self._on_deployment),
            ("modelservings", servings, self._on_serving)]
        self._watches = [watch.Watch() for _ in listers]
        self._threads = [threading.Thread(target=self._run, args=(w, lister, handle), name=f"availability-{what}",
                                          daemon=True)
                         for w, (what, lister, handle) in zip(self._watches, listers)]

    def __enter__(self) -> AvailabilityWatcher:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for w in self._watches:
            w.stop()
        for thread in self._threads:
            thread.join(10)

    def node_lost(self, node: str) -> float:
        """Mark `node` failed from now; returns the time (epoch s)."""
        with self.lock:
            now = self.clock()
            self.availability.node_lost(now, node)
        return now

    def _run(self, w: watch.Watch, lister: Callable[..., Any], handle: Callable[[str, Any], None]) -> None:
        try:
            listed = lister(self.namespace)
            if isinstance(listed, dict):  # a custom resource's list
                items, version = listed.get("items") or [], listed["metadata"]["resourceVersion"]
            else:
                items, version = listed.items, listed.metadata.resource_version
            for obj in items:
                handle("ADDED", obj)
            while not self._stop.is_set():
                for event in w.stream(lister, self.namespace, resource_version=version, timeout_seconds=5):
                    obj = event["object"]
                    version = obj["metadata"]["resourceVersion"] if isinstance(obj, dict) \
                        else obj.metadata.resource_version
                    handle(event["type"], obj)
                    if self._stop.is_set():
                        return
        except Exception as e:
            if not self._stop.is_set():  # stopping cuts the stream: only a failure before that is one
                self.failures.append(f"{threading.current_thread().name}: {e!r}")
                raise

    def _on_pod(self, kind: str, pod: client.V1Pod) -> None:
        model = (pod.metadata.labels or {}).get(MODEL_LABEL)
        with self.lock:
            now = self.clock()
            if kind == "DELETED":
                self.availability.gone(now, pod.metadata.name)
            else:
                self.availability.pod(now, pod.metadata.name, model, is_serving(pod), pod.spec.node_name)

    def _on_deployment(self, kind: str, deployment: client.V1Deployment) -> None:
        name = deployment.metadata.name
        active = kind != "DELETED" and SURGE_ANNOTATION in (deployment.metadata.annotations or {})
        with self.lock:
            self.availability.surge(self.clock(), name, active)


    def _on_serving(self, kind: str, ms: dict[str, Any]) -> None:
        if kind == "DELETED":
            return
        conditions = (ms.get("status") or {}).get("conditions") or []
        moving = next((c for c in conditions if c.get("type") == "Migrating"), None)
        if moving is not None:
            with self.lock:
                self.availability.condition(self.clock(), ms["metadata"]["name"], str(moving.get("status")),
                                            str(moving.get("reason")))


def audited_evictions(log: Path, namespace: str, since: float = 0.0) -> list[tuple[float, str]]:
    """The evictions of pods in `namespace` the apiserver granted (201) at or after `since`: (the time it received
    the request, epoch s; pod name), in time order. Call `audit.fence` first so that the log is written up to now."""
    out = []
    with log.open() as f:
        for line in f:
            try:
                event: dict[str, Any] = json.loads(line)
            except ValueError:
                continue  # a line cut short by a concurrent write
            request = audit.parse(event)
            if (request.verb, request.resource, request.subresource, request.namespace, request.code) != (
                    "create", "pods", "eviction", namespace, 201):
                continue
            at = timestamp_s(str(event.get("requestReceivedTimestamp", "")))
            if at is not None and at >= since:
                out.append((at, request.name))
    return sorted(set(out))
