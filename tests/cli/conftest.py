"""Helpers for the CLI tests: run `kvsched.cli.main(argv)` in-process and capture exit code, stdout, stderr."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import pytest
import yaml

from kvsched.cli import main

@dataclass(frozen=True)
class Run:
    code: int
    out: str
    err: str


@pytest.fixture
def run_cli(capsys: pytest.CaptureFixture[str]) -> Callable[..., Run]:
    """Call main(argv); argparse's SystemExit (usage errors, --help, --version) becomes the exit code."""

    def run(*argv: str) -> Run:
        try:
            code = main(list(argv))
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
        captured = capsys.readouterr()
        return Run(code, captured.out, captured.err)

    return run


@pytest.fixture
def write_cluster(tmp_path: Path) -> Callable[..., Path]:
    """Write a document (dict, or raw text) to tmp_path/name; .json is dumped as JSON, anything else as YAML."""

    def write(document: Any, name: str = "cluster.yaml") -> Path:
        path = tmp_path / name
        if isinstance(document, str):
            path.write_text(document)
        elif name.endswith(".json"):
            path.write_text(json.dumps(document))
        else:
            path.write_text(yaml.safe_dump(document))
        return path

    return write


@pytest.fixture
def small_cluster() -> dict[str, Any]:
    """A valid document every bad-input row starts from and breaks in one place."""
    return {
        "gpus": [{"node": "n1", "index": 0, "memory": "80Gi"}, {"node": "n1", "index": 1, "memory": "40Gi"}],
        "nodes": [{"name": "n2", "gpus": 2, "gpuMemory": "80Gi"}],
        "models": [
            {"name": "llama-8b", "size": "16Gi", "requestRate": 4, "sloSeconds": 1, "replicas": 2},
            {"name": "llama-70b-awq", "size": "40Gi", "requestRate": 2, "sloSeconds": 2},
            {"name": "mistral-7b", "size": 14, "requestRate": 3, "sloSeconds": "500ms"},
        ],
        "current": [{"model": "llama-8b", "replica": 0, "node": "n1", "gpu": 0}],
        "options": {"stabilityThreshold": 0.05, "timeBudgetSeconds": 0},
    }
