"""Cut a process off the apiserver without touching either: a TCP forwarder on 127.0.0.1 whose connections can be
dropped and refused, or stalled (a blackhole), on demand, and that counts the HTTP requests it sees; etcd's revision
and compaction through its v3 HTTP gateway.

`TcpForwarder` sits between a kvsched process (its kubeconfig names the forwarder's port) and kube-apiserver.
- Passing TLS through (no `tls`), it sees bytes only. With `tls` (`TlsTermination`: the apiserver's serving
  certificate and key, valid for 127.0.0.1 whatever the port, and the CA) it ends the client's TLS and opens its own
  to the apiserver, so it reads the HTTP/1.1 requests (kvsched's client speaks HTTP/1.1, watches included): every
  request line (method, path) is recorded with the time it arrived and whether it was passed on (`requests`).
  Watch streams are long-lived, so requests are counted, not connections.
- `cut()` resets every forwarded connection and closes the listening socket, so reconnects are refused as on a lost
  network; `restore()` listens on the same port again.
- `stall()` is a blackhole, not a reset: connections stay open and nothing passes either way (the bytes a client
  sends are read, parsed and dropped; the apiserver's replies and watch events are dropped), and new connections
  are accepted and then held without a byte (no TLS handshake). `restore()` after a stall resets the connections
  that were stalled (they lost bytes, as through a NAT that forgot them) and forwards new ones again.
`etcd_revision` and `compact` speak etcd's JSON gateway (`/v3/kv/range`, `/v3/kv/compaction` on the client URL), so
no etcdctl is needed. Called by: tests/e2e/test_watch_gone.py (cut), tests/e2e/test_fencing.py (stall, counts).
"""
from __future__ import annotations

import asyncio
import base64
import json
import socket
import ssl
import struct
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .processes import free_port

_CHUNK = 65536
MUTATING = frozenset({"POST", "PUT", "PATCH", "DELETE"})


@dataclass(frozen=True)
class TlsTermination:
    """Serve TLS to the client with `cert`/`key` and verify the apiserver against `ca`."""

    cert: Path
    key: Path
    ca: Path

    def server_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(str(self.cert), str(self.key))
        context.set_alpn_protocols(["http/1.1"])
        return context

    def client_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=str(self.ca))
        context.set_alpn_protocols(["http/1.1"])
        return context


@dataclass(frozen=True)
class Request:
    """One HTTP request a client sent through the forwarder: when it arrived (time.monotonic()), its request line,
    and whether it was passed on to the apiserver (False: dropped by a stall)."""

    at: float
    method: str
    path: str
    forwarded: bool

    @property
    def mutating(self) -> bool:
        return self.method in MUTATING


class RequestParser:
    """Splits an HTTP/1.1 client byte stream into requests: `feed(bytes)` returns the (method, path) of every
    request whose head is complete, skipping bodies by Content-Length or chunked encoding. O(bytes fed)."""

    def __init__(self) -> None:
        self._buffer = b""
        self._body_left = 0
        self._chunked = False

    def feed(self, data: bytes) -> list[tuple[str, str]]:
        self._buffer += data
        out: list[tuple[str, str]] = []
        while True:
            if self._body_left:
                taken = min(self._body_left, len(self._buffer))
                self._buffer, self._body_left = self._buffer[taken:], self._body_left - taken
                if self._body_left:
                    return out
            if self._chunked and not self._skip_chunks():
                return out
            end = self._buffer.find(b"\r\n\r\n")
            if end < 0:
                return out
            head, self._buffer = self._buffer[:end].decode("latin-1"), self._buffer[end + 4:]
            line, *header_lines = head.split("\r\n")
            method, path, _ = (line.split(" ", 2) + ["", ""])[:3]
            out.append((method, path))
            headers = {k.strip().lower(): v.strip() for k, _, v in (h.partition(":") for h in header_lines)}
            if "chunked" in headers.get("transfer-encoding", "").lower():
                self._chunked = True
            else:
                self._body_left = int(headers.get("content-length") or 0)

    def _skip_chunks(self) -> bool:
        """Consume chunks of a chunked body; True once the body (last chunk and trailers) is consumed."""
        while True:
            end = self._buffer.find(b"\r\n")
            if end < 0:
                return False
            size = int(self._buffer[:end].split(b";")[0] or b"0", 16)
            if size == 0:  # the last chunk: then trailers, if any, and an empty line
                rest = self._buffer[end + 2:]
                if rest.startswith(b"\r\n"):
                    done = 2
                elif (found := rest.find(b"\r\n\r\n")) >= 0:
                    done = found + 4
                else:
                    return False
                self._buffer, self._chunked = rest[done:], False
                return True
            if len(self._buffer) < end + 2 + size + 2:
                return False
            self._buffer = self._buffer[end + 2 + size + 2:]


@dataclass(eq=False)
class _Connection:
    client: asyncio.StreamWriter
    upstream: asyncio.StreamWriter | None = None
    stalled: bool = False
    closed: asyncio.Event = field(default_factory=asyncio.Event)

    def reset(self) -> None:
        """Close both sides at once; the client sees a reset (SO_LINGER 0: nothing unsent is delivered)."""
        for writer in (self.client, self.upstream):
            if writer is None:
                continue
            sock = writer.get_extra_info("socket")
            try:
                if sock is not None:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            except OSError:
                pass
            writer.transport.abort()
        self.closed.set()


