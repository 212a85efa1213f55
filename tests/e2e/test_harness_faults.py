"""The harness's fault tools on their own, without a control plane: a component restarted as a kubelet restarts a
container (harness/processes.py `Restart`), and the forwarder's cut, stall and request counts (harness/netcut.py)
against a local HTTPS server with a certificate from the harness's own CA (harness/certs.py)."""
from __future__ import annotations

import http.client
import http.server
import shutil
import socket
import ssl
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from .harness.certs import Credentials, write_credentials
from .harness.kube import wait_for
from .harness.netcut import RequestParser, TcpForwarder, TlsTermination
from .harness.processes import Component, Restart

FAST = Restart(initial_s=0.1, max_s=0.4, reset_after_s=60.0)


@pytest.mark.parametrize("policy, delays", [
    pytest.param(Restart(), [1.0, 2.0, 4.0, 8.0, 10.0, 10.0], id="kubelet-like: 1 s doubling to 10 s"),
    pytest.param(FAST, [0.1, 0.2, 0.4, 0.4], id="capped at max_s"),
])
def test_the_restart_backoff_doubles_up_to_its_cap(policy: Restart, delays: list[float]) -> None:
    assert [policy.delay_s(n) for n in range(1, len(delays) + 1)] == pytest.approx(delays)


def python(tmp_path: Path, name: str, code: str, restart: Restart | None) -> Component:
    return Component(name, [sys.executable, "-c", code], tmp_path / f"{name}.log", restart=restart)


def test_a_process_that_exits_is_restarted_and_counted_until_stopped(tmp_path: Path) -> None:
    component = python(tmp_path, "exits", "import sys; sys.exit(1)", FAST).start()
    try:
        wait_for(lambda: component.restarts, lambda n: n >= 3, 10.0, "three restarts")
        assert component.alive and set(component.exit_codes) == {1}
    finally:
        component.stop()
    stopped_at = component.restarts
    time.sleep(FAST.max_s * 3)  # several backoffs: a stopped component is never started again
    assert component.restarts == stopped_at and not component.alive and not component.running
    log = component.log_path.read_text()
    assert log.count("[harness] exits exited with code 1; restarting in") >= 3


def test_a_running_process_is_not_restarted_and_stop_ends_it_for_good(tmp_path: Path) -> None:
    component = python(tmp_path, "sleeps", "import time; time.sleep(60)", FAST).start()
    first = component.process
    time.sleep(0.5)
    assert component.running and component.restarts == 0
    component.stop(grace_s=2.0)
    time.sleep(FAST.max_s * 2)
    assert component.process is first and not component.running and component.restarts == 0


def test_a_killed_process_comes_back_with_the_same_command(tmp_path: Path) -> None:
    component = python(tmp_path, "killed", "import time; time.sleep(60)", FAST).start()
    try:
        first = component.process
        assert first is not None
        first.kill()
        again = wait_for(lambda: component.process, lambda p: p is not first and p is not None and
                         p.poll() is None, 10.0, "the process restarted")
        assert again is not None and again.args == first.args and component.restarts == 1 and component.exit_codes == [-9]
    finally:
        component.stop()


def test_without_a_policy_an_exit_is_final(tmp_path: Path) -> None:
    component = python(tmp_path, "once", "pass", None).start()
    assert component.process is not None and component.process.wait(10) == 0
    time.sleep(0.3)
    assert not component.alive and component.restarts == 0 and component.exit_codes == []


# -- the forwarder --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("chunks, requests", [
    pytest.param([b""], [], id="nothing"),
    pytest.param([b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n"], [("GET", "/a")], id="one request"),
    pytest.param([b"PATCH /p HTTP/1.1\r\nContent-Length: 21\r\n\r\n{\"GET / HTTP/1.1\": 1}GET /b HTTP/1.1\r\n\r\n"],
                 [("PATCH", "/p"), ("GET", "/b")], id="a body that looks like a request line is skipped"),
    pytest.param([b"POST /c HTTP/1.1\r\nContent-Le", b"ngth: 3\r\n\r\nab", b"cDELETE /d HTTP/1.1\r\n\r\n"],
                 [("POST", "/c"), ("DELETE", "/d")], id="split anywhere"),
    pytest.param([b"PUT /e HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\nGET /f?watch=true HTTP/1.1"
                  b"\r\n\r\n"], [("PUT", "/e"), ("GET", "/f?watch=true")], id="chunked body"),
])
def test_the_request_parser_finds_each_request_line(chunks: list[bytes], requests: list[tuple[str, str]]) -> None:
    parser = RequestParser()
    assert [r for chunk in chunks for r in parser.feed(chunk)] == requests


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    seen: list[tuple[str, str]] = []

    def _answer(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        self.rfile.read(length)
        self.seen.append((self.command, self.path))
        body = b"ok"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = do_PATCH = _answer

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def creds(tmp_path_factory: pytest.TempPathFactory) -> Credentials:
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("openssl is not installed")
    return write_credentials(tmp_path_factory.mktemp("certs"), Path(openssl))


@pytest.fixture
def upstream(creds: Credentials) -> Iterator[tuple[int, list[tuple[str, str]]]]:
    """An HTTPS server on 127.0.0.1 with the apiserver's certificate; yields its port and the requests it got."""
    seen: list[tuple[str, str]] = []
    handler = type("Handler", (_Handler,), {"seen": seen})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(str(creds.serving_cert), str(creds.serving_key))
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1], seen
    server.shutdown()
    server.server_close()


