"""/healthz, /readyz and /metrics of `kvsched controller` on the standard library's HTTP server.

/healthz (the liveness probe's): 200 while `alive()` says so, else 503 with its reason (`kvsched controller`: the
reconcile loop is not stuck; `kvsched serve`: also the extender answers its own /healthz). /readyz: 200 once every informer has listed (503 before), with a line
saying who leads (`leader: <identity>`, `leader: unknown`) and whether this process is it. /metrics: the
Prometheus text format of the process's `Metrics`. Under `kvsched serve` the extender's app serves the same
metrics registry on its own port.
Called by: kvsched.runtime.controller.
"""

from __future__ import annotations

import logging
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable

from kvsched.metrics import CONTENT_TYPE, Metrics

log = logging.getLogger(__name__)


IDLE_TIMEOUT_S = 10.0  # a connection that sends no complete request within this is closed (and frees its thread)
LISTEN_BACKLOG = 1024  # connections the kernel queues before accept (capped by net.core.somaxconn)


class _Server(ThreadingHTTPServer):
    """The standard server with a listen backlog of LISTEN_BACKLOG instead of socketserver's 5: with 5, a burst of
    connections (scrapes, probes, idle clients) overflows the accept queue and each connection past it waits for
    a SYN retransmit (1 s, then 3 s ...), so a liveness probe could time out while the process is healthy."""

    request_queue_size = LISTEN_BACKLOG
    daemon_threads = True


class HealthServer:
    """Serve the three endpoints on `host:port` from a daemon thread (port 0: a free port, see `.port`). Each
    connection has its own thread; one that sends nothing for `idle_timeout_s` seconds is closed, so idle or
    slow clients cannot pile up threads."""

    def __init__(self, host: str, port: int, metrics: Metrics, ready: Callable[[], bool],
                 leadership: Callable[[], str], idle_timeout_s: float = IDLE_TIMEOUT_S,
                 alive: Callable[[], str | None] = lambda: None) -> None:
        """`alive()`: None when the process works, else why not (a short line for /healthz's 503)."""
        outer = self

        class Handler(BaseHTTPRequestHandler):
            timeout = idle_timeout_s  # socket timeout of every read and write (BaseHTTPRequestHandler.setup)

            def do_GET(self) -> None:  # noqa: N802 (the standard library's name)
                path = self.path.split("?", 1)[0]
                if path == "/healthz":
                    problem = outer.alive()
                    body = b"ok\n" if problem is None else f"{problem}\n".encode()
                    self._send(200 if problem is None else 503, body, "text/plain; charset=utf-8")
                elif path == "/readyz":
                    ok = outer.ready()
                    body = f"{'ok' if ok else 'not synced'}\n{outer.leadership()}\n".encode()
                    self._send(200 if ok else 503, body, "text/plain; charset=utf-8")
                elif path == "/metrics":
                    self._send(200, outer.metrics.exposition(), CONTENT_TYPE)
                else:
                    self._send(404, b"not found\n", "text/plain; charset=utf-8")

            def _send(self, code: int, body: bytes, content_type: str) -> None:
                self.send_response(code)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                log.debug("http: " + format, *args)

        self.metrics = metrics
        self.alive = alive
        self.ready = ready
        self.leadership = leadership
        self.server = _Server((host, port), Handler)
        self.port = int(self.server.server_address[1])
        self._thread = threading.Thread(target=self.server.serve_forever, name="health-http", daemon=True)

    def start(self) -> HealthServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