class TcpForwarder:
    """Forward 127.0.0.1:`port` to `target_host`:`target_port` on an event loop of its own thread; `stop` it when
    done. Thread-safe: every method may be called from any thread but the forwarder's."""

    def __init__(self, target_host: str, target_port: int, tls: TlsTermination | None = None) -> None:
        self.target = (target_host, target_port)
        self.tls = tls
        self.port = free_port()
        self.connections = 0  # forwarded since start
        self.bytes_forwarded = {"up": 0, "down": 0}  # client -> apiserver, apiserver -> client
        self._requests: list[Request] = []
        self._lock = threading.Lock()
        self._open: set[_Connection] = set()
        self._server: asyncio.AbstractServer | None = None
        self._stalled = False
        self._server_context = tls.server_context() if tls else None
        self._client_context = tls.client_context() if tls else None
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="forwarder", daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def _run(self, coroutine: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(30.0)

    def start(self) -> TcpForwarder:
        """Listen (again) on `port` and forward every connection, ending a stall; returns self."""
        self._run(self._start())
        return self

    restore = start

    async def _start(self) -> None:
        if self._stalled:
            self._stalled = False
            for connection in [c for c in self._open if c.stalled]:
                connection.reset()
                self._open.discard(connection)
        if self._server is None:
            self._server = await asyncio.start_server(self._handle, "127.0.0.1", self.port, reuse_address=True,
                                                      backlog=64)

    def cut(self) -> int:
        """Stop listening (new connections are refused) and reset every forwarded connection; returns how many
        were open."""
        return int(self._run(self._cut()))

    async def _cut(self) -> int:
        if self._server is not None:
            self._server.close()
            self._server = None
        self._stalled = False
        connections, self._open = list(self._open), set()
        for connection in connections:
            connection.reset()
        return sum(1 for c in connections if c.upstream is not None)

    def stall(self) -> int:
        """Blackhole every connection, open and new, until `restore`; returns how many were open."""
        return int(self._run(self._stall()))

    async def _stall(self) -> int:
        self._stalled = True
        for connection in self._open:
            connection.stalled = True
        return sum(1 for c in self._open if c.upstream is not None)

    def stop(self) -> None:
        """Cut, and end the forwarder's thread."""
        if self._loop.is_closed():
            return
        self.cut()
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5.0)
        self._loop.close()

    def requests(self, since: float = 0.0, *, forwarded: bool | None = True,
                 mutating: bool | None = None) -> list[Request]:
        """The requests seen (with `tls` only) that arrived at or after `since` (time.monotonic()); `forwarded`
        and `mutating`: only those that were (True) or were not (False) passed on / POST, PUT, PATCH, DELETE;
        None: either."""
        with self._lock:
            seen = list(self._requests)
        return [r for r in seen if r.at >= since and (forwarded is None or r.forwarded is forwarded)
                and (mutating is None or r.mutating is mutating)]

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connection = _Connection(writer, stalled=self._stalled)
        self._open.add(connection)
        try:
            if connection.stalled:  # accepted, then held: not a byte either way until restore resets it
                await connection.closed.wait()
                return
            if self._server_context is not None:
                await writer.start_tls(self._server_context)
            up_reader, up_writer = await asyncio.wait_for(asyncio.open_connection(
                *self.target, ssl=self._client_context,
                server_hostname=self.target[0] if self._client_context else None), 5.0)
            connection.upstream = up_writer
            if connection.closed.is_set():  # cut meanwhile
                connection.reset()
                return
            self.connections += 1
            await asyncio.gather(self._pump(reader, up_writer, connection, "up"),
                                 self._pump(up_reader, writer, connection, "down"))
        except (OSError, ssl.SSLError, asyncio.TimeoutError, asyncio.IncompleteReadError):
            pass
        finally:
            if not connection.closed.is_set():
                connection.reset()
            self._open.discard(connection)

    async def _pump(self, source: asyncio.StreamReader, sink: asyncio.StreamWriter, connection: _Connection,
                    direction: str) -> None:
        """Copy `source` to `sink` (dropping everything while the connection is stalled) until either side ends;
        then close both. Client requests are recorded on the way (with `tls`)."""
        parser = RequestParser() if direction == "up" and self.tls is not None else None
        try:
            while data := await source.read(_CHUNK):
                forwarded = not connection.stalled
                if parser is not None:
                    now = time.monotonic()
                    seen = [Request(now, method, path, forwarded) for method, path in parser.feed(data)]
                    with self._lock:
                        self._requests.extend(seen)
                if forwarded:
                    sink.write(data)
                    await sink.drain()
                    self.bytes_forwarded[direction] += len(data)
        except (OSError, ssl.SSLError, ValueError):
            pass
        if not connection.stalled:
            connection.reset()


def _etcd_post(etcd_url: str, path: str, body: dict[str, object]) -> dict[str, object]:
    request = urllib.request.Request(f"{etcd_url}{path}", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"}, method="POST")
    with urllib.request.urlopen(request, timeout=10) as response:
        answer: dict[str, object] = json.loads(response.read())
    return answer


def etcd_revision(etcd_url: str) -> int:
    """etcd's current revision (the apiserver's newest resourceVersion)."""
    answer = _etcd_post(etcd_url, "/v3/kv/range", {"key": base64.b64encode(b"/registry/").decode()})
    header = answer["header"]
    assert isinstance(header, dict)
    return int(header["revision"])


def compact(etcd_url: str, revision: int) -> None:
    """Drop etcd's history before `revision`: a watch from an older resourceVersion gets 410 Gone."""
    _etcd_post(etcd_url, "/v3/kv/compaction", {"revision": str(revision), "physical": True})
