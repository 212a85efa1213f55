"""The packer in a child process, for `kvsched serve`: a re-plan must not slow the extender down.

`kvsched.packer.solve` is pure Python and runs for up to the time budget (5 s by default) per re-plan. In one
process with the extender it holds the GIL for most of that, and each filter request waits for the GIL several
times: measured with a busy thread beside the extender's app (500 nodes, 2-core machine, load ~5), filter p50 9.4 ms
and p99 32.5 ms. In a child process the solve runs beside the extender instead of in turns with it (bench/load.py
measures both). Inputs and the Plan are plain frozen dataclasses, pickled each way (milliseconds for 1000 models).

One worker, started on the first solve with the "spawn" method (the parent has threads: a forked child could
inherit a lock held by one of them) and kept, so later solves pay no start-up; a child that died (killed by the
OOM killer) is replaced on the next solve, and that solve's error reaches the reconcile loop like any other.
Called by: kvsched.runtime.controller (`serve`).
"""

from __future__ import annotations

import logging
import multiprocessing
import threading
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any

from kvsched.packer import Gpu, Model, Plan, solve

log = logging.getLogger(__name__)


class ProcessSolver:
    """A `solve` with the same signature (keyword arguments must pickle: no clock or progress callbacks) that runs
    in one kept child process."""

    def __init__(self) -> None:
        self._pool: ProcessPoolExecutor | None = None
        self._lock = threading.Lock()

    def __call__(self, models: Sequence[Model], gpus: Sequence[Gpu], **options: Any) -> Plan:
        with self._lock:
            if self._pool is None:
                self._pool = ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"))
            pool = self._pool
        try:
            return pool.submit(solve, tuple(models), tuple(gpus), **options).result()
        except BrokenProcessPool:
            log.error("the solver process died; a new one takes the next solve")
            with self._lock:
                if self._pool is pool:
                    self._pool = None
            pool.shutdown(wait=False)
            raise

    @property
    def pid(self) -> int | None:
        """The child's process id, once started (for tests and the bench)."""
        pool = self._pool
        processes = getattr(pool, "_processes", None) or {}
        return next(iter(processes), None)

    def close(self) -> None:
        """Stop the child (waits for a solve in progress)."""
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
