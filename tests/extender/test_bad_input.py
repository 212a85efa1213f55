"""Bad requests get a 4xx with a message (never a 5xx); health, readiness and metrics endpoints."""
from __future__ import annotations

import json

import pytest
from fastapi.testclient import TestClient

from kvsched.extender.app import create_app
from kvsched.metrics import Metrics
from kvsched.settings import ExtenderSettings

from .world import FakeBinder, args, model, node, pod, world

LIMIT = 4096
GOOD = json.dumps(args(pod("p", "llama"), names=["n1"])).encode()


def client(ready: bool = True, metrics: Metrics | None = None) -> TestClient:
    cache = world([node("n1")], [model("llama", "16Gi", [("n1", 0)])], [], ready=ready)
    return TestClient(create_app(ExtenderSettings(max_request_bytes=LIMIT), cache, FakeBinder(),
                                 metrics or Metrics()))


@pytest.mark.parametrize("verb, body, status, message", [
    pytest.param("filter", b"{not json", 400, "bad filter request", id="malformed JSON"),
    pytest.param("filter", GOOD[: len(GOOD) // 2], 400, "bad filter request", id="truncated JSON"),
    pytest.param("filter", b"", 400, "empty request body", id="empty body"),
    pytest.param("filter", b"[]", 400, "bad filter request", id="a list, not an object"),
    pytest.param("filter", json.dumps({"NodeNames": ["n1"]}).encode(), 400, "Pod", id="no Pod"),
    pytest.param("prioritize", json.dumps({"Pod": {}, "NodeNames": "n1"}).encode(), 400, "NodeNames",
                 id="NodeNames not a list"),
    pytest.param("prioritize", json.dumps({"Pod": {"metadata": {"labels": {"a": 1}}}}).encode(), 400,
                 "labels", id="label value not a string"),
    pytest.param("prioritize", json.dumps({"Pod": {}, "Nodes": {"items": [{"metadata": True}]}}).encode(), 400,
                 "Nodes.items[0].metadata.name", id="a Node whose metadata is not an object (found by fuzzing)"),
    pytest.param("filter", json.dumps({"Pod": {}, "Nodes": {"items": [{"metadata": {"name": 3}}]}}).encode(),
                 400, "Nodes.items[0].metadata.name", id="a Node name that is not a string"),
    pytest.param("bind", json.dumps({"PodNamespace": "ml", "Node": "n1"}).encode(), 400, "PodName",
                 id="bind without PodName"),
    pytest.param("bind", json.dumps({"PodName": "", "PodNamespace": "ml", "Node": "n1"}).encode(), 400,
                 "PodName", id="bind with empty PodName"),
    pytest.param("filter", b"{" + b" " * LIMIT + b"}", 413, "exceeds the limit", id="oversized body"),
])
def test_bad_requests_get_4xx_with_a_message(verb: str, body: bytes, status: int, message: str) -> None:
    metrics = Metrics()
    response = client(metrics=metrics).post(f"/{verb}", content=body, headers={"content-type": "application/json"})
    assert response.status_code == status
    assert message in response.json()["Error"]
    assert metrics.extender_requests.labels(verb=verb, outcome="bad_request")._value.get() == 1


def test_oversized_body_without_content_length_is_cut_off_while_reading() -> None:
    chunks = (b"x" * 1024 for _ in range(8))  # a generator: sent chunked, no Content-Length
    response = client().post("/filter", content=chunks, headers={"content-type": "application/json"})
    assert response.status_code == 413


@pytest.mark.parametrize("ready, status", [pytest.param(False, 503, id="not synced"),
                                           pytest.param(True, 200, id="synced")])
def test_readyz_follows_the_cache_and_healthz_is_always_ok(ready: bool, status: int) -> None:
    metrics = Metrics()
    c = client(ready=ready, metrics=metrics)
    assert c.get("/readyz").status_code == status
    assert c.get("/healthz").status_code == 200
    assert metrics.cache_synced._value.get() == (1 if ready else 0)
    assert c.get("/metrics").headers["content-type"].startswith("text/plain")
