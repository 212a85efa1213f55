"""`kvsched plan` with a `current` section: re-plans, the migration cap, steps in JSON and table, causes,
and packer field names mapped back to the file's keys."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

import pytest

RunCli = Callable[..., Any]
WriteCluster = Callable[..., Path]


def crowded(**options: Any) -> dict[str, Any]:
    """Three busy models running on one GPU of three (a re-plan wants to spread them); `options` added."""
    document: dict[str, Any] = {
        "nodes": [{"name": "n", "gpus": 3, "gpuMemory": "80Gi"}],
        "models": [{"name": name, "size": "10Gi", "requestRate": 10, "sloSeconds": 1} for name in "xyz"],
        "current": [{"model": name, "replica": 0, "node": "n", "gpu": 0} for name in "xyz"],
        "options": {"timeBudgetSeconds": 0, **options},
    }
    return document


def plan_json(run_cli: RunCli, file: Path, *flags: str) -> dict[str, Any]:
    result = run_cli("plan", str(file), "--output", "-", *flags)
    assert result.code == 0, result.err
    document: dict[str, Any] = json.loads(result.out)
    return document


@pytest.mark.parametrize(
    ("options", "flags", "moves"),
    [
        pytest.param({}, [], 2, id="no cap: both other models move"),
        pytest.param({"maxMigrations": 1}, [], 1, id="file cap 1"),
        pytest.param({"maxMigrations": 0}, [], 0, id="file cap 0: nothing moves"),
        pytest.param({"maxMigrations": 0}, ["--max-migrations", "2"], 2, id="flag overrides the file"),
        pytest.param({"maxMigrations": None}, [], 2, id="null means no cap"),
    ],
)
def test_max_migrations_caps_the_moves(run_cli: RunCli, write_cluster: WriteCluster, options: dict[str, Any],
                                       flags: list[str], moves: int) -> None:
    document = plan_json(run_cli, write_cluster(crowded(**options)), *flags)
    assert document["moves"] == moves
    assert sum(1 for s in document["steps"] if s["fromNode"] is not None) == moves
    assert (document["nextMoveGain"] > 0) == (moves < 2)
    assert document["keptCurrent"] == (moves == 0)


def test_the_table_lists_the_steps_in_order(run_cli: RunCli, write_cluster: WriteCluster) -> None:
    result = run_cli("plan", str(write_cluster(crowded(maxMigrations=1))))
    assert result.code == 0, result.err
    lines = result.out.splitlines()
    first = lines.index("STEPS (1, in order):")
    assert lines[first + 1].startswith("  1. ") and "n/0 ->" in lines[first + 1]
    assert any(line.startswith("steps:        1 (1 moved, 0 newly placed)") for line in lines)
    assert any(line.startswith("next move:    more moves would lower the max KVPR by ") for line in lines)


def test_unplaced_json_names_the_cause(run_cli: RunCli, write_cluster: WriteCluster) -> None:
    document = plan_json(run_cli, write_cluster({
        "gpus": [{"node": "n", "index": 0, "memory": "40Gi"}],
        "models": [{"name": "big", "size": "70Gi", "requestRate": 1, "sloSeconds": 1},
                   {"name": "wide", "size": "1Gi", "requestRate": 1, "sloSeconds": 1, "replicas": 2}],
    }), "--time-budget", "0")
    assert [(u["model"], u["cause"]) for u in document["unplaced"]] == [("big", "ModelTooLarge"),
                                                                       ("wide", "TooFewGPUs")]


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        pytest.param(-1, ">= 0", id="negative"),
        pytest.param(1.5, "integer", id="not an integer"),
        pytest.param("many", "integer", id="a word"),
        pytest.param(True, "integer", id="a boolean"),
    ],
)
def test_bad_max_migrations_names_the_path(run_cli: RunCli, write_cluster: WriteCluster, value: Any,
                                           problem: str) -> None:
    file = write_cluster(crowded(maxMigrations=value))
    result = run_cli("plan", str(file))
    assert result.code == 2
    assert result.err.count("\n") == 1 and "options.maxMigrations" in result.err and problem in result.err


@pytest.mark.parametrize("flag", [pytest.param("-1", id="negative"), pytest.param("two", id="a word")])
def test_bad_max_migrations_flag_is_a_usage_error(run_cli: RunCli, write_cluster: WriteCluster, flag: str) -> None:
    result = run_cli("plan", str(write_cluster(crowded())), "--max-migrations", flag)
    assert result.code == 2 and "--max-migrations" in result.err


@pytest.mark.parametrize(
    ("field", "key"),
    [
        pytest.param("size_gib", "size", id="model size"),
        pytest.param("rate_rps", "requestRate", id="request rate"),
        pytest.param("slo_s", "sloSeconds", id="SLO"),
        pytest.param("memory_gib", "memory", id="GPU memory"),
        pytest.param("max_migrations", "maxMigrations", id="option"),
        pytest.param("something_new", "something_new", id="unknown names pass through"),
    ],
)
def test_packer_field_names_become_file_keys(run_cli: RunCli, write_cluster: WriteCluster,
                                             monkeypatch: pytest.MonkeyPatch, field: str, key: str) -> None:
    import kvsched.packer
    from kvsched.packer import InvalidInput

    def reject(*args: Any, **kwargs: Any) -> Any:
        raise InvalidInput("model 'x'", field, 1.0, "is wrong")

    monkeypatch.setattr(kvsched.packer, "solve", reject)
    result = run_cli("plan", str(write_cluster(crowded())))
    assert result.code == 2
    assert f"model 'x': {key}: is wrong (got 1.0)" in result.err


@pytest.mark.parametrize(
    ("fractions", "restarted"),
    [
        pytest.param({"x": 0.334, "y": 0.333, "z": 0.333}, [], id="shares as planned: all kept"),
        pytest.param({"x": 0.5, "y": 0.25, "z": 0.25}, ["x", "y", "z"],
                     id="two shares leave their pressure above the plan's worst, and what they need then takes "
                        "the third's: all restarted in place"),
        pytest.param({"x": 0.34, "y": 0.33, "z": 0.33}, [],
                     id="shares a little off the plan's, pressures within the threshold: kept"),
        pytest.param({}, [], id="no shares given: restarts are moves only"),
    ],
)
def test_current_memory_fractions_give_resize_steps(run_cli: RunCli, write_cluster: WriteCluster,
                                                    fractions: dict[str, float], restarted: list[str]) -> None:
    document = crowded(maxMigrations=0, gpuMemoryReserve=0, engineOverhead=0, engineContext=0)
    for slot in document["current"]:
        if slot["model"] in fractions:
            slot["memoryFraction"] = fractions[slot["model"]]
    # The cluster file's headroom keys are top level, not options.
    for key in ("gpuMemoryReserve", "engineOverhead", "engineContext"):
        document[key] = document["options"].pop(key)
    out = plan_json(run_cli, write_cluster(document))
    assert out["moves"] == 0 and out["shareRestarts"] == len(restarted)
    resizes = [s for s in out["steps"] if s["kind"] == "resize"]
    assert sorted(s["model"] for s in resizes) == restarted
    assert all((s["fromNode"], s["fromGpu"]) == (s["toNode"], s["toGpu"]) and s["stopFirst"] for s in resizes)
    kept = {p["model"]: p["memoryFraction"] for p in out["placements"] if p["model"] not in restarted}
    for model, share in kept.items():
        if model in fractions:
            assert share == pytest.approx(fractions[model], abs=1e-9)
    assert sum(p["memoryFraction"] for p in out["placements"]) <= 1 + 1e-9
