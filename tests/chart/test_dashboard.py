"""The Grafana dashboard shipped with the chart: it is the generator's output, with the panels it should have.
That it reads only metrics kvsched exports, and shows each: test_names.py; the real-Prometheus evaluation of
every query: tests/e2e/test_dashboard_queries.py."""
from __future__ import annotations

import json

import pytest

from hack.dashboard import DASHBOARD_PATH, render


def committed() -> dict[str, object]:
    return json.loads(DASHBOARD_PATH.read_text())  # type: ignore[no-any-return]


def test_committed_dashboard_is_the_generators_output() -> None:
    assert DASHBOARD_PATH.read_text() == render(), "the dashboard is stale: run `make dashboard`"


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
