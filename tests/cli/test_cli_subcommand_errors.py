"""Each subcommand's errors start with its own name, once: `kvsched extender: ...`, never `kvsched plan: kvsched
extender: ...` (issue 14). The whole first line of stderr is checked, not a substring of it."""

from __future__ import annotations

import re
from typing import Any, Callable

import pytest

BAD_KUBECONFIG = "/nonexistent/kubeconfig"


@pytest.mark.parametrize("argv, environ, first_line", [
    pytest.param(["extender"], {"KVSCHED_PORT": "http"},
                 re.escape("kvsched extender: KVSCHED_PORT='http': 'http' is not a whole number"), id="extender, bad env"),
    pytest.param(["controller"], {"KVSCHED_METRICS_PORT": "http"},
                 re.escape("kvsched controller: KVSCHED_METRICS_PORT='http': 'http' is not a whole number"),
                 id="controller, bad env"),
    pytest.param(["serve"], {"KVSCHED_METRICS_PORT": "http"},
                 re.escape("kvsched serve: KVSCHED_METRICS_PORT='http': 'http' is not a whole number"), id="serve, bad env"),
    pytest.param(["extender", "--kubeconfig", BAD_KUBECONFIG, "--log-level", "error"], {},
                 re.escape(f"kvsched extender: cannot load the Kubernetes configuration ({BAD_KUBECONFIG}): ")
                 + ".+", id="extender, missing kubeconfig"),
    pytest.param(["controller", "--kubeconfig", BAD_KUBECONFIG, "--log-level", "error"], {},
                 re.escape(f"kvsched controller: cannot load the Kubernetes configuration ({BAD_KUBECONFIG}): ")
                 + ".+", id="controller, missing kubeconfig"),
    pytest.param(["serve", "--kubeconfig", BAD_KUBECONFIG, "--log-level", "error"], {},
                 re.escape(f"kvsched serve: cannot load the Kubernetes configuration ({BAD_KUBECONFIG}): ")
                 + ".+", id="serve, missing kubeconfig"),
    pytest.param(["plan"], {},
                 re.escape("kvsched plan: give a cluster FILE, or --kubeconfig to plan the live cluster"),
                 id="plan, no file"),
])
def test_error_names_its_subcommand_once(run_cli: Callable[..., Any], monkeypatch: pytest.MonkeyPatch,
                                         argv: list[str], environ: dict[str, str], first_line: str) -> None:
    for name, value in environ.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("KUBECONFIG", raising=False)
    result = run_cli(*argv)
    assert result.code == 2
    assert result.out == ""
    line = result.err.splitlines()[0]
    assert re.fullmatch(first_line, line), line
