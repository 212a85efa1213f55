"""The image built once per session for the tests that need it (tests/image, tests/e2e/test_image_serve.py)."""
from __future__ import annotations

import os

import pytest

from hack.image import Build, Buildah, BuildFailed, ToolsMissing, build_image

TAG = "localhost/kvsched:test"


def built_image(tag: str = TAG) -> tuple[Buildah, Build]:
    """buildah and the image built from the repository's Dockerfile (seconds when the cache is warm). Skips when
    buildah or mmdebstrap is missing and cannot be installed (fails with CI=true); fails when the build fails."""
    try:
        return build_image(tag)
    except ToolsMissing as e:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(str(e), pytrace=False)
        pytest.skip(str(e))
    except BuildFailed as e:
        pytest.fail(f"the image did not build: {e}", pytrace=False)
