"""Fixtures for the chart tests: the e2e cache's helm (skip locally without it, fail with CI=true)."""
from __future__ import annotations

import os

import pytest

from hack.chart import Helm, HelmMissing


@pytest.fixture(scope="session")
def helm() -> Helm:
    try:
        return Helm.from_cache()
    except HelmMissing as e:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(str(e), pytrace=False)
        pytest.skip(str(e))
