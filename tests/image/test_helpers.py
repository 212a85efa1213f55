"""hack/image.py's pure parts, without buildah: reading `buildah bud` output and sizes, the base's cache key, and what
of the host's pip configuration reaches the build. These run in `make unit` (not marked `image`)."""
from __future__ import annotations

from pathlib import Path

import pytest

from hack.image import BASE_PACKAGES, BUILD_CA_PATH, PipSettings, Step, base_key, parse_size, parse_steps, \
    pip_build_settings

# Shapes of buildah 1.28's output: a multi-stage build with a cached step, a built one and a run's own output.
BUD_OUTPUT = """\
time="2026-12-03T10:13:25Z" level=warning msg="missing \\"PIP_INDEX_URL\\" build argument."
[1/2] STEP 1/3: FROM localhost/base:x AS build
[1/2] STEP 2/3: COPY constraints.txt pyproject.toml ./
--> Using cache 1d262189783c7b321c2e186c5a99a3c566a6480b40e79a34e06980fb631b6a59
--> 1d262189783
[1/2] STEP 3/3: RUN pip install --no-deps .
Successfully installed kvsched-0.1.0
--> 7d5965e2a13
[2/2] STEP 1/1: FROM localhost/base:x
[2/2] COMMIT localhost/kvsched:test
--> 8458f520ecc
"""


@pytest.mark.parametrize("output, expected", [
    pytest.param("", [], id="empty output"),
    pytest.param(BUD_OUTPUT, [
        Step("FROM localhost/base:x AS build", False),
        Step("COPY constraints.txt pyproject.toml ./", True, "1d262189783"),
        Step("RUN pip install --no-deps .", False, "7d5965e2a13"),
        Step("FROM localhost/base:x", False, "8458f520ecc"),
    ], id="multi-stage, one cached step"),
    pytest.param("STEP 1/2: FROM scratch\nSTEP 2/2: ENV A=1\n--> Using cache abcdef0123\n--> abcdef0123\n", [
        Step("FROM scratch", False), Step("ENV A=1", True, "abcdef0123"),
    ], id="single stage, no stage prefix"),
    pytest.param("--> Using cache abcdef0123\n", [], id="a cache line before any step is ignored"),
])
def test_parse_steps(output: str, expected: list[Step]) -> None:
    assert parse_steps(output) == expected


@pytest.mark.parametrize("text, expected", [
    pytest.param("606 MB", 606_000_000, id="MB"),
    pytest.param("1.21 GB", 1_210_000_000, id="GB with decimals"),
    pytest.param("225 kB", 225_000, id="kB"),
    pytest.param("0 B", 0, id="zero"),
])
def test_parse_size(text: str, expected: int) -> None:
    assert parse_size(text) == expected


@pytest.mark.parametrize("text", ["", "606", "606 MiB", "big"])
def test_parse_size_refuses_what_buildah_does_not_print(text: str) -> None:
    with pytest.raises(ValueError, match="not a buildah image size"):
        parse_size(text)


def test_base_key_follows_the_include_list_not_its_order() -> None:
    key = base_key()
    assert key.startswith("bookworm-minbase-")
    assert base_key(packages=tuple(reversed(BASE_PACKAGES))) == key
    assert base_key(packages=(*BASE_PACKAGES, "curl")) != key
    assert base_key(suite="trixie") != key


def write_pip_conf(path: Path, cert: str | None) -> Path:
    path.write_text("[global]\n" + (f"cert = {cert}\n" if cert else "timeout = 60\n"))
    return path


def test_pip_settings(tmp_path: Path) -> None:
    bundle = tmp_path / "ca.crt"
    bundle.write_text("-----BEGIN CERTIFICATE-----\n")
    mounted = PipSettings((("PIP_CERT", BUILD_CA_PATH),), (f"{bundle}:{BUILD_CA_PATH}:ro",))
    cases = [
        ("defaults: nothing passed", {}, None, PipSettings()),
        ("cert from pip.conf", {}, str(bundle), mounted),
        ("cert from PIP_CERT", {"PIP_CERT": str(bundle)}, None, mounted),
        ("a missing bundle is not mounted", {"PIP_CERT": str(tmp_path / "nope")}, None, PipSettings()),
        ("index passed as a build argument", {"PIP_INDEX_URL": "https://mirror.example/simple"}, None,
         PipSettings((("PIP_INDEX_URL", "https://mirror.example/simple"),))),
    ]
    for name, env, conf_cert, expected in cases:
        conf = write_pip_conf(tmp_path / "pip.conf", conf_cert)
        assert pip_build_settings(env, conf) == expected, name
    assert pip_build_settings({}, tmp_path / "absent.conf") == PipSettings()
