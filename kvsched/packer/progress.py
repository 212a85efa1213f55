"""Progress of one solve, for a caller that wants to show it (the CLI's status line).

`solve(..., progress=callback)` calls `callback(Progress(...))` at each phase boundary and, between boundaries,
at most once every PROGRESS_INTERVAL_S seconds of the injected clock; last with phase "done" and the plan's own
max KVPR and lower bound. The packer never does I/O for it: what the callback does is the caller's business.
Without a callback the solve reads the clock exactly as often as it did before (no extra reads).
Called by: `kvsched.packer.planner.solve` (creates a `Reporter`), the CLI (passes the callback).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Literal

Phase = Literal["greedy", "bisection", "local search", "exact", "re-plan", "done"]

# Between phase boundaries, at most one call per this many seconds: four updates a second read as live on a
# terminal and cost nothing next to a pass (milliseconds at thousands of GPUs).
PROGRESS_INTERVAL_S = 0.25


@dataclass(frozen=True)
class Progress:
    """A snapshot of a running solve.

    phase: what the solve is doing now ("done" on the last call). best_max_kvpr: max KVPR of the best complete
    plan found so far (inf before there is one); on the "done" call, the returned plan's own max KVPR, which in a
    re-plan may lie above the best found (a re-plan trades KVPR within the stability threshold for fewer moves).
    lower_bound: a valid lower bound on the optimum (0 before it is computed). elapsed_s: seconds of the injected
    clock since the solve started, non-decreasing from one call to the next.
    """

    phase: Phase
    best_max_kvpr: float
    lower_bound: float
    elapsed_s: float


ProgressCallback = Callable[[Progress], None]


class Reporter:
    """Keeps the latest phase, best and bound of one solve and decides when to call the callback.

    Without a callback every method returns at once and `elapsed` is the plain elapsed clock.
    """

    def __init__(self, callback: ProgressCallback | None, elapsed: Callable[[], float],
                 interval_s: float = PROGRESS_INTERVAL_S) -> None:
        self._callback = callback
        self._read = elapsed
        self._interval_s = interval_s
        self._phase: Phase = "greedy"
        self._best = math.inf
        self._lower = 0.0
        self._last_s = -math.inf  # elapsed at the last call
        self._latest_s = 0.0  # largest elapsed seen, so elapsed_s never goes back

    def elapsed(self) -> float:
        """Seconds since the solve started; with a callback, also a heartbeat (a throttled call)."""
        now = self._read()
        if self._callback is not None:
            self._latest_s = max(self._latest_s, now)
            if self._latest_s - self._last_s >= self._interval_s:
                self._emit()
        return now

    def phase(self, phase: Phase, *, best: float | None = None, lower: float | None = None) -> None:
        """A phase boundary: record what is known and call the callback when the phase changes."""
        if self._callback is None:
            return
        changed = phase != self._phase or self._last_s == -math.inf
        self._phase = phase
        self._note(best, lower)
        if changed:
            self._latest_s = max(self._latest_s, self._read())
            self._emit()

    def note(self, *, best: float | None = None, lower: float | None = None) -> None:
        """Record a better plan or bound found inside a phase; shown with the next call."""
        if self._callback is not None:
            self._note(best, lower)

    def finish(self, best: float, lower: float, elapsed_s: float) -> None:
        """The last call, with the plan's own figures."""
        if self._callback is None:
            return
        self._phase, self._best, self._lower = "done", best, lower
        self._latest_s = max(self._latest_s, elapsed_s)
        self._emit()

    def _note(self, best: float | None, lower: float | None) -> None:
        if best is not None:
            self._best = best
        if lower is not None:
            self._lower = lower

    def _emit(self) -> None:
        assert self._callback is not None
        self._last_s = self._latest_s
        self._callback(Progress(self._phase, self._best, self._lower, self._latest_s))
