"""The image, built from the repository's Dockerfile with buildah on a base made from Debian's packages, and run:
its Python is the project's, `kvsched plan` in it runs as the chart's non-root user and prints what the venv's
prints, its size stays within a bound, and a code change reuses the dependency layer (the Dockerfile says so)."""
from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import tomllib
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from hack.image import REPO_ROOT, Build, Buildah

pytestmark = pytest.mark.image

# 606 MB measured (buildah 1.28, bookworm base): base 225 MB (minbase + python3, python3-venv, ca-certificates),
# /opt/kvsched 384 MB (kubernetes 126, numpy 73, matplotlib + fontTools 65, pip 16, pillow 23, uvloop 14). The
# bound leaves ~7% for pin bumps; what it is there to catch costs more: a dev or bench extra in the image (mypy,
# hypothesis, ortools), the build stage's sources or pip's cache, a second copy of the venv.
MAX_IMAGE_BYTES = 650 * 1000**2
IN_IMAGE = "/work/cluster.yaml"
EXAMPLE = REPO_ROOT / "examples" / "cluster.yaml"
# The plan's fields that are timings, not placements: they differ between any two runs.
TIMINGS = ("solveSeconds",)


def run_in_image(buildah: Buildah, image: str, command: list[str], volumes: tuple[str, ...] = ()) -> str:
    """stdout of `command` in a fresh working container of `image` (as the image's USER); fails the test with
    stderr on a non-zero exit."""
    with buildah.container(image) as container:
        done = subprocess.run(buildah.run_argv(container, command, volumes=volumes), capture_output=True, text=True)
    assert done.returncode == 0, f"{command} in the image exited {done.returncode}:\n{done.stderr[-3000:]}"
    return done.stdout


def plan_without_timings(text: str) -> dict[str, Any]:
    plan: dict[str, Any] = json.loads(text)
    for key in TIMINGS:
        assert key in plan, f"the plan has no {key}: update TIMINGS"
        del plan[key]
    return plan


def test_the_base_is_the_projects_python(built: tuple[Buildah, Build]) -> None:
    """The project's Python is the one mypy checks for (pyproject's tool.mypy python_version)."""
    buildah, build = built
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["tool"]["mypy"]["python_version"]
    version = run_in_image(buildah, build.tag, ["python", "--version"]).strip()
    assert re.fullmatch(rf"Python {re.escape(project)}\.\d+", version), (version, project)


def test_plan_runs_as_65532_and_prints_the_venvs_placement(built: tuple[Buildah, Build]) -> None:
    buildah, build = built
    volume = (f"{EXAMPLE}:{IN_IMAGE}:ro",)
    assert run_in_image(buildah, build.tag, ["id", "-u"]).strip() == "65532"
    assert run_in_image(buildah, build.tag, ["id", "-g"]).strip() == "65532"
    in_image = plan_without_timings(run_in_image(buildah, build.tag, ["kvsched", "plan", IN_IMAGE, "-o", "-"],
                                                 volume))
    venv = subprocess.run([str(Path(sys.executable).parent / "kvsched"), "plan", str(EXAMPLE), "-o", "-"],
                          capture_output=True, text=True, check=True)
    expected = plan_without_timings(venv.stdout)
    assert in_image["placements"], "the example's plan places nothing"
    assert in_image == expected


def test_the_images_version_is_the_projects(built: tuple[Buildah, Build]) -> None:
    buildah, build = built
    version = run_in_image(buildah, build.tag, ["kvsched", "--version"]).strip()
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
    assert version == f"kvsched {project['version']}", version


def test_the_image_size_is_within_its_bound(built: tuple[Buildah, Build],
                                            record_property: Callable[[str, object], None]) -> None:
    buildah, build = built
    size = buildah.size_bytes(build.tag)
    record_property("image_size_bytes", size)
    print(f"image {build.tag}: {size / 1000**2:.0f} MB, built in {build.seconds:.0f}s")
    assert 200 * 1000**2 < size <= MAX_IMAGE_BYTES, f"{size / 1000**2:.0f} MB"


def context_copy(destination: Path) -> Path:
    """The build context as .dockerignore lets it in: the files the Dockerfile copies."""
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name in ("Dockerfile", ".dockerignore", "constraints.txt", "pyproject.toml", "README.md"):
        shutil.copy2(REPO_ROOT / name, destination / name)
    shutil.copytree(REPO_ROOT / "kvsched", destination / "kvsched", ignore=ignore)
    return destination


def test_a_code_change_reuses_the_dependency_layer(built: tuple[Buildah, Build], tmp_path: Path) -> None:
    """Change a file under kvsched/ (its content: buildah keys COPY by content, so a touch alone changes nothing)
    and build the build stage again: the dependency install comes from the cache, the code is installed anew."""
    buildah, build = built
    context = context_copy(tmp_path)
    marker = f"# layer-cache probe {uuid.uuid4().hex}\n"
    with (context / "kvsched" / "__init__.py").open("a") as f:
        f.write(marker)
    probe = buildah.build(context, build.base_image, f"localhost/kvsched-cache-probe:{uuid.uuid4().hex[:8]}",
                          target="build")
    try:
        dependencies = [s for s in probe.steps if "pip install --constraint constraints.txt" in s.instruction]
        code = [s for s in probe.steps if s.instruction.startswith("COPY kvsched/")]
        install = [s for s in probe.steps if "pip install --no-deps" in s.instruction]
        assert dependencies and code and install, probe.output[-3000:]
        assert dependencies[0].cached, f"the dependencies were installed again:\n{probe.output[-3000:]}"
        assert not code[0].cached and not install[0].cached, "the changed code came from the cache"
        print(f"build stage after a code change: {probe.seconds:.0f}s")
    finally:
        new_layers = [s.layer for s in probe.steps if not s.cached and s.layer]
        buildah.remove_images(probe.tag, *reversed(new_layers))
