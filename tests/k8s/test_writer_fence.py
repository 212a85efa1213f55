"""The writer is fenced by the lease: past the leader's renew deadline no write is sent, and each call is bounded by
the time left (issue 16: a write issued late could land after another replica took over)."""
from __future__ import annotations

from typing import Any

import pytest

import kvsched.k8s.writers as writers_module
from kvsched.api.objects import ObjectKey
from kvsched.api.records import EvictionRefused
from kvsched.k8s.rest import ApiError
from kvsched.k8s.writers import ApiWriter

KEY = ObjectKey("ns", "m")


@pytest.fixture
def sent(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, str, Any]]:
    calls: list[tuple[str, str, Any]] = []

    def call(api: Any, method: str, path: str, body: Any = None, **kw: Any) -> dict[str, Any]:
        calls.append((method, path, kw.get("timeout_s")))
        return {}

    monkeypatch.setattr(writers_module, "call", call)
    return calls


@pytest.mark.parametrize("left, timeout", [(7.5, 7.5), (0.25, 0.25)])
def test_a_write_within_the_fence_is_bounded_by_the_time_left(sent: list[tuple[str, str, Any]], left: float,
                                                               timeout: float) -> None:
    ApiWriter(None, fence=lambda: left).write_status(KEY, {"replicas": 1})  # type: ignore[arg-type]
    assert [(m, t) for m, _, t in sent] == [("PATCH", timeout)]


@pytest.mark.parametrize("left", [0.0, -3.0])
def test_past_the_renew_deadline_nothing_is_sent(sent: list[tuple[str, str, Any]], left: float) -> None:
    writer = ApiWriter(None, fence=lambda: left)  # type: ignore[arg-type]
    with pytest.raises(ApiError) as refused:
        writer.write_status(KEY, {"replicas": 1})
    assert refused.value.reason == "NotLeading"
    with pytest.raises(EvictionRefused):
        writer.evict(ObjectKey("ns", "m-0"))
    assert sent == []


def test_without_leader_election_writes_are_not_fenced(sent: list[tuple[str, str, Any]]) -> None:
    ApiWriter(None).write_status(KEY, {"replicas": 1})  # type: ignore[arg-type]
    assert [(m, t) for m, _, t in sent] == [("PATCH", None)]
