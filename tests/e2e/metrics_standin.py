"""A process that serves kvsched's real metrics registry (kvsched.metrics) with recorded values: every metric the
dashboard reads gets samples, and the counters and histograms move every half second so rates and quantiles have
data (a real `kvsched serve` moves some of them only when something happens: a migration, a bind conflict; the
real one is scraped in test_make_cluster.py).

Run: python -m tests.e2e.metrics_standin --metrics-port PORT   (GET /metrics, /healthz, /readyz; SIGTERM stops
it). Other flags (those the chart passes to `kvsched serve`) are accepted and ignored, so the `make cluster` test
can run it in place of `kvsched serve`. Used by tests/e2e/test_dashboard_queries.py and test_make_cluster.py.
"""
from __future__ import annotations

import argparse
import signal
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Sequence

from kvsched.metrics import CONTENT_TYPE, GpuSample, Metrics


def record(metrics: Metrics, tick: int) -> None:
    """One round of what the controller and the extender record (a re-plan, models, requests, a migration)."""
    gpus = [GpuSample(node=f"gpu-node-{n}", gpu=g, kvpr=0.3 + 0.05 * g + 0.01 * (tick % 5),
                      memory_used_bytes=(16 + 4 * g) * 2**30) for n in ("a", "b") for g in range(2)]
    metrics.record_plan(max_kvpr=max(g.kvpr for g in gpus), lower_bound=0.3, retunes=tick % 3,
                        solve_seconds=0.02 + 0.001 * (tick % 7), gpus=gpus)
    metrics.record_models({"placed": 3, "partial": 1, "migrating": tick % 2})
    metrics.migrations.labels(reason="Rebalance" if tick % 2 else "Resize").inc()
    metrics.watch_relisted("pods")
    metrics.watch_failed("pods")
    metrics.is_leader.set(1)
    metrics.cache_synced.set(1)
    for verb, seconds in (("filter", 0.001), ("prioritize", 0.0008), ("bind", 0.02)):
        metrics.extender_requests.labels(verb=verb, outcome="ok").inc()
        metrics.extender_request_duration_seconds.labels(verb=verb).observe(seconds * (1 + tick % 3))
    if tick % 4 == 0:
        metrics.bind_conflicts.inc()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--metrics-port", dest="port", type=int, required=True)
    args, _ = parser.parse_known_args(argv)
    metrics = Metrics()
    record(metrics, 0)

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server's name)
            if self.path == "/metrics":
                body, content_type = metrics.exposition(), CONTENT_TYPE
            elif self.path in ("/healthz", "/readyz"):
                body, content_type = b"ok", "text/plain"
            else:
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", args.port), Handler)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    threading.Thread(target=server.serve_forever, daemon=True).start()
    tick = 0
    while not stop.wait(0.5):
        tick += 1
        record(metrics, tick)
    server.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
