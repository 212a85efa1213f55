"""The liveness probe sees the work, not just the port: /healthz fails while the reconcile loop is stuck in a round
and, under `kvsched serve`, while the extender does not answer (a stalled extender with `ignorable: false` would
otherwise block every managed pod and never be restarted)."""
from __future__ import annotations

import http.server
import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import pytest

from kvsched.metrics import Metrics
from kvsched.runtime.controller import Controller, extender_answers, local_url, loop_stall_limit_s
from kvsched.runtime.http import HealthServer
from kvsched.settings import ControllerSettings


def get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


@pytest.mark.parametrize("problem, code", [(None, 200), ("reconcile loop stalled: no round finished", 503)])
def test_healthz_answers_what_alive_says(problem: str | None, code: int) -> None:
    server = HealthServer("127.0.0.1", 0, Metrics(), lambda: True, lambda: "leader: x",
                          alive=lambda: problem).start()
    try:
        status, body = get(f"http://127.0.0.1:{server.port}/healthz")
    finally:
        server.stop()
    assert status == code and body.strip() == (problem or "ok")


def controller(stalled_s: float, extender: str | None = None, budget_s: float = 5.0) -> Controller:
    reconciler: Any = SimpleNamespace(stalled_s=lambda: stalled_s)
    settings = ControllerSettings(time_budget_s=budget_s)
    return Controller(settings, Metrics(), reconciler, [], None, None,
                      extender_alive=None if extender is None else (lambda: extender))


@pytest.mark.parametrize("stalled_s, extender, budget_s, alive", [
    pytest.param(29.0, None, 5.0, True, id="idle between resyncs"),
    pytest.param(119.0, None, 5.0, True, id="a long round within the limit"),
    pytest.param(121.0, None, 5.0, False, id="a round stuck past 120 s"),
    pytest.param(121.0, None, 30.0, True, id="a 30 s budget allows 300 s"),
    pytest.param(10.0, "extender /healthz did not answer: timed out", 5.0, False, id="extender stalled"),
])
def test_the_controller_is_alive_while_its_loop_comes_round_and_the_extender_answers(
        stalled_s: float, extender: str | None, budget_s: float, alive: bool) -> None:
    problem = controller(stalled_s, extender, budget_s).alive()
    assert (problem is None) is alive
    if not alive:
        assert ("stalled" in problem) if extender is None else problem == extender  # type: ignore[operator]


def test_the_stall_limit_follows_the_time_budget() -> None:
    assert loop_stall_limit_s(ControllerSettings(time_budget_s=5.0)) == 120.0
    assert loop_stall_limit_s(ControllerSettings(time_budget_s=60.0)) == 600.0


@pytest.fixture
def healthy_extender() -> Iterator[int]:
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802
            self.send_response(200 if self.path == "/healthz" else 404)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield int(server.server_address[1])
    server.shutdown()
    server.server_close()


@pytest.fixture
def stalled_extender() -> Iterator[int]:
    """A port that accepts connections and never answers (an event loop that is stuck)."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    yield int(listener.getsockname()[1])
    listener.close()


def test_an_answering_extender_is_alive(healthy_extender: int) -> None:
    assert extender_answers(local_url("0.0.0.0", healthy_extender)) is None


def test_a_stalled_extender_is_reported_within_the_timeout(stalled_extender: int) -> None:
    started = time.monotonic()
    problem = extender_answers(local_url("127.0.0.1", stalled_extender), timeout_s=0.5)
    assert problem is not None and "did not answer" in problem
    assert time.monotonic() - started < 3.0


def test_an_extender_that_is_not_listening_is_reported() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])  # closed again below: nothing listens there
    problem = extender_answers(local_url("127.0.0.1", port), timeout_s=0.5)
    assert problem is not None and "did not answer" in problem


@pytest.mark.parametrize("host, url", [("0.0.0.0", "http://127.0.0.1:8888"), ("", "http://127.0.0.1:8888"),
                                       ("10.0.0.5", "http://10.0.0.5:8888"), ("::1", "http://[::1]:8888")])
def test_the_extender_is_reached_where_it_listens(host: str, url: str) -> None:
    assert local_url(host, 8888) == url
