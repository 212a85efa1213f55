"""Lease election against an in-memory Lease with optimistic concurrency and an injected clock."""
from __future__ import annotations

import copy
from typing import Any

import pytest

import kvsched.k8s.leader as leader_module
from kvsched.k8s.leader import LeaseElector
from kvsched.k8s.rest import ApiError


class FakeLeases:
    """One Lease behind GET/POST/PUT with resourceVersion checks, like the apiserver."""

    def __init__(self) -> None:
        self.lease: dict[str, Any] | None = None
        self.version = 0
        self.down = False

    def call(self, api: Any, method: str, path: str, body: Any = None, **kw: Any) -> dict[str, Any]:
        if self.down:
            raise ApiError(0, "ConnectionRefused", "down")
        if method == "GET":
            if self.lease is None:
                raise ApiError(404, "NotFound", "no lease")
            return copy.deepcopy(self.lease)
        if method == "POST":
            if self.lease is not None:
                raise ApiError(409, "AlreadyExists", "exists")
        elif method == "PUT":
            assert self.lease is not None
            if body["metadata"].get("resourceVersion") != self.lease["metadata"]["resourceVersion"]:
                raise ApiError(409, "Conflict", "stale")
        self.version += 1
        self.lease = copy.deepcopy(body)
        self.lease["metadata"]["resourceVersion"] = str(self.version)
        return copy.deepcopy(self.lease)


@pytest.fixture
def leases(monkeypatch: pytest.MonkeyPatch) -> FakeLeases:
    fake = FakeLeases()
    monkeypatch.setattr(leader_module, "call", fake.call)
    return fake


def elector(name: str, now: list[float]) -> LeaseElector:
    return LeaseElector(None, "ns", "lease", name, lease_duration_s=6, renew_deadline_s=4, retry_period_s=1,
                        clock=lambda: now[0])


def test_one_leads_the_other_takes_over_only_after_the_lease_expires(leases: FakeLeases) -> None:
    now = [0.0]
    a, b = elector("a", now), elector("b", now)
    assert a.try_acquire_or_renew() is True
    assert b.try_acquire_or_renew() is False and b.holder == "a"
    now[0] = 5.0  # a is silent (killed); b saw the record at t=0
    assert b.try_acquire_or_renew() is False
    now[0] = 6.5
    assert b.try_acquire_or_renew() is True
    assert leases.lease is not None and leases.lease["spec"]["leaseTransitions"] == 1
    assert a.try_acquire_or_renew() is False  # the old leader sees b's fresh record


def test_renewals_keep_the_follower_out(leases: FakeLeases) -> None:
    now = [0.0]
    a, b = elector("a", now), elector("b", now)
    for t in range(0, 20):
        now[0] = float(t)
        assert a.try_acquire_or_renew() is True
        assert b.try_acquire_or_renew() is False


def test_release_lets_a_follower_take_over_at_once(leases: FakeLeases) -> None:
    now = [0.0]
    a, b = elector("a", now), elector("b", now)
    assert a.try_acquire_or_renew()
    assert not b.try_acquire_or_renew()
    a.release()
    assert b.try_acquire_or_renew() is True


def test_a_bad_configuration_is_refused() -> None:
    with pytest.raises(ValueError):
        LeaseElector(None, "ns", "lease", "a", lease_duration_s=5, renew_deadline_s=5, retry_period_s=1)


class Ticks:
    """A stop event for `LeaseElector.run` whose waits advance the fake clock; stops after `rounds` waits, and
    calls `at(t)` each time (to take the apiserver down, say)."""

    def __init__(self, now: list[float], rounds: int, at: Any = None) -> None:
        self.now, self.rounds, self.at = now, rounds, at

    def is_set(self) -> bool:
        return self.rounds <= 0

    def wait(self, seconds: float) -> bool:
        self.now[0] += seconds
        self.rounds -= 1
        if self.at is not None:
            self.at(self.now[0])
        return self.is_set()


def test_the_leader_may_write_until_the_renew_deadline_from_the_start_of_its_last_renewal(
        leases: FakeLeases, monkeypatch: pytest.MonkeyPatch) -> None:
    now = [0.0]
    a = elector("a", now)
    assert a.write_time_left() == 0.0  # not leading: no write at all
    slow = leases.call

    def renewal_taking_3_s(api: Any, method: str, path: str, body: Any = None, **kw: Any) -> dict[str, Any]:
        if method == "PUT" or method == "POST":
            now[0] += 3.0
        return slow(api, method, path, body, **kw)

    monkeypatch.setattr(leader_module, "call", renewal_taking_3_s)
    changes: list[tuple[bool, float]] = []
    a.run(Ticks(now, rounds=1), lambda leading: changes.append((leading, a.write_time_left())))  # type: ignore[arg-type]
    # The claim went out at t=0 and returned at t=3: 1 s of writing is left, not 4 (the lease may have been
    # renewed on the server at t=0). The stop released the lease (the final False, nothing left).
    assert changes == [(True, 1.0), (False, 0.0)]


def test_writes_stop_at_the_renew_deadline_while_the_apiserver_is_unreachable(leases: FakeLeases) -> None:
    now = [0.0]
    a = elector("a", now)
    seen: list[tuple[float, float, bool]] = []

    def down_from_2(t: float) -> None:
        leases.down = t >= 2.0
        seen.append((t, a.write_time_left(), a.is_leader))

    a.run(Ticks(now, rounds=8, at=down_from_2), lambda leading: None)  # type: ignore[arg-type]
    # Renewed at t=0 and t=1 (each renewal starts at the tick); down from t=2: writable until 1 + 4 = 5.
    left = {t: round(w, 6) for t, w, _ in seen}
    assert left[2.0] == 3.0 and left[4.0] == 1.0
    assert all(w <= 0 for t, w, _ in seen if t >= 5.0)
    assert not a.is_leader


@pytest.mark.parametrize("leading_since, now_s, timeout_s", [
    pytest.param(None, 0.0, 4.0, id="a follower: bounded by the renew deadline"),
    pytest.param(0.0, 1.0, 3.0, id="a leader: bounded by the time it may still write"),
    pytest.param(0.0, 3.5, 1.0, id="a leader near its deadline: at least one retry period"),
    pytest.param(0.0, 9.0, 1.0, id="a leader past its deadline: one retry period"),
])
def test_every_lease_call_is_bounded(leases: FakeLeases, monkeypatch: pytest.MonkeyPatch,
                                     leading_since: float | None, now_s: float, timeout_s: float) -> None:
    now = [0.0]
    a = elector("a", now)
    if leading_since is not None:
        assert a.try_acquire_or_renew()
        a.is_leader, a._last_renew = True, leading_since  # as `run` records a renewal that started then
    now[0] = now_s
    bounds: list[tuple[str, float | None]] = []
    real = leases.call

    def recording(api: Any, method: str, path: str, body: Any = None, **kw: Any) -> dict[str, Any]:
        bounds.append((method, kw.get("timeout_s")))
        return real(api, method, path, body, **kw)

    monkeypatch.setattr(leader_module, "call", recording)
    a.try_acquire_or_renew()
    assert bounds and all(t == pytest.approx(timeout_s) for _, t in bounds), bounds
