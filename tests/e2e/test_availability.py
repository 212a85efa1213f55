"""Availability while kvsched re-plans (issue 17, part 2), end to end: `kvsched serve` and a kube-scheduler with the
`kvsched` profile on KWOK GPU nodes whose pods take START_DELAY to become Ready (the harness's KWOK stages).

A watcher (harness/availability.py) follows the namespace's pods and Deployments and keeps, per model, how many
replicas serve (Ready, not terminating, not on a lost node) over time. Where a model serves fewer than it wants,
a cause must explain it: an eviction of one of its pods (break-before-make: a stop-first step, a restart in place
for a memory share, a move whose target has no room yet), read from the apiserver's audit log (`create
pods/eviction` by kvsched's ServiceAccount, answered 201, with the time the apiserver received it), or a replica on
the node the test took away; n causes allow at most n replicas below wanted, and every dip must end. A
make-before-break move is seen as the Deployment carrying kvsched's surge record; meanwhile the model serves at
least what it wants, and its ModelServing's `Migrating` condition stays True (from 3 s in, the status round's lag).
Every step kvsched counts (`kvsched_migrations_total`) must be one of those surges or
evictions, so the watcher saw them all.

Scenarios: (1) rebalance: a node added to a full pool spreads the replicas; one-replica models move to the new
GPUs make-before-break; (2) node loss: a node is deleted; its replicas come back elsewhere and no other model goes
below what it wants except through evictions. Each prints its figures (the fewest serving per model, time to all
serving, surges and evictions).
"""
from __future__ import annotations

import time

import pytest
from kubernetes import client

from .harness import audit
from .harness.availability import AvailabilityWatcher, audited_evictions
from .harness.cluster import START_DELAY_ANNOTATION
from .harness.example import migrations
from .harness.kube import wait_for
from .test_controller import (  # noqa: F401 (`pool` is the fixture)
    KNOBS, Pool, annotated, managed_pods, pool, serving, slot_set, wait_settled,
)
from .test_start_gate import with_pod_annotations

pytestmark = pytest.mark.e2e

START_DELAY_S = 5
# name: (size, rate, replicas). 10Gi engines: with the default headroom (1Gi reserve, 3Gi overhead, 0.5Gi context)
# four fit an 80Gi GPU.
MODELS = {"solo1": ("10Gi", 2.0, 1), "solo2": ("10Gi", 2.0, 1), "solo3": ("10Gi", 2.0, 1), "duo": ("10Gi", 2.0, 2)}
LOSS_MODELS = {"solo": ("20Gi", 2.0, 1), "duo": ("10Gi", 2.0, 2), "trio": ("10Gi", 1.0, 3)}


def create(pool: Pool, models: dict[str, tuple[str, float, int]]) -> None:
    apps = client.AppsV1Api(pool.kube)
    for name, (size, rate, replicas) in models.items():
        apps.create_namespaced_deployment(pool.namespace, with_pod_annotations(
            annotated(name, size, rate, "1", replicas), {START_DELAY_ANNOTATION: f"{START_DELAY_S}s"}))


def evictions_since(pool: Pool, since: float) -> list[tuple[float, str]]:
    plane = pool.plane
    assert plane.creds is not None
    audit.fence(plane.server, plane.creds.admin_token, plane.creds.ca_cert, plane.audit_log)
    return audited_evictions(plane.audit_log, pool.namespace, since)


def report(title: str, watcher: AvailabilityWatcher, since: float, evictions: list[tuple[float, str]]) -> float:
    """Print the scenario's figures; returns the time from `since` to every model serving what it wants (s)."""
    a = watcher.availability
    back = a.back_at(since)
    assert back is not None, f"not every model serves what it wants: {a.unexplained(since, evictions)}"
    print(f"\n{title}: every model serving its wanted replicas {back - since:.1f}s after the change "
          f"(start delay {START_DELAY_S}s)")
    for model in sorted(a.wanted):
        surges = [s for s in a.surge_lows(model) if s[0] >= since - 1]
        evicted = [pod for _, pod in evictions if a.model_of.get(pod) == model]
        print(f"  {model}: wanted {a.wanted[model]}, fewest serving {a.lowest(model, since)}, "
              f"{len(surges)} make-before-break move(s) (fewest serving meanwhile "
              f"{min((s[2] for s in surges), default='-')}), {len(evicted)} eviction(s), lost "
              f"{len([p for t, p in a.lost_pods.get(model, []) if t >= since])}")
    return back - since


def surges_since(watcher: AvailabilityWatcher, since: float) -> dict[str, list[tuple[float, float | None, int]]]:
    a = watcher.availability
    return {m: [s for s in a.surge_lows(m) if s[0] >= since - 1] for m in a.wanted}


