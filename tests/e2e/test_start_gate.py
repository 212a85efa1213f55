"""One engine starting per GPU at a time (issue 15, part 2), end to end: `kvsched serve` and a kube-scheduler with
the `kvsched` profile on KWOK GPU nodes whose pods take a start-up delay before they are Ready (the harness's
KWOK stages, tests/e2e/cluster/stages/pod-start-delay.yaml).

A watcher follows the namespace's pods through a watch (every change, in order) and checks after each one that no
GPU has two managed pods bound and not Ready (not terminating) at once. Scenarios: three replicas planned on one
GPU start one after another, each bound promptly once the previous one is Ready (no scheduler backoff); a pod that
never becomes Ready releases the gate at the start timeout; a rollout of a Deployment on a full plan completes.
"""
from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from kubernetes import client, watch

from kvsched.api.names import GPU_ANNOTATION, MODEL_LABEL
from kvsched.units import timestamp_s

from .harness.cluster import NEVER_READY_ANNOTATION, START_DELAY_ANNOTATION, ControlPlane
from .harness.kube import wait_for
from .harness.processes import Component
from .test_controller import Pool, annotated, managed_pods, new_pool, wait_settled

pytestmark = pytest.mark.e2e

START_DELAY_S = 4


class GateWatcher:
    """Follows every pod change of a namespace and records each moment two managed pods were bound to one GPU and
    not Ready, within `start_timeout_s` of being seen bound (less 1.5 s: the API's bind times are whole seconds);
    `bound` and `ready` keep when each pod was first seen bound and Ready (watch arrival, monotonic s)."""

    def __init__(self, kube: client.ApiClient, namespace: str, start_timeout_s: float = float("inf")) -> None:
        self.start_timeout_s = start_timeout_s
        self.core = client.CoreV1Api(kube)
        self.namespace = namespace
        self.pods: dict[str, client.V1Pod] = {}
        self.violations: list[str] = []
        self.bound: dict[str, float] = {}
        self.ready: dict[str, float] = {}
        self.events = 0
        self._stop = threading.Event()
        self._watch = watch.Watch()
        self._thread = threading.Thread(target=self._run, name="gate-watcher", daemon=True)

    def __enter__(self) -> GateWatcher:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._watch.stop()
        self._thread.join(10)

    def _run(self) -> None:
        try:
            self._follow()
        except Exception:
            if not self._stop.is_set():  # stopping cuts the stream: only a failure before that is one
                self.violations.append("the watcher failed")
                raise

    def _follow(self) -> None:
        version = self.core.list_namespaced_pod(self.namespace).metadata.resource_version
        while not self._stop.is_set():
            for event in self._watch.stream(self.core.list_namespaced_pod, self.namespace,
                                            resource_version=version, timeout_seconds=5):
                pod: client.V1Pod = event["object"]
                version = pod.metadata.resource_version
                if event["type"] == "DELETED":
                    self.pods.pop(pod.metadata.name, None)
                else:
                    self.pods[pod.metadata.name] = pod
                self.events += 1
                self._check()
                if self._stop.is_set():
                    return

    def _check(self) -> None:
        now = time.monotonic()
        starting: dict[tuple[str, str], list[str]] = {}
        for name, pod in self.pods.items():
            gpu = (pod.metadata.annotations or {}).get(GPU_ANNOTATION)
            if not pod.spec.node_name or gpu is None or MODEL_LABEL not in (pod.metadata.labels or {}):
                continue
            self.bound.setdefault(name, now)
            if is_ready(pod):
                self.ready.setdefault(name, now)
            elif not pod.metadata.deletion_timestamp and now - self.bound[name] < self.start_timeout_s - 1.5:
                starting.setdefault((pod.spec.node_name, gpu), []).append(name)
        for gpu, names in starting.items():
            if len(names) > 1:
                self.violations.append(f"{sorted(names)} bound and not Ready at once on {gpu}")


def is_ready(pod: client.V1Pod) -> bool:
    return any(c.type == "Ready" and c.status == "True" for c in (pod.status.conditions or []))


def bound_at(pod: client.V1Pod) -> float:
    """The API server's bind time of `pod` (PodScheduled), epoch s."""
    cond = next(c for c in pod.status.conditions or [] if c.type == "PodScheduled" and c.status == "True")
    stamp = timestamp_s(cond.last_transition_time.isoformat())
    assert stamp is not None
    return stamp


def with_pod_annotations(manifest: dict[str, Any], annotations: dict[str, str]) -> dict[str, Any]:
    manifest["spec"]["template"]["metadata"].setdefault("annotations", {}).update(annotations)
    return manifest


@pytest.fixture
def pool(control_plane: ControlPlane, kube: client.ApiClient, namespace: str, project_crds: list[str],
         kvsched_scheduler: Callable[..., Component]) -> Iterator[Pool]:
    p = new_pool(control_plane, kube, namespace, kvsched_scheduler)
    try:
        yield p
    finally:
        p.close()


def create(pool: Pool, name: str, size: str, replicas: int, annotations: dict[str, str]) -> None:
    client.AppsV1Api(pool.kube).create_namespaced_deployment(
        pool.namespace, with_pod_annotations(annotated(name, size, 2.0, "1", replicas), annotations))


