"""Smoke test of bench/load.py's parts that need no control plane (the bench itself runs one: too slow here):
the pods it creates, its samplers and figures, and the idle-connection probe against the real health server."""
from __future__ import annotations

import os
import time

from bench.load import (
    RssSampler, RunFigures, bench_pod, format_run, healthz_with_idle_connections, median_figures, percentiles,
)
from kvsched.api.names import MODEL_LABEL
from kvsched.metrics import Metrics
from kvsched.runtime.http import HealthServer


def test_bench_pods_are_other_tenants_pods_bound_to_a_node() -> None:
    pod = bench_pod(7, "bench-003")
    assert pod["spec"]["nodeName"] == "bench-003"
    assert MODEL_LABEL not in pod["metadata"]["labels"]
    assert pod["metadata"]["name"] == "web-00007" and "uid" not in pod["metadata"]
    assert all("nvidia.com/gpu" not in c["resources"].get("requests", {}) for c in pod["spec"]["containers"])


def test_percentiles_and_medians() -> None:
    p = percentiles([i / 1000 for i in range(1, 101)])
    assert (p["n"], p["p50"], p["max"]) == (100, 51.0, 100.0) and 99.0 <= p["p99"] <= 100.0
    assert percentiles([]) == {"n": 0}
    runs = [RunFigures("x", rss_settled_mib=v, filter_replan_ms={"p99": v}) for v in (300.0, 100.0, 200.0)]
    summary = median_figures(runs)
    assert summary["rss_settled_mib"] == 200.0 and summary["filter_replan_ms"]["p99"] == 200.0
    assert "[x] median of 3 run(s)" in format_run(summary)


def test_rss_sampler_reads_this_process() -> None:
    sampler = RssSampler(os.getpid(), interval_s=0.01).start()
    try:
        assert sampler.now() > 1.0
    finally:
        sampler.stop()


def test_healthz_answers_with_idle_connections_open() -> None:
    server = HealthServer("127.0.0.1", 0, Metrics(), lambda: True, lambda: "leader").start()
    try:
        latencies, opened = healthz_with_idle_connections(server.port, 50, requests=20, open_s=4.0)
    finally:
        server.stop()
    assert opened >= 25 and latencies["n"] == 20 and latencies["p99"] > 0


def test_bench_run_load_writes_its_own_json() -> None:
    from bench.run import LOAD_JSON, parse_args

    args = parse_args(["--load", "--quick"])
    assert args.load and args.json == LOAD_JSON


def test_offline_store_figures_compare_whole_and_trimmed_pods() -> None:
    from bench.load import offline_store_mib, served_pod
    from kvsched.api.readers import read_pod
    from kvsched.api.trim import trim_pod

    pod = served_pod(3, "bench-001")
    assert pod["metadata"]["managedFields"][0]["fieldsV1"]["f:spec"]["f:containers"]
    assert read_pod(trim_pod(pod)) == read_pod(pod)
    figures = offline_store_mib(20, 2)
    assert figures["pods"] == 20 and figures["json_kib_per_pod"] > 5
    assert 0 < figures["after_shared_trimmed_mib"] < figures["whole_one_store_mib"] < figures["before_two_stores_mib"]


def test_filter_load_clients_are_processes_that_report_every_answer() -> None:
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from bench.load import FilterLoad

    class Answer(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:
            self.rfile.read(int(self.headers["Content-Length"]))
            code = 200 if self.path == "/filter" else 404
            self.send_response(code)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"{}")

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Answer)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        load = FilterLoad(server.server_address[1], b'{"Pod": {}}', clients=2).start()  # back after 1st answers
        time.sleep(0.3)
        load.stop()
    finally:
        server.shutdown()
    assert load.failures == 0 and len(load.results) >= 2
    assert load.between(0.0, float("inf")) == [s for _, s in load.results]
    assert load.between(float("inf"), float("inf")) == []


def test_server_share_of_fast_filters_comes_from_the_histogram_deltas() -> None:
    from prometheus_client import generate_latest

    from bench.load import fast_pct, server_filter_counts

    def parse_metrics(text: str) -> dict[str, float]:  # as tests.e2e.harness.controller.read_metrics reads it
        return {k: float(v) for k, _, v in (line.rpartition(" ") for line in text.splitlines())
                if k and not k.startswith("#")}

    metrics = Metrics()
    for seconds in (0.001, 0.002, 0.02):
        metrics.extender_request_duration_seconds.labels(verb="filter").observe(seconds)
    metrics.extender_request_duration_seconds.labels(verb="bind").observe(0.001)
    before = server_filter_counts(parse_metrics(generate_latest(metrics.registry).decode()))
    assert before == (3.0, 2.0)
    for seconds in (0.003, 0.05, 0.06, 0.07):
        metrics.extender_request_duration_seconds.labels(verb="filter").observe(seconds)
    after = server_filter_counts(parse_metrics(generate_latest(metrics.registry).decode()))
    assert fast_pct(before, after) == 25.0 and fast_pct(after, after) == 0.0