@pytest.fixture
def forwarder(creds: Credentials, upstream: tuple[int, list[tuple[str, str]]]) -> Iterator[TcpForwarder]:
    f = TcpForwarder("127.0.0.1", upstream[0],
                     tls=TlsTermination(creds.serving_cert, creds.serving_key, creds.ca_cert)).start()
    yield f
    f.stop()


def connect(forwarder: TcpForwarder, creds: Credentials, timeout_s: float = 5.0) -> http.client.HTTPSConnection:
    return http.client.HTTPSConnection("127.0.0.1", forwarder.port, timeout=timeout_s,
                                       context=ssl.create_default_context(cafile=str(creds.ca_cert)))


def test_requests_are_forwarded_and_counted_on_one_connection(
        forwarder: TcpForwarder, creds: Credentials, upstream: tuple[int, list[tuple[str, str]]]) -> None:
    since = time.monotonic()
    conn = connect(forwarder, creds)
    for method, path, body in (("GET", "/api/v1/pods?watch=true", None), ("PATCH", "/apis/x/y", b'{"a": 1}'),
                               ("POST", "/api/v1/events", b"{}")):
        conn.request(method, path, body=body)
        assert conn.getresponse().read() == b"ok"
    conn.close()
    assert upstream[1] == [("GET", "/api/v1/pods?watch=true"), ("PATCH", "/apis/x/y"), ("POST", "/api/v1/events")]
    assert [(r.method, r.path) for r in forwarder.requests(since)] == upstream[1]
    assert [r.method for r in forwarder.requests(since, mutating=True)] == ["PATCH", "POST"]
    assert forwarder.requests(time.monotonic()) == []
    assert forwarder.bytes_forwarded["up"] > 0 and forwarder.bytes_forwarded["down"] > 0


def test_a_stall_holds_open_connections_and_new_ones_and_passes_nothing(
        forwarder: TcpForwarder, creds: Credentials, upstream: tuple[int, list[tuple[str, str]]]) -> None:
    before = connect(forwarder, creds, timeout_s=1.0)
    before.request("GET", "/before")
    before.getresponse().read()
    assert forwarder.stall() == 1
    stalled_at = time.monotonic()
    before.request("PATCH", "/during", body=b"{}")  # the write goes out (the socket stays open)...
    with pytest.raises(TimeoutError):
        before.getresponse()  # ...and no answer comes back
    fresh = socket.create_connection(("127.0.0.1", forwarder.port), timeout=1.0)  # accepted: not refused
    fresh.settimeout(0.5)
    with pytest.raises(TimeoutError):
        fresh.recv(1)  # held: not even a TLS handshake
    assert upstream[1] == [("GET", "/before")]
    [dropped] = forwarder.requests(stalled_at, forwarded=None)
    assert (dropped.method, dropped.path, dropped.forwarded) == ("PATCH", "/during", False)
    assert forwarder.requests(stalled_at) == []

    forwarder.restore()
    fresh.settimeout(2.0)
    try:
        assert fresh.recv(1) == b""  # the held connection is closed (or reset) at the restore
    except ConnectionResetError:
        pass
    after = connect(forwarder, creds)
    after.request("POST", "/after", body=b"{}")
    assert after.getresponse().read() == b"ok"
    assert upstream[1] == [("GET", "/before"), ("POST", "/after")]


def test_a_cut_refuses_connections_until_restored(
        forwarder: TcpForwarder, creds: Credentials, upstream: tuple[int, list[tuple[str, str]]]) -> None:
    conn = connect(forwarder, creds)
    conn.request("GET", "/one")
    conn.getresponse().read()
    assert forwarder.cut() == 1
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", forwarder.port), timeout=1.0)
    forwarder.restore()
    again = connect(forwarder, creds)
    again.request("GET", "/two")
    assert again.getresponse().read() == b"ok"
    assert upstream[1] == [("GET", "/one"), ("GET", "/two")]


def test_passing_tls_through_it_forwards_and_cuts_but_counts_no_request(
        creds: Credentials, upstream: tuple[int, list[tuple[str, str]]]) -> None:
    forwarder = TcpForwarder("127.0.0.1", upstream[0]).start()  # as test_watch_gone.py uses it
    try:
        conn = connect(forwarder, creds)
        conn.request("POST", "/through", body=b"{}")
        assert conn.getresponse().read() == b"ok"
        assert forwarder.cut() == 1
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", forwarder.port), timeout=1.0)
        assert upstream[1] == [("POST", "/through")] and forwarder.requests(forwarded=None) == []
    finally:
        forwarder.stop()
