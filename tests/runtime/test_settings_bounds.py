"""Every setting is read strictly and checked at start-up: a bad flag or environment variable stops the command with
a message naming it, instead of a loop that spins, a flag silently read as false, or a port that fails later."""

from __future__ import annotations

import pytest

from kvsched.cli import build_parser, main
from kvsched.settings import (
    BOUNDS,
    ControllerSettings,
    ExtenderSettings,
    HolderSettings,
    check_settings,
    flag_name,
    settings_from,
)

# (command, flag=value, what the error names): refused by the flag's reader (argparse exits 2).
UNREADABLE = [
    ("controller", "--gpu-holders=junk", "not true or false"),
    ("extender", "--gpu-holders=maybe", "not true or false"),
    ("controller", "--stability-threshold=nan", "not a decimal number"),
    ("controller", "--time-budget-seconds=inf", "not a decimal number"),
    ("controller", "--debounce-seconds=1_0", "not a decimal number"),
    ("extender", "--port=8_888", "not a whole number"),
    ("extender", "--port=٨٨٨٨", "not a whole number"),
    ("controller", "--max-migrations=²", "not a whole number"),
    ("controller", "--log-level=loud", "not one of debug"),
]

# (command, flag=value, the flag named in the error): read, then out of bounds (exit 2 from the command).
OUT_OF_BOUNDS = [
    ("controller", "--time-budget-seconds=-1", "--time-budget-seconds"),
    ("controller", "--stability-threshold=-0.1", "--stability-threshold"),
    ("controller", "--max-migrations=-3", "--max-migrations"),
    ("controller", "--metrics-port=0", "--metrics-port"),
    ("controller", "--debounce-seconds=3600", "--debounce-seconds"),
    ("controller", "--lease-duration-seconds=5", "--lease-duration-seconds"),
    ("controller", "--retry-period-seconds=12", "--retry-period-seconds"),
    ("extender", "--port=70000", "--port"),
    ("extender", "--max-request-bytes=10", "--max-request-bytes"),
    ("extender", "--bind-timeout-seconds=0", "--bind-timeout-seconds"),
    ("extender", "--start-timeout-seconds=-5", "--start-timeout-seconds"),
]


@pytest.mark.parametrize("command, arg, reason", UNREADABLE)
def test_an_unreadable_flag_is_refused_naming_it(command: str, arg: str, reason: str,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        build_parser().parse_args([command, arg])
    err = capsys.readouterr().err
    assert exited.value.code == 2 and arg.split("=")[0] in err and reason in err


@pytest.mark.parametrize("command, arg, flag", OUT_OF_BOUNDS)
def test_a_flag_out_of_bounds_stops_the_command_naming_it(command: str, arg: str, flag: str,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    # The kubeconfig is never reached: the settings are checked first.
    assert main([command, arg, "--kubeconfig=/nonexistent/kubeconfig"]) == 2
    err = capsys.readouterr().err
    assert flag in err and "must be" in err and "kubeconfig" not in err.split(flag, 1)[0], err


@pytest.mark.parametrize("variable, value, reason", [
    ("KVSCHED_GPU_HOLDERS", "maybe", "not true or false"),
    ("KVSCHED_TIME_BUDGET_S", "-2", "--time-budget-seconds: must be >= 0"),
    ("KVSCHED_MAX_MIGRATIONS", "1_0", "not a whole number"),
    ("KVSCHED_LOG_LEVEL", "verbose", "not one of"),
])
def test_a_bad_environment_variable_is_refused_naming_it(variable: str, value: str, reason: str) -> None:
    args = build_parser().parse_args(["controller"])
    with pytest.raises(ValueError) as refused:
        settings_from(ControllerSettings, args, {variable: value})
    assert reason in str(refused.value)
    if "must be" not in reason:
        assert variable in str(refused.value)


@pytest.mark.parametrize("text, value", [("true", True), ("False", False), ("1", True), ("0", False),
                                         ("yes", True), ("off", False)])
def test_a_boolean_takes_the_usual_words(text: str, value: bool) -> None:
    args = build_parser().parse_args(["controller", f"--gpu-holders={text}"])
    assert settings_from(ControllerSettings, args, {}).gpu_holders is value


@pytest.mark.parametrize("cls", [ControllerSettings, ExtenderSettings, HolderSettings])
def test_every_default_is_within_its_bounds(cls: type) -> None:
    check_settings(cls())  # raises otherwise


def test_every_bound_names_a_numeric_field_of_some_settings_class() -> None:
    fields = {f: t for cls in (ControllerSettings, ExtenderSettings, HolderSettings)
              for f, t in cls.__annotations__.items()}
    for name in BOUNDS:
        assert name in fields and ("int" in fields[name] or "float" in fields[name]), flag_name(name)
