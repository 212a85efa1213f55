"""The start gate: at most one engine starting per GPU at a time.

An engine sizes its KV cache by profiling the free memory of its GPU at start-up, and refuses to start when less is
free than its share; two engines starting together on one GPU each measure while the other loads. So a managed pod
is *starting* on its GPU from the moment it is bound there (or a bind reserved the GPU for it) until it is Ready,
and the slot rule (kvsched.controller.slots) admits no managed pod onto a GPU where another one is starting.

A pod stops holding the gate, Ready or not, `timeout_s` after it was bound (`kvsched start-timeout-seconds`,
default 300 s): a pod that crash-loops or never passes its readiness probe cannot block its GPU for ever. The gate
counts only live managed pods (a model label; not terminating: a terminating pod's engine is stopping, not
profiling) whose bind time is known; one whose bind time is unknown (no PodScheduled time and no startTime) does
not hold it, so that nothing can block a GPU without a time that runs out.

Times are wall-clock seconds since the epoch (the pods' times are the API server's); `now_s` is passed in, so this
module reads no clock. A bind time in the future (clock skew) counts as starting now.
Called by: kvsched.controller.slots (filter, prioritize, bind, nudges), kvsched.controller.decide (when the
controller's loop must wake up), kvsched.extender.cache (reservations), tests/controller/test_start_gate.py.
"""

from __future__ import annotations

import datetime
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol

DEFAULT_START_TIMEOUT_S = 300.0


class Occupant(Protocol):
    """What the gate reads of a pod holding a GPU (kvsched.controller.slots.Holder is one)."""

    @property
    def pod(self) -> str: ...  # namespace/name

    @property
    def uid(self) -> str: ...

    @property
    def starting_since(self) -> float | None: ...  # epoch s it was bound while not Ready; None: not starting


@dataclass(frozen=True)
class StartGate:
    """The gate at one instant: `now_s` (epoch seconds) and `timeout_s` (seconds a pod may hold it; <= 0: the gate
    is off and nobody ever waits)."""

    now_s: float
    timeout_s: float = DEFAULT_START_TIMEOUT_S

    @property
    def enabled(self) -> bool:
        return self.timeout_s > 0

    def holds(self, since: float | None) -> bool:
        """Whether a pod starting since `since` holds the gate now (bound less than `timeout_s` ago)."""
        return self.enabled and since is not None and self.now_s - since < self.timeout_s

    def expiry(self, since: float) -> float:
        """When a pod starting since `since` stops holding the gate, Ready or not (epoch s)."""
        return since + self.timeout_s


def starting(occupants: Iterable[Occupant], gate: StartGate | None, exclude_uid: str = "") -> Occupant | None:
    """The pod starting among `occupants` (one GPU's holders), other than `exclude_uid`; the one bound first when
    several are (only after a gate change or a bind outside kvsched). None when none is, or `gate` is None. O(n)."""
    if gate is None or not gate.enabled:
        return None
    first: Occupant | None = None
    for o in occupants:
        if o.uid != exclude_uid and gate.holds(o.starting_since):
            if first is None or (o.starting_since or 0.0) < (first.starting_since or 0.0):
                first = o
    return first


def _clock_text(epoch_s: float) -> str:
    return datetime.datetime.fromtimestamp(epoch_s, datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


_WAIT_PHRASE = "one engine starts per GPU at a time"


def waiting_reason(occupant: Occupant, gate: StartGate) -> str:
    """Why a pod waits: who is starting, since when and until when at the latest (for FailedNodes and binds)."""
    since = occupant.starting_since if occupant.starting_since is not None else gate.now_s
    return (f"pod {occupant.pod} is starting there (bound at {_clock_text(since)}, "
            f"{max(0.0, gate.now_s - since):.0f}s ago): {_WAIT_PHRASE}, so this pod waits "
            f"until it is Ready, at the latest until {_clock_text(gate.expiry(since))} (start timeout "
            f"{gate.timeout_s:.0f}s)")


def is_gate_reason(reason: str) -> bool:
    """Whether a filter or bind reason (`waiting_reason`, possibly among others) includes a wait at a start gate."""
    return _WAIT_PHRASE in reason


def next_expiry(occupants: Iterable[Occupant], gate: StartGate) -> float | None:
    """The earliest time (epoch s) at which one of `occupants` that holds the gate now stops holding it by its
    timeout; None when none holds it. The controller wakes up then, so that a pod waiting behind a pod that never
    becomes Ready is retried on time. O(n)."""
    times = [gate.expiry(o.starting_since) for o in occupants
             if o.starting_since is not None and gate.holds(o.starting_since)]
    return min(times, default=None)
