"""Fixtures for the image tests: the image built with buildah (tools installed, base and layers cached by
hack/image.py); without buildah or mmdebstrap and no way to install them the tests skip, or fail with CI=true."""
from __future__ import annotations

import pytest

from hack.image import Build, Buildah

from .building import built_image


@pytest.fixture(scope="session")
def built() -> tuple[Buildah, Build]:
    return built_image()
