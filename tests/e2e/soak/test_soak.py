"""Soak (issue 13): 20 random changes over about 10 minutes on the bundled example (`make cluster`), and kvsched
evicts exactly what its re-plans report, never one model's pods more often than it has replicas per change.

Changes, drawn with a fixed seed (KVSCHED_SOAK_SEED to vary it): a rate x0.5-x2, a replica count +-1, a Deployment
deleted and created again, a node cordoned then uncordoned, a node deleted and created again. After each change
the example must settle (every model Placed, its pods on its slots, Ready); the evictions since the change
(kvsched_migrations_total) must equal the moves + share restarts decided for it (kvsched_replan_steps_total). A
Deployment deleted and created again, a node cordoned then uncordoned, a node deleted and created again are two
changes: the second re-plan may drop steps of the first not yet taken (so at most that many evictions), and a
replica may move once for each. Each change starts on its own 30 s slot. Prints a summary of the totals at the end. Run with `make soak`.
"""
from __future__ import annotations

import os
import random
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from kubernetes import client

from hack.cluster import EXAMPLE, example_deployments, example_nodes
from ..harness.example import NAMESPACE, ExampleCluster, migrations, placements, planned_steps
from ..harness.kube import create_gpu_nodes
from ..harness.tools import locate_tools, prometheus_path

pytestmark = [pytest.mark.e2e, pytest.mark.soak]
CHANGES = 20
SLOT_S = 30.0
SETTLE_S = 120.0


@pytest.fixture(scope="module")
def example(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ExampleCluster]:
    tools = locate_tools()
    missing = [str(p) for p in (tools.kube_apiserver, tools.helm, prometheus_path()) if not p.exists()]
    if missing:
        pytest.fail(f"the soak needs the e2e cache: missing {', '.join(missing)} (run `make e2e-tools`)",
                    pytrace=False)
    cluster = ExampleCluster(Path(tmp_path_factory.mktemp("soak")) / "cluster").start()
    try:
        yield cluster
    finally:
        cluster.stop()


def change(cluster: ExampleCluster, rng: random.Random) -> str:
    apps, core = client.AppsV1Api(cluster.api), client.CoreV1Api(cluster.api)
    names = sorted(d.metadata.name for d in apps.list_namespaced_deployment(NAMESPACE).items)
    kind = rng.choice(["rate", "rate", "rate", "replicas", "replicas", "recreate", "cordon", "node"])
    name = rng.choice(names)
    if kind == "rate":
        factor = round(rng.uniform(0.5, 2.0), 2)
        cluster.patch_rate(name, cluster.rate(name) * factor)
        return f"rate x{factor} on {name}"
    if kind == "replicas":
        dep = apps.read_namespaced_deployment(name, NAMESPACE)
        replicas = max(1, dep.spec.replicas + rng.choice([-1, 1]))
        apps.patch_namespaced_deployment_scale(name, NAMESPACE, {"spec": {"replicas": replicas}})
        return f"{name} scaled {dep.spec.replicas} -> {replicas}"
    if kind == "recreate":
        manifest = next(m for m in example_deployments(EXAMPLE) if m["metadata"]["name"] == name)
        dep = apps.read_namespaced_deployment(name, NAMESPACE)
        manifest["spec"]["replicas"] = dep.spec.replicas
        manifest["metadata"]["annotations"] = dict(dep.metadata.annotations or {})
        apps.delete_namespaced_deployment(name, NAMESPACE, propagation_policy="Foreground")
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                apps.read_namespaced_deployment(name, NAMESPACE)
            except client.ApiException as e:
                if e.status == 404:
                    break
            time.sleep(0.5)
        apps.create_namespaced_deployment(NAMESPACE, manifest)
        return f"Deployment {name} deleted and created again"
    node = rng.choice([n["metadata"]["name"] for n in example_nodes(EXAMPLE)])
    if kind == "cordon":
        core.patch_node(node, {"spec": {"unschedulable": True}})
        cluster.wait_settled(SETTLE_S, f"after cordoning {node}", allow_unschedulable=True)
        core.patch_node(node, {"spec": {"unschedulable": False}})
        return f"node {node} cordoned, then uncordoned once settled"
    manifest = next(n for n in example_nodes(EXAMPLE) if n["metadata"]["name"] == node)
    core.delete_node(node)
    cluster.wait_settled(SETTLE_S, f"after deleting node {node}", allow_unschedulable=True)
    create_gpu_nodes(core, [manifest])
    return f"node {node} deleted, then created again once settled"


def test_twenty_random_changes_evict_what_the_replans_report(example: ExampleCluster) -> None:
    rng = random.Random(int(os.environ.get("KVSCHED_SOAK_SEED", "13")))
    example.wait_settled(180.0, "the example's first placement")
    start = time.monotonic()
    first = migrations(example.metrics())
    rows: list[tuple[str, float, int, float]] = []
    failures: list[str] = []
    for i in range(CHANGES):
        slot = start + i * SLOT_S
        time.sleep(max(0.0, slot - time.monotonic()))
        before = migrations(example.metrics())
        steps_before = planned_steps(example.metrics())
        events_before = example.eviction_events()
        what = change(example, rng)
        began = time.monotonic()
        settled = True
        try:
            example.wait_settled(SETTLE_S, what)
        except AssertionError:
            settled = False
        now = example.metrics()
        evicted = migrations(now) - before
        reported = int(planned_steps(now) - steps_before)
        per_model = Counter(n for n, _ in example.new_eviction_events(events_before))
        replicas = {m["metadata"]["name"]: (m.get("status") or {}).get("replicas", 0) for m in example.servings()}
        rows.append((what, evicted, reported, time.monotonic() - began))
        if not settled:
            failures.append(f"change {i + 1} ({what}): not settled after {SETTLE_S:.0f}s: {example.unsettled()[:4]}")
        # A Deployment deleted and created again, a node cordoned then uncordoned, a node deleted and created
        # again: two changes, two re-plans. The second may drop steps of the first not yet taken, and a replica
        # may move once for each.
        changes = 2 if what.startswith(("Deployment ", "node ")) else 1
        superseded = changes == 2
        if evicted > reported or (evicted != reported and not superseded):
            failures.append(f"change {i + 1} ({what}): {evicted:.0f} evictions, its re-plans called for "
                            f"{reported} steps")
        over = {n: c for n, c in per_model.items() if c > changes * replicas.get(n, 0)}
        if over:
            failures.append(f"change {i + 1} ({what}): models evicted more often than they have replicas: {over}")
    total = migrations(example.metrics()) - first
    print("\nsoak summary (issue 13):")
    for i, (what, evicted, reported_total, took) in enumerate(rows, 1):
        print(f"  {i:2d}. {what:<60} evictions {evicted:3.0f}  reported {reported_total:3d}  settled in {took:5.1f}s")
    print(f"  {len(rows)} changes in {time.monotonic() - start:.0f}s: {total:.0f} evictions, "
          f"{sum(r[2] for r in rows)} reported moves + restarts, {placements(example.metrics()):.0f} solves")
    assert not failures, "\n".join(failures)
