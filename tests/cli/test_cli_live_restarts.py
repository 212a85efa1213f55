"""`kvsched plan --kubeconfig` lists the pods the controller would restart for their memory shares. The cluster
is a fake World handed to the command in place of the API reader (no cluster)."""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import pytest

from kvsched.api.objects import World
from tests.controller.fake import apply, bind_planned, deployment, node, run, settle


def shared_gpu_world(third: bool) -> World:
    """One 80 GiB GPU running a and b with the shares of their two-model plan; `third` adds model c to plan."""
    world = World(nodes=(node("n1", gpus=1),), deployments=(deployment("a", rate="4"), deployment("b", rate="2")))
    world, _ = settle(bind_planned(settle(world)[0]))
    if third:
        world = dataclasses.replace(world, deployments=(*world.deployments, deployment("c", rate="4")))
        world = apply(world, run(world))  # c's ModelServing is created; the next decision plans it
    return world


@pytest.mark.parametrize("third, restarted", [pytest.param(False, [], id="nothing changed: no restart listed"),
                                              pytest.param(True, ["ns/a-0", "ns/b-0"],
                                                           id="a third model on the GPU: both holders restart")])
def test_plan_kubeconfig_lists_restarts_for_memory_shares(run_cli: Callable[..., Any],
                                                          monkeypatch: pytest.MonkeyPatch, third: bool,
                                                          restarted: list[str]) -> None:
    world = shared_gpu_world(third)
    monkeypatch.setattr("kvsched.k8s.client.api_client", lambda *a, **k: object())
    monkeypatch.setattr("kvsched.k8s.snapshot.read_world", lambda *a, **k: world)
    result = run_cli("plan", "--kubeconfig", "unused", "--time-budget", "0")
    assert result.code == 0, result.err
    block = result.out.split("RESTARTS FOR MEMORY SHARES")
    if not restarted:
        assert len(block) == 1
        return
    lines = [line.strip() for line in block[1].splitlines()[1:] if line.strip()]
    assert [line.split()[0] for line in lines] == restarted
    for line in lines:
        runs, planned = (float(x.rstrip(",")) for x in (line.split("runs with ")[1].split()[0],
                                                        line.split("planned ")[1]))
        assert runs > planned  # each restarts because it runs above its planned share
