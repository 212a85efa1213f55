"""Run a Prometheus (built into the e2e cache by build.sh) on 127.0.0.1 scraping given targets, and query it.

Called by tests/e2e/test_dashboard_queries.py and `make cluster` (hack/cluster.py). Prometheus keeps its TSDB in
the caller's work dir; the process is a harness `Component`, stopped by process group.
"""
from __future__ import annotations

import json
import math
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import yaml

from .processes import Component, free_port, http_ok

READY_TIMEOUT_S = 60.0


def start_prometheus(binary: Path, workdir: Path, targets: dict[str, str], scrape_interval_s: float = 1.0,
                     log_dir: Path | None = None) -> tuple[Component, str]:
    """Start Prometheus scraping `targets` (job name -> host:port, path /metrics) and wait until it is ready.

    Returns the component and its base URL. Raises ComponentFailed if it exits or is not ready in time.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    interval = f"{int(scrape_interval_s * 1000)}ms"
    config = {
        "global": {"scrape_interval": interval, "scrape_timeout": interval, "evaluation_interval": interval},
        "scrape_configs": [{"job_name": job, "static_configs": [{"targets": [target]}]}
                           for job, target in targets.items()],
    }
    (workdir / "prometheus.yml").write_text(yaml.safe_dump(config, sort_keys=False))
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    prometheus = Component("prometheus", [
        str(binary), f"--config.file={workdir / 'prometheus.yml'}",
        f"--storage.tsdb.path={workdir / 'data'}", f"--web.listen-address=127.0.0.1:{port}",
        "--storage.tsdb.retention.time=1d", "--log.level=warn",
    ], (log_dir or workdir) / "prometheus.log").start()
    prometheus.wait_ready(lambda: http_ok(f"{url}/-/ready"), READY_TIMEOUT_S, "ready (/-/ready)")
    return prometheus, url


def instant_query(url: str, expr: str, timeout_s: float = 10.0) -> list[dict[str, Any]]:
    """The result vector of an instant query (empty when no series match). Raises RuntimeError naming the
    expression when Prometheus rejects it."""
    query = urllib.parse.urlencode({"query": expr})
    try:
        with urllib.request.urlopen(f"{url}/api/v1/query?{query}", timeout=timeout_s) as response:
            body = json.load(response)
    except urllib.error.HTTPError as e:
        body = json.load(e)
    if body.get("status") != "success":
        raise RuntimeError(f"Prometheus rejected {expr!r}: {body.get('errorType')}: {body.get('error')}")
    result = body["data"]["result"]
    return result if isinstance(result, list) else [{"value": result}]


def sample_values(result: list[dict[str, Any]]) -> list[float]:
    """The float value of every sample of an instant-query result."""
    return [float(r["value"][1]) for r in result]


def wait_for_samples(url: str, expr: str, timeout_s: float, finite: bool = True) -> list[dict[str, Any]]:
    """Query until `expr` returns at least one sample (all finite when `finite`); returns the result.
    Raises TimeoutError with the last result."""
    deadline = time.monotonic() + timeout_s
    last: list[dict[str, Any]] = []
    while True:
        last = instant_query(url, expr)
        if last and (not finite or all(math.isfinite(v) for v in sample_values(last))):
            return last
        if time.monotonic() > deadline:
            raise TimeoutError(f"{expr!r} returned no{' finite' if finite else ''} data in {timeout_s:.0f}s: {last}")
        time.sleep(0.5)
