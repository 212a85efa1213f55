"""Every PromQL query of the Grafana dashboard, evaluated by a real Prometheus scraping kvsched's metrics, returns
data (finite values).

The scraped process is tests/e2e/metrics_standin.py: kvsched's own registry (kvsched.metrics) with values recorded
every half second, so every query, rates and quantiles included, must give finite numbers. The same queries are
evaluated against a real `kvsched serve` placing the example in test_make_cluster.py (when serve is there).
Grafana's `$__rate_interval` becomes 10s, several scrapes wide at the 1 s scrape interval used here.
"""
from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from hack.dashboard import DASHBOARD_PATH, queries

from .harness.processes import Component, free_port, http_ok
from .harness.prometheus import start_prometheus, wait_for_samples
from .harness.tools import prometheus_path, unavailable

pytestmark = pytest.mark.e2e

RATE_INTERVAL = "10s"
DASHBOARD_QUERIES = queries(json.loads(DASHBOARD_PATH.read_text()))


def grafana_to_promql(expr: str) -> str:
    """Replace the Grafana variables the dashboard uses by what Grafana would send."""
    return expr.replace("$__rate_interval", RATE_INTERVAL)


@pytest.fixture(scope="module")
def prometheus_binary() -> Path:
    path = prometheus_path()
    if not os.access(path, os.X_OK):
        reason = f"Prometheus is not built: {path} is missing (run `make e2e-tools`)"
        unavailable(reason)
    return path


@pytest.fixture(scope="module")
def prometheus_url(prometheus_binary: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Prometheus scraping a process that exposes kvsched.metrics every second."""
    workdir = tmp_path_factory.mktemp("prometheus")
    port = free_port()
    kvsched = Component("kvsched-metrics", [sys.executable, "-m", "tests.e2e.metrics_standin", f"--metrics-port={port}"],
                        workdir / "kvsched-metrics.log").start()
    prometheus = None
    try:
        kvsched.wait_ready(lambda: http_ok(f"http://127.0.0.1:{port}/metrics"), 30.0, "serving /metrics")
        prometheus, url = start_prometheus(prometheus_binary, workdir, {"kvsched": f"127.0.0.1:{port}"})
        wait_for_samples(url, 'up{job="kvsched"} == 1', 30.0)
        yield url
    finally:
        if prometheus is not None:
            prometheus.stop()
        kvsched.stop()


def test_the_dashboard_has_queries() -> None:
    assert len(DASHBOARD_QUERIES) >= 10


@pytest.mark.parametrize("expr", DASHBOARD_QUERIES)
def test_every_dashboard_query_returns_data(prometheus_url: str, expr: str) -> None:
    # Rates need two scrapes inside the window; the first queries wait for them.
    result = wait_for_samples(prometheus_url, grafana_to_promql(expr), timeout_s=30.0)
    assert result
