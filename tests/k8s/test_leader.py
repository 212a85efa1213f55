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
