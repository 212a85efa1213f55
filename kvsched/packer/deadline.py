"""`Deadline`: the one time limit the search phases share, read from the injected clock.

Built once per solve from the clock and the time budget; every phase asks `expired()` between its steps. The
packer never reads a clock of its own: tests pass a fake clock and get the same plan on any machine.
Called by: `solve` and `replan.strategy` (build them), search, improve, repair, exact, lns, the `replan` heuristics.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

Clock = Callable[[], float]


def _no_clock() -> float:
    return 0.0


@dataclass(frozen=True)
class Deadline:
    """Expires when `budget_s` seconds of `clock` have passed since `start_s`. budget_s may be inf (never)."""

    clock: Clock
    start_s: float
    budget_s: float

    @classmethod
    def start(cls, clock: Clock, budget_s: float) -> Deadline:
        """A deadline `budget_s` seconds from now on `clock` (reads the clock once)."""
        return cls(clock, clock(), budget_s)

    @classmethod
    def never(cls) -> Deadline:
        """A deadline that never expires (no clock is read)."""
        return cls(_no_clock, 0.0, math.inf)

    def elapsed_s(self) -> float:
        """Seconds of the clock since the start."""
        return self.clock() - self.start_s

    def remaining_s(self) -> float:
        """Seconds left before expiry (negative once expired; inf without a budget)."""
        return self.budget_s - self.elapsed_s()

    def expired(self) -> bool:
        """True once more than budget_s seconds have passed (a budget of 0 expires at the first tick)."""
        return math.isfinite(self.budget_s) and self.elapsed_s() > self.budget_s

    def share(self, fraction: float) -> Deadline:
        """A deadline from the same start with `fraction` of the budget (a phase that may use only part of it)."""
        return Deadline(self.clock, self.start_s, self.budget_s * fraction)


NEVER = Deadline.never()
