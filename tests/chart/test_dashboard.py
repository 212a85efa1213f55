"""The Grafana dashboard shipped with the chart: it is the generator's output, and it reads only metrics that
kvsched exports (the real-Prometheus evaluation of every query is in tests/e2e/test_dashboard_queries.py)."""
from __future__ import annotations

import json
import re

import pytest
from prometheus_client.parser import text_string_to_metric_families

from hack.dashboard import DASHBOARD_PATH, metric_names, queries, render
from kvsched.metrics import GpuSample, Metrics


def exported_series_names() -> set[str]:
    """Every sample name kvsched's registry exposes once each metric has a value."""
    m = Metrics()
    m.record_plan(max_kvpr=0.5, lower_bound=0.4, retunes=1, solve_seconds=0.1,
                  gpus=[GpuSample(node="n1", gpu=0, kvpr=0.5, memory_used_bytes=1.0)])
    m.migrations.labels(reason="Rebalance").inc()
    m.watch_known("pods")
    m.extender_requests.labels(verb="filter", outcome="ok").inc()
    m.extender_request_duration_seconds.labels(verb="filter").observe(0.001)
    families = text_string_to_metric_families(m.exposition().decode())
    return {sample.name for family in families for sample in family.samples}


def committed() -> dict[str, object]:
    return json.loads(DASHBOARD_PATH.read_text())  # type: ignore[no-any-return]


def test_committed_dashboard_is_the_generators_output() -> None:
    assert DASHBOARD_PATH.read_text() == render(), "the dashboard is stale: run `make dashboard`"


def test_every_metric_the_dashboard_reads_is_exported() -> None:
    exprs = queries(committed())
    used = set().union(*(metric_names(e) for e in exprs))
    assert used, "the dashboard has no kvsched query"
    assert used - exported_series_names() == set()


def test_every_metric_kvsched_exports_is_on_the_dashboard() -> None:
    used = set().union(*(metric_names(e) for e in queries(committed())))
    on_board = {re.sub(r"_(total|bucket|count|sum)$", "", name) for name in used}
    m = Metrics()
    m.watch_known("pods")
    families = {f.name for f in text_string_to_metric_families(m.exposition().decode())
                if not f.name.endswith("_created")}  # the client's creation timestamps, not metrics
    assert families - on_board == set(), "metrics exported but not on the dashboard"


@pytest.mark.parametrize("title", [
    "Max KVPR and its lower bound", "KVPR per GPU", "GPU memory used by model weights", "Retunes per minute",
    "Placement duration", "Models by state", "Migrations", "Extender p99 latency by verb",
    "Extender requests and bind conflicts", "Leader and cache", "Watch relists and errors", "Decisions and re-plans",
])
def test_dashboard_has_the_panel(title: str) -> None:
    panels = {p["title"]: p for p in committed()["panels"]}  # type: ignore[attr-defined]
    assert title in panels
    assert panels[title]["targets"], title
    assert all(t["datasource"] == {"type": "prometheus", "uid": "${datasource}"} for t in panels[title]["targets"])


def test_dashboard_has_a_datasource_variable_and_unique_panel_ids() -> None:
    model = committed()
    [variable] = model["templating"]["list"]  # type: ignore[index]
    assert (variable["type"], variable["name"], variable["query"]) == ("datasource", "datasource", "prometheus")
    ids = [p["id"] for p in model["panels"]]  # type: ignore[index]
    assert len(ids) == len(set(ids)) and 0 not in ids
