"""The packer is a pure core: it imports only the standard library, numpy, sortedcontainers and itself."""

from __future__ import annotations

import ast
from pathlib import Path

import kvsched.packer

ALLOWED_TOP = {"__future__", "bisect", "collections", "dataclasses", "heapq", "itertools", "math", "typing",
               "numpy", "sortedcontainers", "time"}
# No I/O, processes, sockets, logging set-up or randomness from the environment inside the packer.
FORBIDDEN_STD = {"os", "sys", "io", "socket", "subprocess", "logging", "random", "pathlib", "threading"}


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def test_packer_imports_nothing_but_the_allowed() -> None:
    root = Path(kvsched.packer.__file__).parent
    files = sorted(root.rglob("*.py"))  # the replan package included
    assert len(files) > 10
    for path in files:
        for name in _imports(path):
            top = name.split(".")[0]
            if name.startswith("kvsched."):
                assert name.startswith("kvsched.packer"), f"{path.name} imports {name}"
                continue
            assert top not in FORBIDDEN_STD, f"{path.name} imports {name}"
            assert top in ALLOWED_TOP, f"{path.name} imports {name}: not on the packer's allowed list"


def test_only_the_planner_reads_time_and_only_as_the_default_clock() -> None:
    root = Path(kvsched.packer.__file__).parent
    for path in root.rglob("*.py"):
        text = path.read_text()
        if path.name == "planner.py":
            assert text.count("time.perf_counter") == 1  # the default of the injected `clock` parameter
        else:
            assert "import time" not in text, f"{path.name} reads the clock"
