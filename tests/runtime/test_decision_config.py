"""One path for the decision knobs (issue 14): `DecisionConfig`'s defaults are `ControllerSettings`', its
`PackOptions` come from `DecisionConfig.pack_options()` wherever the controller solves (the loop's `_plan`,
`kvsched plan --kubeconfig`; see tests/cli/test_cli_plan_live_config.py)."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from kvsched.controller import DecisionConfig
from kvsched.metrics import Metrics
from kvsched.packer import PackOptions, solve
from kvsched.runtime.controller import decision_config
from kvsched.runtime.loop import Reconciler
from kvsched.settings import ControllerSettings


@pytest.mark.parametrize("field", [f.name for f in dataclasses.fields(DecisionConfig)])
def test_decision_config_defaults_are_the_controller_settings_defaults(field: str) -> None:
    assert getattr(decision_config(ControllerSettings()), field) == getattr(DecisionConfig(), field)


def test_decision_config_from_default_settings_equals_the_default() -> None:
    assert decision_config(ControllerSettings()) == DecisionConfig()


@pytest.mark.parametrize("config", [
    pytest.param(DecisionConfig(), id="defaults"),
    pytest.param(DecisionConfig(time_budget_s=0.0, stability_threshold_ratio=0.0, max_migrations=0), id="zeros"),
    pytest.param(DecisionConfig(time_budget_s=120.0, stability_threshold_ratio=0.3, max_migrations=7),
                 id="every knob set"),
])
def test_pack_options_carry_the_configs_knobs_and_the_packers_other_defaults(config: DecisionConfig) -> None:
    assert config.pack_options() == PackOptions(time_budget_s=config.time_budget_s,
                                                stability_threshold_ratio=config.stability_threshold_ratio,
                                                max_migrations=config.max_migrations)


def test_the_loop_solves_with_the_configs_pack_options() -> None:
    seen: list[PackOptions] = []

    def solver(*args: Any, **kw: Any) -> Any:
        seen.append(kw["options"])
        return solve(*args, **kw)

    config = DecisionConfig(time_budget_s=0.0, stability_threshold_ratio=0.2, max_migrations=3)
    r = Reconciler(config, _NullWriter(), Metrics(), clock=lambda: 0.0, wall=lambda: "2026-11-28T06:00:00Z",
                   solver=solver)
    r._plan([], [], [], [])
    assert seen == [config.pack_options()]


class _NullWriter:
    """The loop's `_plan` writes nothing; any write is a defect of this test."""

    def __getattr__(self, name: str) -> Any:
        raise AssertionError(f"unexpected write {name}")
