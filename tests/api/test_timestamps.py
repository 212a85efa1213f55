"""RFC 3339 times as Kubernetes writes them -> epoch seconds (kvsched.units.timestamp_s)."""
from __future__ import annotations

import pytest

from kvsched.units import timestamp_s


@pytest.mark.parametrize("text, expected", [
    pytest.param("1970-01-01T00:01:40Z", 100.0, id="UTC to the second"),
    pytest.param("1970-01-01T00:01:40.250000Z", 100.25, id="microseconds (MicroTime)"),
    pytest.param("1970-01-01T01:01:40+01:00", 100.0, id="an offset"),
    pytest.param("", None, id="empty: unknown"),
    pytest.param("yesterday", None, id="unreadable: unknown"),
])
def test_timestamp_s(text: str, expected: float | None) -> None:
    assert timestamp_s(text) == expected