def stable_while_surging(watcher: AvailabilityWatcher, surges: dict[str, list[tuple[float, float | None, int]]],
                         lag_s: float = 3.0) -> list[str]:
    """Models whose `Migrating` condition was False during a surge of theirs, from `lag_s` after it began (the
    round that writes the status after the surge) to its end: the status hid a move in progress."""
    a = watcher.availability
    out = []
    for model, spans in sorted(surges.items()):
        for start, end, _ in spans:
            if end is None or end - start <= lag_s:
                continue
            seen = a.conditions_during(model, start + lag_s, end)
            print(f"  {model}: Migrating during its surge {start:.1f}..{end:.1f}: {seen}")
            if not seen or any(status != "True" for status, _ in seen):
                out.append(f"{model}: {seen}")
    return out


def test_a_rebalance_keeps_every_model_serving_but_for_its_evictions(pool: Pool) -> None:
    pool.add_nodes({"a": (2, "80Gi")})
    proc = pool.start(knobs=KNOBS)
    wanted = {name: replicas for name, (_, _, replicas) in MODELS.items()}
    with AvailabilityWatcher(pool.kube, pool.namespace, wanted) as watcher:
        create(pool, MODELS)
        wait_settled(pool, list(MODELS), timeout_s=180)
        before = proc.metrics()
        since = time.time()
        pool.add_nodes({"b": (2, "80Gi")})
        new = f"{pool.label}-b"
        wait_for(lambda: [serving(pool, n) for n in MODELS],
                 lambda ss: any(node == new for ms in ss for node, _ in slot_set(ms)), 60,
                 f"a re-plan that uses node {new}")
        wait_settled(pool, list(MODELS), timeout_s=240)
        after = proc.metrics()
    evictions = evictions_since(pool, since)
    assert watcher.failures == []
    took = report("rebalance (a node of 2 GPUs added to a full one)", watcher, since, evictions)
    a = watcher.availability
    assert a.unexplained(since, evictions) == []
    surges = surges_since(watcher, since)
    # Make-before-break: while a model's Deployment surges, it serves at least what it wants; the one-replica
    # models are never down then.
    assert all(low >= wanted[m] for m, spans in surges.items() for _, end, low in spans if end is not None), surges
    assert all(end is not None for spans in surges.values() for _, end, _ in spans), "a surge never ended"
    assert stable_while_surging(watcher, surges) == []
    # The world is built for it: the new GPUs take replicas of one-replica models, moved make-before-break.
    moved_solo = [m for m in MODELS if wanted[m] == 1 and surges[m]]
    assert moved_solo, f"no one-replica model moved make-before-break: surges {surges}, evictions {evictions}"
    assert any(p.spec.node_name == new for m in MODELS for p in managed_pods(pool, m))
    # Every step kvsched made is a surge or an eviction the watcher saw.
    assert migrations(after) - migrations(before) == sum(len(s) for s in surges.values()) + len(evictions)
    assert took < 120


def test_a_node_loss_takes_no_other_model_below_wanted_but_for_its_evictions(pool: Pool) -> None:
    pool.add_nodes({"a": (2, "80Gi"), "b": (2, "80Gi"), "c": (2, "80Gi")})
    proc = pool.start(knobs=KNOBS)
    wanted = {name: replicas for name, (_, _, replicas) in LOSS_MODELS.items()}
    with AvailabilityWatcher(pool.kube, pool.namespace, wanted) as watcher:
        create(pool, LOSS_MODELS)
        wait_settled(pool, list(LOSS_MODELS), timeout_s=180)
        # The node of the one-replica model goes, and every replica on it.
        lost = managed_pods(pool, "solo")[0].spec.node_name
        on_lost = {m for m in LOSS_MODELS for p in managed_pods(pool, m) if p.spec.node_name == lost}
        before = proc.metrics()
        since = watcher.node_lost(lost)
        client.CoreV1Api(pool.kube).delete_node(lost)
        pool.nodes.remove(lost)  # gone: `wait_settled` pokes a node of the pool
        wait_for(lambda: [serving(pool, n) for n in LOSS_MODELS],
                 lambda ss: not any(node == lost for ms in ss for node, _ in slot_set(ms)), 60,
                 f"a re-plan without node {lost}")
        wait_settled(pool, list(LOSS_MODELS), timeout_s=300)
        after = proc.metrics()
    evictions = evictions_since(pool, since)
    assert watcher.failures == []
    took = report(f"node loss ({lost}, replicas of {sorted(on_lost)})", watcher, since, evictions)
    a = watcher.availability
    others = [m for m in LOSS_MODELS if m not in on_lost]
    assert a.unexplained(since, evictions, models=others) == []  # kvsched's re-plan, on models the loss spared
    assert a.unexplained(since, evictions, models=sorted(on_lost)) == []  # the lost ones: the loss and evictions
    surges = surges_since(watcher, since)
    assert all(end is not None for spans in surges.values() for _, end, _ in spans), "a surge never ended"
    assert stable_while_surging(watcher, surges) == []
    assert all(p.spec.node_name != lost for m in LOSS_MODELS for p in managed_pods(pool, m))
    assert migrations(after) - migrations(before) == sum(len(s) for s in surges.values()) + len(evictions)
    assert took < 150
