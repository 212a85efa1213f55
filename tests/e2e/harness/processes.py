"""Run control-plane components as child process groups with their output in log files, and stop them cleanly.

Called by `cluster.ControlPlane`, harness/controller.py (kvsched processes) and hack/cluster.py. Each component gets
its own session (process group), so stopping it also stops anything it spawned; an atexit hook stops whatever a
crashed test run left behind. A component started with a `Restart` policy is restarted whenever it exits, as a
kubelet restarts a container of a pod with `restartPolicy: Always` (kvsched exits on a lost lease and relies on
that): after a backoff of 1 s doubling to 10 s, each restart logged in its log file and counted, never once its
`stop` was asked for.
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
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass
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


@dataclass(frozen=True)
class Restart:
    """A kubelet's `restartPolicy: Always`, shortened for tests: the n-th restart in a row waits
    min(`initial_s` x 2^(n-1), `max_s`) seconds (the kubelet's CrashLoopBackOff starts at 10 s and caps at 5 min);
    a process that ran for `reset_after_s` or longer starts the sequence again."""

    initial_s: float = 1.0
    max_s: float = 10.0
    reset_after_s: float = 60.0

    def delay_s(self, in_a_row: int) -> float:
        """Seconds to wait before restart number `in_a_row` (>= 1) of a sequence."""
        return float(min(self.initial_s * 2 ** (in_a_row - 1), self.max_s))


class Component:
    """One long-running binary: started in its own process group, output appended to `log_path`. With `restart`,
    a supervisor thread restarts it whenever it exits until `stop` (see `Restart`); `restarts` counts them and
    `exit_codes` lists every exit it saw, in order."""

    def __init__(self, name: str, argv: Sequence[str], log_path: Path, env: dict[str, str] | None = None,
                 restart: Restart | None = None) -> None:
        self.name = name
        self.argv = list(argv)
        self.log_path = log_path
        self.env = env
        self.restart = restart
        self.process: subprocess.Popen[bytes] | None = None
        self.restarts = 0
        self.exit_codes: list[int] = []
        self._lock = threading.Lock()  # held while (re)starting; `_stopping` is set under it
        self._stopping = threading.Event()
        self._supervisor: threading.Thread | None = None

    def start(self) -> Component:
        """Start the process (and its supervisor, with `restart`); returns self so calls chain."""
        with self._lock:
            self._stopping.clear()
            self._spawn()
        _RUNNING.add(self)
        if self.restart is not None:
            # The supervisor starts every later process: a child dies with the thread that started it
            # (_die_with_parent), and this thread lives until the component is stopped.
            self._supervisor = threading.Thread(target=self._supervise, args=(self.restart,),
                                                name=f"supervise-{self.name}", daemon=True)
            self._supervisor.start()
        return self

    def _spawn(self) -> None:
        with self.log_path.open("ab") as log:
            log.write(f"$ {' '.join(self.argv)}\n".encode())
            log.flush()
            self.process = subprocess.Popen(
                self.argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True, env={**os.environ, **(self.env or {})}, preexec_fn=_die_with_parent,
            )

    def _supervise(self, policy: Restart) -> None:
        """Wait for the process to exit and start it again after the backoff, until `stop`."""
        in_a_row = 0
        while True:
            process = self.process
            assert process is not None
            started = time.monotonic()
            code = process.wait()
            self.exit_codes.append(code)
            if self._stopping.is_set():
                return
            in_a_row = 1 if time.monotonic() - started >= policy.reset_after_s else in_a_row + 1
            delay_s = policy.delay_s(in_a_row)
            with self.log_path.open("ab") as log:
                log.write(f"[harness] {self.name} exited with code {code}; restarting in {delay_s:.0f}s "
                          f"(restart {self.restarts + 1})\n".encode())
            if self._stopping.wait(delay_s):
                return
            with self._lock:
                if self._stopping.is_set():
                    return
                self._spawn()
                self.restarts += 1

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    @property
    def alive(self) -> bool:
        """Running, or exited and about to be restarted (its `restart` policy, not stopped)."""
        return self.running or (self.restart is not None and self.process is not None
                                and not self._stopping.is_set())

    def wait_ready(self, check: Callable[[], bool], timeout_s: float, what: str = "ready") -> None:
        """Poll `check` every 0.25 s until it is true. Raises ComponentFailed if the process exits first (and is
        not to be restarted) or `timeout_s` passes."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if not self.alive:
                code = self.process.returncode if self.process else None
                raise ComponentFailed(f"{self.name} exited with code {code} before it was {what}:\n{self.tail()}")
            if check():
                return
            time.sleep(0.25)
        raise ComponentFailed(f"{self.name} was not {what} after {timeout_s:.0f}s:\n{self.tail()}")

    def stop(self, grace_s: float = 10.0) -> None:
        """SIGTERM the process group, SIGKILL it after `grace_s`; no restart after it; idempotent."""
        _RUNNING.discard(self)
        with self._lock:  # no restart can start after this
            self._stopping.set()
        if self._supervisor is not None and self._supervisor is not threading.current_thread():
            self._stop_process(grace_s)
            self._supervisor.join(grace_s + 10.0)
            return
        self._stop_process(grace_s)

    def _stop_process(self, grace_s: float) -> None:
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
