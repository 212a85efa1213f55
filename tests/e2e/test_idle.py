"""The bundled example on `make cluster` is left alone when nothing changes, and one change costs exactly the
evictions its re-plan reports (issue 13).

`python -m hack.cluster` runs as `make cluster` does (control plane, KWOK GPU nodes from examples/cluster.yaml, the
chart, `kvsched serve`, kube-scheduler, Prometheus) and creates the example's 30 Deployments (38 replicas). Once
every model is Placed and every pod bound and Ready:
1. IDLE_S of an unchanged cluster, /metrics sampled every few seconds: the first eviction fails the test;
   at the end no ModelServing was written and kvsched solved (almost) nothing.
2. One rate change (llama-3.1-8b-instruct x3): the evictions (kvsched_migrations_total, and kvsched's Migrating
   events) equal the moves + share restarts its re-plan called for (kvsched_replan_steps_total), no model loses more pods than it
   has replicas, and then AFTER_S more of quiet: no eviction, no ModelServing write.
Takes ~4 minutes (about 1 to start and place, IDLE_S, the change, AFTER_S).
"""
from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from kvsched.controller import DecisionConfig

from .harness.example import NAMESPACE, ExampleCluster, migrations, planned_steps, watch_idle
from .harness.headroom import cluster_violations
from .harness.tools import locate_tools, prometheus_path, unavailable
from .test_make_cluster import has_serve

pytestmark = pytest.mark.e2e
IDLE_S = 120.0
AFTER_S = 40.0
CHANGED = "llama-3.1-8b-instruct"


@pytest.fixture(scope="module")
def example(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ExampleCluster]:
    tools = locate_tools()
    missing = [str(p) for p in (tools.kube_apiserver, tools.helm, prometheus_path()) if not p.exists()]
    if missing or not has_serve():
        reason = (f"make cluster needs the e2e cache: missing {', '.join(missing)} (run `make e2e-tools`)" if missing
                  else "this kvsched has no `serve`")
        unavailable(reason)
    cluster = ExampleCluster(Path(tmp_path_factory.mktemp("idle")) / "cluster").start()
    try:
        yield cluster
    finally:
        cluster.stop()


def test_example_idle_writes_nothing_and_one_rate_change_evicts_what_the_replan_reports(
        example: ExampleCluster) -> None:
    placed_s = example.wait_settled(180.0, "the example's first placement")
    # The chart's default headroom (values.yaml: the settings' defaults) on every GPU of the 38 replicas.
    assert cluster_violations(example.api, NAMESPACE, DecisionConfig().headroom()) == []
    first_evictions = migrations(example.metrics())
    assert first_evictions == 0, (
        f"the example's first placement evicted {first_evictions:.0f} pods (a first plan overturned): "
        f"{list(example.eviction_events().values())[:5]}")

    # 1. Idle: the test window itself (sampled; fails at the first eviction).
    idle = watch_idle(example, IDLE_S)
    assert idle["written"] == 0, (
        f"{IDLE_S:.0f}s of an unchanged cluster wrote {idle['written']:.0f} ModelServing(s): "
        f"{idle['written_names']}")  # type: ignore[str-format]
    assert idle["solves"] <= 1, f"{IDLE_S:.0f}s of an unchanged cluster solved {idle['solves']:.0f} plans"

    # 2. One rate change.
    before = example.metrics()
    events_before = example.eviction_events()
    rate = example.rate(CHANGED)
    generation = next(m for m in example.servings() if m["metadata"]["name"] == CHANGED)["metadata"]["generation"]
    example.patch_rate(CHANGED, rate * 3)
    start = time.monotonic()
    while time.monotonic() - start < 180.0:
        changed = next(m for m in example.servings() if m["metadata"]["name"] == CHANGED)
        # The controller first copies the annotation into its ModelServing's spec (a new generation), then
        # re-plans and writes a status that observed it.
        if changed["metadata"]["generation"] > generation \
                and (changed.get("status") or {}).get("observedGeneration") == changed["metadata"]["generation"] \
                and not example.unsettled():
            break
        time.sleep(0.5)
    example.wait_settled(60.0, f"after the rate change on {CHANGED}")
    assert cluster_violations(example.api, NAMESPACE, DecisionConfig().headroom()) == []
    now = example.metrics()
    evicted = migrations(now) - migrations(before)
    reported = planned_steps(now) - planned_steps(before)
    events = example.new_eviction_events(events_before)
    per_model = Counter(name for name, _ in events)
    replicas = {m["metadata"]["name"]: (m.get("status") or {}).get("replicas", 0) for m in example.servings()}
    over = {n: c for n, c in per_model.items() if c > replicas.get(n, 0)}
    assert not over, f"models evicted more often than they have replicas for one change: {over}"
    assert reported > 0, "a rate x3 on the busiest model should call for some steps"
    assert evicted == reported, (
        f"the rate change evicted {evicted:.0f} pods; the controller decided {reported:.0f} moves and share "
        f"restarts for it (kvsched_replan_steps_total); evictions by model {dict(per_model)}")

    # 3. Quiet again.
    after = watch_idle(example, AFTER_S)
    assert after["written"] == 0, (
        f"{AFTER_S:.0f}s after the change settled, {after['written']:.0f} ModelServing(s) were written: "
        f"{after['written_names']}")  # type: ignore[str-format]
    print(f"example placed in {placed_s:.0f}s; idle {IDLE_S:.0f}s: 0 evictions, {idle['solves']:.0f} solves; "
          f"rate x3 on {CHANGED}: {evicted:.0f} evictions = {reported:.0f} steps decided")
