"""Cut a process off the apiserver without touching either: a TCP forwarder on 127.0.0.1 whose connections can be
dropped and refused on demand, and etcd's revision and compaction through its v3 HTTP gateway.

`TcpForwarder` sits between a kvsched process (its kubeconfig names the forwarder's port; TLS passes through, the
apiserver's certificate is for 127.0.0.1 whatever the port) and kube-apiserver. `cut()` shuts every forwarded
connection down and closes the listening socket, so reconnects are refused as on a lost network; `restore()` listens
on the same port again. `etcd_revision` and `compact` speak etcd's JSON gateway (`/v3/kv/range`,
`/v3/kv/compaction` on the client URL), so no etcdctl is needed. Called by: tests/e2e/test_watch_gone.py.
"""
from __future__ import annotations

import base64
import json
import socket
import struct
import threading
import urllib.request

from .processes import free_port

_CHUNK = 65536


class TcpForwarder:
    """Forward 127.0.0.1:`port` to `target_host`:`target_port` on daemon threads; `stop` it when done."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.port = free_port()
        self.connections = 0  # accepted since start
        self._lock = threading.Lock()
        self._open: set[socket.socket] = set()
        self._listener: socket.socket | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def start(self) -> TcpForwarder:
        """Listen (again) on `port` and forward every connection; returns self."""
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        listener.settimeout(0.2)
        self._listener = listener
        self._thread = threading.Thread(target=self._accept, args=(listener,), name="forwarder", daemon=True)
        self._thread.start()
        return self

    restore = start

    def cut(self) -> int:
        """Stop listening (new connections are refused) and shut every forwarded connection down (the client
        reads end of stream or a reset); returns how many connections were open."""
        listener, self._listener = self._listener, None
        if listener is not None:
            listener.close()
        if self._thread is not None:
            self._thread.join(2.0)
        with self._lock:
            sockets, self._open = list(self._open), set()
        for s in sockets:
            # close() alone would not wake the pump blocked in recv() on it (Linux); shutdown() does. SO_LINGER 0:
            # whatever is still unsent is dropped, not delivered.
            try:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()
        return len(sockets) // 2

    stop = cut

    def _accept(self, listener: socket.socket) -> None:
        while self._listener is listener:
            try:
                downstream, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                downstream.close()
                continue
            upstream.settimeout(None)
            downstream.settimeout(None)
            with self._lock:
                if self._listener is not listener:  # cut meanwhile
                    downstream.close()
                    upstream.close()
                    return
                self._open.update((downstream, upstream))
                self.connections += 1
            ended = threading.Semaphore(0)
            for a, b in ((downstream, upstream), (upstream, downstream)):
                threading.Thread(target=self._pump, args=(a, b, ended), name="forwarder-pump", daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket, ended: threading.Semaphore) -> None:
        """Copy `source` to `sink` until EOF or error; the second of a pair's two pumps to end closes both."""
        try:
            while data := source.recv(_CHUNK):
                sink.sendall(data)
            sink.shutdown(socket.SHUT_WR)
        except OSError:  # one side reset: end the other direction too
            for s in (source, sink):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
        if ended.acquire(blocking=False):
            with self._lock:
                self._open.difference_update((source, sink))
            source.close()
            sink.close()
        else:
            ended.release()


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
