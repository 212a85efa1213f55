"""The Dockerfile, checked without a container engine: every path it copies exists and passes .dockerignore, its
stages chain, it runs as the chart's non-root user, installs from the pinned constraints, has no HEALTHCHECK, and
its entrypoint is the `kvsched` console script."""
from __future__ import annotations

import fnmatch
import importlib
import json
import re
import shlex
import tomllib
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Instruction:
    keyword: str
    args: str
    stage: int  # index of the FROM it belongs to


def parse_dockerfile(text: str) -> list[Instruction]:
    """Instructions with continuation lines joined and comments dropped."""
    logical: list[str] = []
    current = ""
    for line in text.splitlines():
        if line.lstrip().startswith("#") and not current:
            continue
        if line.rstrip().endswith("\\"):
            current += line.rstrip()[:-1] + " "
            continue
        current += line
        if current.strip():
            logical.append(current.strip())
        current = ""
    instructions, stage = [], -1
    for line in logical:
        keyword, _, args = line.partition(" ")
        if keyword.upper() == "FROM":
            stage += 1
        instructions.append(Instruction(keyword.upper(), args.strip(), stage))
    return instructions


def ignored(path: str, patterns: list[str]) -> bool:
    """Whether .dockerignore keeps `path` out of the build context (last matching pattern wins)."""
    parts = path.strip("/").split("/")
    prefixes = ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]
    result = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        pat = pattern[1:] if negate else pattern
        pat = pat.strip("/")
        if any(fnmatch.fnmatch(p, pat) or fnmatch.fnmatch(p, pat.replace("**/", "")) for p in prefixes):
            result = not negate
    return result


DOCKERFILE = parse_dockerfile((ROOT / "Dockerfile").read_text())
IGNORE = [ln.strip() for ln in (ROOT / ".dockerignore").read_text().splitlines()
          if ln.strip() and not ln.startswith("#")]


def copy_sources() -> list[str]:
    sources = []
    for ins in DOCKERFILE:
        if ins.keyword in ("COPY", "ADD") and "--from=" not in ins.args:
            words = [w for w in shlex.split(ins.args) if not w.startswith("--")]
            sources += words[:-1]
    return sources


def test_is_multi_stage_on_a_slim_python_base() -> None:
    froms = [i for i in DOCKERFILE if i.keyword == "FROM"]
    assert len(froms) >= 2
    default = next(i.args for i in DOCKERFILE if i.keyword == "ARG" and i.args.startswith("PYTHON_IMAGE="))
    assert re.fullmatch(r"PYTHON_IMAGE=python:3\.1[1-9]-slim(-\w+)?", default), default
    stages = {i.args.split(" AS ")[1].strip() for i in froms if " AS " in i.args}
    for ins in DOCKERFILE:
        if "--from=" in ins.args:
            assert re.search(r"--from=(\S+)", ins.args).group(1) in stages  # type: ignore[union-attr]


@pytest.mark.parametrize("source", copy_sources())
def test_every_copied_path_exists_and_is_in_the_context(source: str) -> None:
    assert (ROOT / source).exists(), source
    assert not ignored(source, IGNORE), f"{source} is excluded by .dockerignore"


def test_dockerignore_keeps_the_rest_out() -> None:
    for path in (".venv", ".git", "tests/e2e", "bench", "helm", "placement.svg"):
        assert ignored(path, IGNORE), path


def test_installs_from_the_pinned_constraints() -> None:
    runs = " ".join(i.args for i in DOCKERFILE if i.keyword == "RUN")
    assert "pip install --constraint constraints.txt --requirement requirements.txt" in runs
    pins = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        if line and not line.startswith("#"):
            name, _, version = line.partition("==")
            assert version, f"constraints.txt: {line!r} is not pinned with =="
            pins[name.lower().replace("_", "-")] = version
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    for dep in deps:
        name = re.match(r"[A-Za-z0-9_.-]+", dep).group(0).lower().replace("_", "-")  # type: ignore[union-attr]
        assert name in pins, f"{name} is not pinned in constraints.txt"
    makefile = (ROOT / "Makefile").read_text()
    assert "--constraint constraints.txt -e '.[dev]'" in makefile


def test_runs_as_the_charts_non_root_user_without_healthcheck() -> None:
    final = max(i.stage for i in DOCKERFILE)
    users = [i.args for i in DOCKERFILE if i.keyword == "USER" and i.stage == final]
    assert users, "the final stage sets no USER"
    uid = users[-1].split(":")[0]
    assert uid.isdigit() and int(uid) != 0
    values = yaml.safe_load((ROOT / "helm" / "kvsched" / "values.yaml").read_text())
    assert int(uid) == values["podSecurityContext"]["runAsUser"]
    assert not [i for i in DOCKERFILE if i.keyword == "HEALTHCHECK"]


def test_entrypoint_is_the_kvsched_console_script() -> None:
    [entrypoint] = [json.loads(i.args) for i in DOCKERFILE if i.keyword == "ENTRYPOINT"]
    assert entrypoint == ["kvsched"]
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    module, _, function = scripts["kvsched"].partition(":")
    assert callable(getattr(importlib.import_module(module), function))


def test_dependencies_are_installed_before_the_code_is_copied() -> None:
    """The layer order the Dockerfile's comment promises (tests/image proves the cache is reused): pins and
    pyproject copied, dependencies installed, then the code copied and installed without dependencies."""
    build = [i for i in DOCKERFILE if i.stage == 0]
    position = {name: next((n for n, i in enumerate(build) if test(i)), None) for name, test in {
        "copy pins": lambda i: i.keyword == "COPY" and "constraints.txt" in i.args.split(),
        "install dependencies": lambda i: i.keyword == "RUN" and "--requirement" in i.args,
        "copy code": lambda i: i.keyword == "COPY" and "kvsched/" in i.args.split(),
        "install code": lambda i: i.keyword == "RUN" and "pip install --no-deps ." in i.args,
    }.items()}
    assert None not in position.values(), position
    assert position["copy pins"] < position["install dependencies"] < position["copy code"] < position["install code"]
    # Nothing the code install needs but the dependency layer cannot see: only pins and pyproject before it.
    early = [i for i in build[:position["install dependencies"]] if i.keyword in ("COPY", "ADD")]
    assert all(set(shlex.split(i.args)[:-1]) <= {"constraints.txt", "pyproject.toml"} for i in early), early
