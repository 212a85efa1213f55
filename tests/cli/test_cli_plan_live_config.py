"""`kvsched plan --kubeconfig` decides like the controller (issue 14): its DecisionConfig is
`decision_config(settings)` built from the controller's flags and KVSCHED_* environment, and it solves with that
config's `pack_options()`. The cluster is a fake World handed over in place of the API reader (no cluster)."""

from __future__ import annotations

import argparse
import os
from typing import Any, Callable

import pytest

import kvsched.controller as core
from kvsched.api.objects import World
from kvsched.cli import build_parser
from kvsched.controller import DecisionConfig
from kvsched.packer import PackOptions, solve
from kvsched.runtime.controller import decision_config
from kvsched.settings import ControllerSettings, settings_from
from tests.controller.fake import bind_planned, deployment, node, settle


def _world() -> World:
    world = World(nodes=(node("n1", gpus=1, labels={"pool": "gpu"}),), deployments=(deployment("a", rate="4"),))
    return settle(bind_planned(settle(world)[0]))[0]


@pytest.mark.parametrize("flags, environ", [
    pytest.param([], {}, id="defaults"),
    pytest.param([], {"KVSCHED_TIME_BUDGET_S": "0", "KVSCHED_STABILITY_THRESHOLD": "0.2",
                      "KVSCHED_MAX_MIGRATIONS": "3", "KVSCHED_SCHEDULER_NAME": "gpu-sched",
                      "KVSCHED_NODE_SELECTOR": "pool=gpu"}, id="environment"),
    pytest.param(["--time-budget-seconds", "0", "--stability-threshold", "0.1", "--max-migrations", "2",
                  "--scheduler-name", "llm", "--node-selector", "pool=gpu"],
                 {"KVSCHED_TIME_BUDGET_S": "9", "KVSCHED_MAX_MIGRATIONS": "5", "KVSCHED_SCHEDULER_NAME": "env"},
                 id="flags win over the environment"),
    pytest.param(["--node-selector", "pool=cpu"], {}, id="a selector that leaves no GPU: the replica is reported unplaced"),
    pytest.param(["--gpu-memory-reserve", "2Gi", "--engine-overhead", "1.5"],
                 {"KVSCHED_ENGINE_CONTEXT_GIB": "256Mi", "KVSCHED_ENGINE_OVERHEAD_GIB": "9"},
                 id="memory headroom: flags (quantities or GiB) and environment"),
])
def test_plan_kubeconfig_decides_like_the_controller(run_cli: Callable[..., Any], monkeypatch: pytest.MonkeyPatch,
                                                     flags: list[str], environ: dict[str, str]) -> None:
    for name in [n for n in os.environ if n.startswith("KVSCHED_")]:
        monkeypatch.delenv(name)
    for name, value in environ.items():
        monkeypatch.setenv(name, value)
    configs: list[DecisionConfig] = []
    options: list[PackOptions] = []
    real_decide, real_solve = core.decide, solve

    def decide(world: World, config: DecisionConfig, planner: Any, **kw: Any) -> Any:
        configs.append(config)
        return real_decide(world, config, planner, **kw)

    def recording_solve(*args: Any, **kw: Any) -> Any:
        options.append(kw["options"])
        return real_solve(*args, **kw)

    monkeypatch.setattr("kvsched.controller.decide", decide)
    monkeypatch.setattr("kvsched.packer.solve", recording_solve)
    monkeypatch.setattr("kvsched.k8s.client.api_client", lambda *a, **k: object())
    monkeypatch.setattr("kvsched.k8s.snapshot.read_world", lambda *a, **k: _world())
    result = run_cli("plan", "--kubeconfig", "unused", *flags)
    assert result.code == 0, result.err

    controller_args: argparse.Namespace = build_parser().parse_args(["controller", *flags])
    expected = decision_config(settings_from(ControllerSettings, controller_args))
    assert configs == [expected]
    assert options and set(options) == {expected.pack_options()}


def test_plan_kubeconfig_names_a_bad_environment_value(run_cli: Callable[..., Any],
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KVSCHED_TIME_BUDGET_S", "soon")
    monkeypatch.setattr("kvsched.k8s.client.api_client", lambda *a, **k: pytest.fail("read the cluster"))
    result = run_cli("plan", "--kubeconfig", "unused")
    assert result.code == 2
    assert result.err.splitlines()[0] == "kvsched plan: KVSCHED_TIME_BUDGET_S='soon': 'soon' is not a decimal number"
