"""Leader election on a `coordination.k8s.io/v1` Lease, as client-go's leaderelection does it.

A candidate takes the Lease when it is absent, released (empty holder), or when its holder has not renewed it
for `lease_duration_s` as measured on this candidate's own clock since it last saw the record change (so clock
skew between machines does not matter). The leader renews every `retry_period_s`; if no renewal succeeds for
`renew_deadline_s` it stops leading at once (before another candidate can take over, since the deadline is
shorter than the lease). Every write is optimistic (resourceVersion), so two candidates never both win.
Fencing: the leader may write only until `renew_deadline_s` after the start of its last successful renewal
(`write_time_left`), measured from before the request went out, so a renewal that took long does not stretch it;
kvsched's writer checks it before every write and bounds each call by it (kvsched.k8s.writers).
Every Lease call is bounded too (`_timeout_s`: the time left to write, at least one retry period, while leading;
the renew deadline otherwise), so a renewal hung on a dead connection ends by the deadline and the leader learns it
lost, rather than waiting on the socket for as long as the kernel keeps it.
On a clean shutdown the leader releases the Lease (empty holder), and a follower takes over within one retry
period; after a SIGKILL it takes over within lease duration + retry period.
Called by: kvsched.runtime.controller.
"""

from __future__ import annotations

import datetime
import logging
import threading
import time
from typing import Any, Callable

from kubernetes import client

from kvsched.k8s.rest import ApiError, call

log = logging.getLogger(__name__)


def _micro_time() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class LeaseElector:
    """One candidate. `run(stop, on_change)` loops until `stop` is set; `on_change(True/False)` is called on
    this thread whenever leadership is gained or lost. `holder` is the identity last seen holding the Lease."""

    def __init__(self, api: client.ApiClient, namespace: str, name: str, identity: str, *,
                 lease_duration_s: float = 15.0, renew_deadline_s: float = 10.0, retry_period_s: float = 2.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if not retry_period_s < renew_deadline_s < lease_duration_s:
            raise ValueError("leader election needs retry period < renew deadline < lease duration, got "
                             f"{retry_period_s}, {renew_deadline_s}, {lease_duration_s}")
        self.api = api
        self.namespace = namespace
        self.name = name
        self.identity = identity
        self.lease_duration_s = lease_duration_s
        self.renew_deadline_s = renew_deadline_s
        self.retry_period_s = retry_period_s
        self.clock = clock
        self.is_leader = False
        self.holder: str | None = None
        self._observed: tuple[Any, Any] | None = None
        self._observed_at = 0.0
        self._last_renew = 0.0

    @property
    def path(self) -> str:
        return f"/apis/coordination.k8s.io/v1/namespaces/{self.namespace}/leases/{self.name}"

    def run(self, stop: threading.Event, on_change: Callable[[bool], None]) -> None:
        """Acquire, renew, and on stop release; never raises (API errors count as a failed attempt)."""
        while not stop.is_set():
            started = self.clock()
            try:
                ok = self.try_acquire_or_renew()
            except ApiError as e:
                log.warning("leader election: lease %s/%s: %s", self.namespace, self.name, e)
                ok = False
            now = self.clock()
            if ok:
                self._last_renew = started
                if not self.is_leader:
                    self.is_leader = True
                    log.info("leader election: %s now leads (lease %s/%s)", self.identity, self.namespace,
                             self.name)
                    on_change(True)
            elif self.is_leader and now - self._last_renew > self.renew_deadline_s:
                self.is_leader = False
                log.warning("leader election: %s could not renew for %.0fs; stopping leading", self.identity,
                            self.renew_deadline_s)
                on_change(False)
            stop.wait(self.retry_period_s)
        if self.is_leader:
            self.release()
            self.is_leader = False
            on_change(False)

    def write_time_left(self) -> float:
        """Seconds this candidate may still write as the leader: until `renew_deadline_s` after the start of its
        last successful renewal; <= 0 when it does not lead (or no longer may). O(1)."""
        if not self.is_leader:
            return 0.0
        return self._last_renew + self.renew_deadline_s - self.clock()

    def _timeout_s(self) -> float:
        """The bound of one Lease call, seconds: while leading, the time left to write but at least one retry
        period (a renewal that ends after the deadline is useless, but a lapsed leader must still be able to
        read and reclaim); otherwise the renew deadline."""
        if self.is_leader:
            return max(self.retry_period_s, self.write_time_left())
        return self.renew_deadline_s

    def try_acquire_or_renew(self) -> bool:
        """One attempt; True when this candidate holds the Lease afterwards. Raises ApiError."""
        try:
            lease = call(self.api, "GET", self.path, timeout_s=self._timeout_s())
        except ApiError as e:
            if e.status != 404:
                raise
            body = {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                    "metadata": {"name": self.name, "namespace": self.namespace},
                    "spec": self._spec(acquire_time=_micro_time(), transitions=0)}
            return self._claim("POST", f"/apis/coordination.k8s.io/v1/namespaces/{self.namespace}/leases", body)
        spec = lease.get("spec") or {}
        holder = spec.get("holderIdentity") or ""
        record = (holder, spec.get("renewTime"))
        if record != self._observed:
            self._observed, self._observed_at = record, self.clock()
        self.holder = holder or None
        duration = float(spec.get("leaseDurationSeconds") or self.lease_duration_s)
        if holder and holder != self.identity and self.clock() < self._observed_at + duration:
            return False
        mine = holder == self.identity
        transitions = int(spec.get("leaseTransitions") or 0) + (0 if mine else 1)
        new_spec = self._spec(acquire_time=spec.get("acquireTime") if mine else _micro_time(),
                              transitions=transitions)
        return self._claim("PUT", self.path, {**lease, "spec": new_spec})

    def _claim(self, method: str, path: str, body: dict[str, Any]) -> bool:
        """Create or replace the Lease naming this process; False when another writer got there first (409)."""
        try:
            call(self.api, method, path, body, timeout_s=self._timeout_s())
        except ApiError as e:
            if e.status == 409:
                return False
            raise
        self.holder = self.identity
        return True

    def release(self) -> None:
        """Give the Lease up (empty holder) so a follower takes over at once; errors are logged."""
        try:
            lease = call(self.api, "GET", self.path, timeout_s=self.retry_period_s)
            spec = lease.get("spec") or {}
            if spec.get("holderIdentity") != self.identity:
                return
            spec = {**spec, "holderIdentity": "", "leaseDurationSeconds": 1, "renewTime": _micro_time()}
            call(self.api, "PUT", self.path, {**lease, "spec": spec}, timeout_s=self.retry_period_s)
            log.info("leader election: %s released lease %s/%s", self.identity, self.namespace, self.name)
        except ApiError as e:
            log.warning("leader election: releasing lease %s/%s: %s", self.namespace, self.name, e)

    def _spec(self, acquire_time: Any, transitions: int) -> dict[str, Any]:
        return {"holderIdentity": self.identity, "leaseDurationSeconds": int(round(self.lease_duration_s)),
                "acquireTime": acquire_time, "renewTime": _micro_time(), "leaseTransitions": transitions}
