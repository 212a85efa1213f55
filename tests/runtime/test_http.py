"""kvsched.runtime.http.HealthServer: its endpoints, and idle connections do not hold threads (issue 16)."""
from __future__ import annotations

import socket
import time
import urllib.request
from collections.abc import Iterator

import pytest

from kvsched.metrics import Metrics
from kvsched.runtime.http import HealthServer


@pytest.fixture
def server() -> Iterator[HealthServer]:
    s = HealthServer("127.0.0.1", 0, Metrics(), ready=lambda: True, leadership=lambda: "leader: me",
                     idle_timeout_s=0.5).start()
    yield s
    s.stop()


@pytest.mark.parametrize("path, code, text", [("/healthz", 200, "ok"), ("/readyz", 200, "leader: me"),
                                              ("/metrics", 200, "kvsched_"), ("/nope", 404, "not found")])
def test_endpoints(server: HealthServer, path: str, code: int, text: str) -> None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{server.port}{path}", timeout=5) as r:
            status, body = r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        status, body = e.code, e.read().decode()
    assert status == code and text in body


def test_an_idle_connection_is_closed_after_the_timeout_and_the_server_still_answers(server: HealthServer) -> None:
    """A client that connects and sends nothing held a server thread for ever (no socket timeout)."""
    idle = socket.create_connection(("127.0.0.1", server.port), timeout=5)
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{server.port}/healthz", timeout=5) as r:
            assert r.status == 200  # answered while the idle connection is open
        started = time.monotonic()
        assert idle.recv(1) == b""  # EOF: the server closed it (a socket.timeout here means it never would)
        assert time.monotonic() - started < 4
    finally:
        idle.close()


def test_a_burst_of_connections_waits_in_the_listen_queue_not_for_syn_retransmits() -> None:
    # The server is not accepting (not started): the kernel completes each handshake into the listen queue. With
    # socketserver's backlog of 5 the 7th connect would wait for a SYN retransmit (1 s) and time out here.
    server = HealthServer("127.0.0.1", 0, Metrics(), lambda: True, lambda: "leader")
    sockets: list[socket.socket] = []
    try:
        for _ in range(64):
            sockets.append(socket.create_connection(("127.0.0.1", server.port), timeout=0.5))
    finally:
        for s in sockets:
            s.close()
        server.server.server_close()
    assert len(sockets) == 64