def test_three_replicas_on_one_gpu_start_one_after_another(pool: Pool) -> None:
    pool.add_nodes({"one": (1, "80Gi")})
    pool.start()
    names = ["a", "b", "c"]
    with GateWatcher(pool.kube, pool.namespace) as watcher:
        started = time.monotonic()
        for name in names:
            create(pool, name, "8Gi", 1, {START_DELAY_ANNOTATION: f"{START_DELAY_S}s"})
        wait_settled(pool, names, timeout_s=120)
        elapsed = time.monotonic() - started
    assert watcher.violations == []
    pods = sorted((p for n in names for p in managed_pods(pool, n)), key=bound_at)
    assert len(pods) == 3 and len({(p.spec.node_name, p.metadata.annotations[GPU_ANNOTATION]) for p in pods}) == 1
    # One after another: each bound after the previous one became Ready, and promptly (no scheduler backoff).
    order = [p.metadata.name for p in pods]
    for before, after in zip(order, order[1:]):
        gap = watcher.bound[after] - watcher.ready[before]
        assert 0 <= gap < 10, f"{after} bound {gap:.1f}s after {before} was Ready"
    assert elapsed >= 3 * START_DELAY_S


def test_a_pod_that_never_becomes_ready_releases_the_gate_after_the_timeout(pool: Pool) -> None:
    # Two models planned together on one GPU, both of whose pods never become Ready (crash loops): whichever binds
    # first holds the gate for the start timeout, then the other binds. (Created together, so that the first pod
    # binds with the share of the shared plan: alone, it would get the whole GPU and the other would wait for a
    # share restart, which waits for every pod to be Ready.)
    timeout_s = 12
    pool.add_nodes({"one": (1, "80Gi")})
    pool.start(knobs=["--time-budget-seconds=2", f"--start-timeout-seconds={timeout_s}"])
    core = client.CoreV1Api(pool.kube)

    def bound() -> list[client.V1Pod]:
        return sorted((p for n in ("x", "y") for p in managed_pods(pool, n) if p.spec.node_name), key=bound_at)

    def refusals(pod: client.V1Pod) -> list[str]:
        return [e.message or "" for e in core.list_namespaced_event(
            pool.namespace, field_selector=f"involvedObject.name={pod.metadata.name}").items
            if e.reason == "FailedScheduling"]

    with GateWatcher(pool.kube, pool.namespace, start_timeout_s=timeout_s) as watcher:
        for name in ("x", "y"):
            create(pool, name, "8Gi", 1, {NEVER_READY_ANNOTATION: "true"})
        first = wait_for(bound, lambda ps: len(ps) >= 1, 60, "one never-Ready pod bound")[0]
        waiting = next(p for n in ("x", "y") for p in managed_pods(pool, n) if p.metadata.name != first.metadata.name)
        # While the first one starts, the scheduler is told who is waited for.
        wait_for(lambda: refusals(waiting), lambda ms: any(f"{first.metadata.name} is starting there" in m
                                                           for m in ms),
                 timeout_s, "a FailedScheduling event naming the starting pod")
        both = wait_for(bound, lambda ps: len(ps) == 2, timeout_s + 60, "the second pod bound after the timeout")
    assert watcher.violations == []
    assert both[0].metadata.name == first.metadata.name and not any(is_ready(p) for p in both)
    delay = bound_at(both[1]) - bound_at(first)
    # Bound once the first pod's start timed out (to the second), and promptly then: the controller woke up at the
    # timeout and nudged it (the scheduler's own retry of an unschedulable pod can take up to 5 minutes).
    assert timeout_s - 1 <= delay <= timeout_s + 15, f"bound {delay:.0f}s after the first pod"


def test_a_rollout_on_a_full_plan_completes_one_start_per_gpu(pool: Pool) -> None:
    pool.add_nodes({"big": (2, "80Gi")})
    pool.start()
    # Two models, each with a replica on both GPUs: no third replica fits a GPU, and every replacement starts next
    # to a pod of the other model. 30Gi: with the memory headroom (1Gi reserve, 3Gi overhead, 0.5Gi context) two
    # footprints take 68 of 80Gi, which leaves KV cache memory (36Gi would leave none: the packer refuses that).
    full = {"a": "30Gi", "b": "30Gi"}
    with GateWatcher(pool.kube, pool.namespace) as watcher:
        for name, size in full.items():
            create(pool, name, size, 2, {START_DELAY_ANNOTATION: "2s"})
        wait_settled(pool, list(full), timeout_s=150)
        old = {p.metadata.name for p in managed_pods(pool, "a")}
        client.AppsV1Api(pool.kube).patch_namespaced_deployment("a", pool.namespace, {"spec": {"template": {
            "spec": {"containers": [{"name": "server", "image": "registry.invalid/kvsched/fake:v2"}]}}}})

        def rolled() -> bool:
            pods = managed_pods(pool, "a")
            return (len(pods) == 2 and not {p.metadata.name for p in pods} & old
                    and all(p.spec.containers[0].image.endswith(":v2") and is_ready(p) for p in pods))

        wait_for(lambda: None, lambda _: rolled(), 180, "deployment a rolled out on a full plan")
        wait_settled(pool, list(full), timeout_s=120)
    assert watcher.violations == []
    assert watcher.events > 0
