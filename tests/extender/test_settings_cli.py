"""`kvsched extender` settings: flags win over KVSCHED_* environment variables, which win over defaults; every
setting is in --help; bad values name the variable."""
from __future__ import annotations

import argparse
import dataclasses
import re

import pytest

from kvsched.cli import build_parser, main
from kvsched.settings import ExtenderSettings, env_name, field_docs, flag_name, settings_from


def parse(argv: list[str]) -> argparse.Namespace:
    return build_parser().parse_args(["extender", *argv])


@pytest.mark.parametrize("argv, environ, expected", [
    pytest.param([], {}, ExtenderSettings(), id="defaults"),
    pytest.param([], {"KVSCHED_PORT": "9000", "KVSCHED_SYNC_TIMEOUT_S": "2.5"},
                 ExtenderSettings(port=9000, sync_timeout_s=2.5), id="environment"),
    pytest.param(["--port", "9100", "--kubeconfig", "/k"], {"KVSCHED_PORT": "9000"},
                 ExtenderSettings(port=9100, kubeconfig="/k"), id="a flag wins over the environment"),
    pytest.param(["--scheduler-name", "gpu", "--max-request-bytes", "1024", "--bind-timeout-seconds", "3"], {},
                 ExtenderSettings(scheduler_name="gpu", max_request_bytes=1024, bind_timeout_s=3.0),
                 id="flags"),
])
def test_settings_from_flags_and_environment(argv: list[str], environ: dict[str, str],
                                             expected: ExtenderSettings) -> None:
    assert settings_from(ExtenderSettings, parse(argv), environ) == expected


def test_bad_environment_value_names_the_variable() -> None:
    with pytest.raises(ValueError, match="KVSCHED_PORT='http': 'http' is not a whole number"):
        settings_from(ExtenderSettings, parse([]), {"KVSCHED_PORT": "http"})


def test_help_lists_every_setting_with_its_doc_and_variable(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["extender", "--help"])
    assert exit_.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    docs = field_docs(ExtenderSettings)
    for f in dataclasses.fields(ExtenderSettings):
        assert flag_name(f.name) in text and env_name(f.name) in text
        assert docs[f.name].split(".")[0] in text


def test_missing_kubeconfig_is_a_usage_error(capsys: pytest.CaptureFixture[str], tmp_path: object) -> None:
    assert main(["extender", "--kubeconfig", "/nonexistent/kubeconfig", "--log-level", "error"]) == 2
    first_line = capsys.readouterr().err.splitlines()[0]
    assert re.fullmatch(r"kvsched extender: cannot load the Kubernetes configuration \(/nonexistent/kubeconfig\): .+",
                        first_line), first_line
