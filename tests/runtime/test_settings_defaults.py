"""Defaults that matter for safety (issue 16)."""
from __future__ import annotations

from kvsched.settings import ExtenderSettings


def test_the_extender_listens_on_loopback_unless_told_otherwise() -> None:
    """/bind writes pods and Bindings with kvsched's credentials and has no authentication: only the scheduler in
    the same pod may reach it."""
    assert ExtenderSettings().host == "127.0.0.1"
