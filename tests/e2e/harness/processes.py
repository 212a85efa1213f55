"""Run control-plane components as child process groups with their output in log files, and stop them cleanly.

Called by `cluster.ControlPlane`. Each component gets its own session (process group), so stopping it also stops
anything it spawned; an atexit hook stops whatever a crashed test run left behind.
"""
from __future__ import annotations

import atexit
import ctypes
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path

_RUNNING: set[Component] = set()
_PR_SET_PDEATHSIG = 1
try:  # loaded here, not in the forked child, where taking the loader lock could deadlock
    _LIBC: ctypes.CDLL | None = ctypes.CDLL(None, use_errno=True) if sys.platform == "linux" else None
except OSError:
    _LIBC = None


def _die_with_parent() -> None:
    """Runs in the child between fork and exec: the kernel SIGKILLs it when the thread that started it exits,
    so even a SIGKILLed pytest leaves no component behind. Start components from the main thread."""
    if _LIBC is not None:
        _LIBC.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


class ComponentFailed(RuntimeError):
    """A component exited early or did not become ready in time; the message carries its log tail."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (the component binds it soon after)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def http_ok(url: str, token: str | None = None, ca_file: Path | None = None, timeout_s: float = 2.0) -> bool:
    """True when GET `url` answers 200. HTTPS is verified against `ca_file`, or not at all without one
    (the scheduler's and controller-manager's serving certs are self-signed)."""
    context: ssl.SSLContext | None = None
    if url.startswith("https://"):
        if ca_file is not None:
            context = ssl.create_default_context(cafile=str(ca_file))
        else:
            context = ssl.create_default_context()
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(request, timeout=timeout_s, context=context) as response:
            return int(response.status) == 200
    except (urllib.error.URLError, OSError, ValueError):
        return False


class Component:
    """One long-running binary: started in its own process group, output appended to `log_path`."""

    def __init__(self, name: str, argv: Sequence[str], log_path: Path, env: dict[str, str] | None = None) -> None:
        self.name = name
        self.argv = list(argv)
        self.log_path = log_path
        self.env = env
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> Component:
        """Start the process; returns self so calls chain."""
        with self.log_path.open("ab") as log:
            log.write(f"$ {' '.join(self.argv)}\n".encode())
            log.flush()
            self.process = subprocess.Popen(
                self.argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True, env={**os.environ, **(self.env or {})}, preexec_fn=_die_with_parent,
            )
        _RUNNING.add(self)
        return self

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def wait_ready(self, check: Callable[[], bool], timeout_s: float, what: str = "ready") -> None:
        """Poll `check` every 0.25 s until it is true. Raises ComponentFailed if the process exits first or
        `timeout_s` passes."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if not self.running:
                code = self.process.returncode if self.process else None
                raise ComponentFailed(f"{self.name} exited with code {code} before it was {what}:\n{self.tail()}")
            if check():
                return
            time.sleep(0.25)
        raise ComponentFailed(f"{self.name} was not {what} after {timeout_s:.0f}s:\n{self.tail()}")

    def stop(self, grace_s: float = 10.0) -> None:
        """SIGTERM the process group, SIGKILL it after `grace_s`; idempotent."""
        _RUNNING.discard(self)
        if self.process is None or self.process.returncode is not None:
            return
        pgid = self.process.pid  # start_new_session makes the child its group leader
        for sig, wait_s in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 5.0)):
            try:
                os.killpg(pgid, sig)
            except ProcessLookupError:
                break
            try:
                self.process.wait(timeout=wait_s)
                break
            except subprocess.TimeoutExpired:
                continue
        # Children that outlived the leader are still in the group.
        try:
            os.killpg(pgid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    def tail(self, lines: int = 40) -> str:
        """The last `lines` lines of the component's log."""
        try:
            text = self.log_path.read_text(errors="replace").splitlines()
        except FileNotFoundError:
            return "(no log)"
        return "\n".join(text[-lines:])


@atexit.register
def _stop_leftovers() -> None:
    for component in list(_RUNNING):
        component.stop(grace_s=2.0)
