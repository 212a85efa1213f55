"""plan_output on hand-built plans: JSON null for inf, rounding, steps, causes, model truncation, table layout."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest

from kvsched.packer import GpuId, GpuUsage, MigrationStep, Placement, Plan, Unplaced
from kvsched.plan_output import (
    format_gap,
    format_kv,
    format_kvpr,
    format_memory,
    gpu_table_lines,
    plan_to_json,
    plan_to_table,
    round_significant,
    shorten_models,
    step_lines,
    wrap_models,
)

A0 = GpuId("a", 0)
A1 = GpuId("a", 1)


def hand_plan(kvpr_a1: float = math.inf, lower_bound: float = 0.1, next_move_gain: float = 0.0) -> Plan:
    return Plan(
        max_kvpr=kvpr_a1,
        lower_bound=lower_bound,
        retunes=2,
        solve_seconds=0.1234567891,
        placements=(Placement("m1", 0, A0, 0.6, 30.2), Placement("m1", 1, A1, 0.5), Placement("m2", 0, A1, 0.5)),
        gpus=(GpuUsage(A0, 80.0, 0.123456789, 16.0, ("m1",), reserve_gib=1.0, engine_gib=3.5, kv_memory_gib=59.5),
              GpuUsage(A1, 40.0, kvpr_a1, 40.0, ("m1", "m2"))),
        unplaced=(Unplaced("m3", 0, "needs 90 GiB, the largest GPU has 80", "ModelTooLarge"),),
        steps=(MigrationStep("m1", 0, None, A0), MigrationStep("m2", 0, A0, A1, stop_first=True)),
        next_move_gain=next_move_gain,
    )


def test_infinite_values_become_null_and_the_document_is_strict_json() -> None:
    document = plan_to_json(hand_plan())
    text = json.dumps(document, allow_nan=False)
    assert json.loads(text) == document
    assert document["maxKVPR"] is None
    assert document["gapPercent"] is None
    assert document["gpus"][1]["kvpr"] is None


def test_rounding_keeps_bounds_exact_and_rounds_the_rest() -> None:
    document = plan_to_json(hand_plan(kvpr_a1=0.2345678901234, lower_bound=0.1111111111111))
    assert document["maxKVPR"] == 0.2345678901234
    assert document["lowerBound"] == 0.1111111111111
    assert document["gpus"][0]["kvpr"] == 0.123457
    assert document["solveSeconds"] == 0.123457
    assert document["gapPercent"] == pytest.approx(111.111, abs=1e-3)


def test_steps_name_source_target_and_order() -> None:
    document = plan_to_json(hand_plan())
    assert document["steps"] == [
        {"model": "m1", "replica": 0, "fromNode": None, "fromGpu": None, "toNode": "a", "toGpu": 0,
         "stopFirst": False, "kind": "start"},
        {"model": "m2", "replica": 0, "fromNode": "a", "fromGpu": 0, "toNode": "a", "toGpu": 1, "stopFirst": True,
         "kind": "move"},
    ]
    assert document["moves"] == 1 and document["shareRestarts"] == 0


def test_unplaced_entries_carry_the_cause() -> None:
    assert plan_to_json(hand_plan())["unplaced"] == [
        {"model": "m3", "replica": 0, "cause": "ModelTooLarge", "reason": "needs 90 GiB, the largest GPU has 80"}]


@pytest.mark.parametrize(
    ("gain", "line"),
    [pytest.param(0.0, None, id="no budget cut: no next-move line"),
     pytest.param(0.05, "next move:    more moves would lower the max KVPR by 0.05 (max migrations reached)",
                  id="budget cut: the gain is shown")],
)
def test_next_move_gain_in_json_and_table(gain: float, line: str | None) -> None:
    plan = hand_plan(next_move_gain=gain)
    assert plan_to_json(plan)["nextMoveGain"] == gain
    lines = plan_to_table(plan).splitlines()
    assert (line in lines) if line else not any(x.startswith("next move:") for x in lines)


def test_table_shows_inf_unplaced_and_summary() -> None:
    table = plan_to_table(hand_plan())
    lines = table.splitlines()
    assert lines[0].split() == ["NODE", "GPU", "MODELS", "(KV", "CACHE", "GiB)", "MEMORY", "RESERVE", "KVPR"]
    assert lines[1].split() == ["a", "0", "m1", "(30.2)", "16/80Gi", "1Gi", "0.123457"]
    assert lines[2].split() == ["a", "1", "m1", "(0),", "m2", "(0)", "40/40Gi", "0Gi", "inf"]
    assert "memory:       59.5Gi for KV cache; 1Gi reserved on 2 GPUs, 3.5Gi engine overheads and CUDA contexts" \
        in lines
    assert "  m3 replica 0: needs 90 GiB, the largest GPU has 80" in lines
    assert "max KVPR:     inf" in lines
    assert "placed:       3/4 replicas" in lines
    assert "steps:        2 (1 moved, 1 newly placed)" in lines
    first = lines.index("STEPS (2, in order):")
    assert lines[first + 1:first + 3] == ["  1. m1 replica 0: start a/0",
                                          "  2. m2 replica 0: a/0 -> a/1 (stop the old one first)"]
    assert table.endswith("\n")


@pytest.mark.parametrize(
    ("value", "text"),
    [pytest.param(math.inf, "inf", id="inf"), pytest.param(0.0, "0", id="zero"),
     pytest.param(1234567.0, "1.23457e+06", id="large"), pytest.param(1 / 3, "0.333333", id="third")],
)
def test_format_kvpr(value: float, text: str) -> None:
    assert format_kvpr(value) == text


@pytest.mark.parametrize(
    ("gap", "text"),
    [pytest.param(0.0, "0.00%", id="optimal"), pytest.param(0.0512, "5.12%", id="five percent"),
     pytest.param(math.inf, "inf", id="bound is zero")],
)
def test_format_gap(gap: float, text: str) -> None:
    assert format_gap(gap) == text


@pytest.mark.parametrize(
    ("used", "total", "text"),
    [pytest.param(56.0, 80.0, "56/80Gi", id="whole"), pytest.param(7.6, 40.0, "7.6/40Gi", id="fraction"),
     pytest.param(0.0, 79.99, "0/80Gi", id="rounds")],
)
def test_format_memory(used: float, total: float, text: str) -> None:
    assert format_memory(used, total) == text


@pytest.mark.parametrize(
    ("models", "width", "text"),
    [
        pytest.param((), 20, "-", id="empty GPU"),
        pytest.param(("a", "b"), 20, "a, b", id="fits"),
        pytest.param(("alpha", "beta", "gamma", "delta"), 20, "alpha, beta, +2 more", id="cut"),
        pytest.param(("a" * 30, "b"), 20, "aaaaaaaa…, +1 more", id="first name too long"),
        pytest.param(("a" * 30,), 20, "aaaaaaaa…", id="single name too long"),
    ],
)
def test_shorten_models(models: tuple[str, ...], width: int, text: str) -> None:
    assert shorten_models(models, width) == text
    assert len(text) <= width


def test_json_has_the_reserve_engines_and_kv_memory_of_every_gpu_and_replica() -> None:
    document = plan_to_json(hand_plan())
    assert document["gpus"][0] == {"node": "a", "gpu": 0, "kvpr": 0.123457, "memory": 80.0, "usedMemory": 16.0,
                                   "reserve": 1.0, "engineMemory": 3.5, "kvMemory": 59.5, "models": ["m1"]}
    assert document["placements"][0] == {"model": "m1", "replica": 0, "node": "a", "gpu": 0, "memoryFraction": 0.6,
                                         "kvMemory": 30.2}


@pytest.mark.parametrize(
    ("gib", "text"),
    [pytest.param(21.345, "21.3", id="one decimal"), pytest.param(3.0, "3", id="whole"),
     pytest.param(0.0512, "0.05", id="below 1 GiB: two decimals"), pytest.param(0.0, "0", id="none"),
     pytest.param(0.5, "0.5", id="half")],
)
def test_format_kv(gib: float, text: str) -> None:
    assert format_kv(gib) == text


@pytest.mark.parametrize(
    ("models", "width", "lines"),
    [
        pytest.param([], 20, ["-"], id="empty GPU"),
        pytest.param(["a (1)", "b (2)"], 20, ["a (1), b (2)"], id="fits"),
        pytest.param(["alpha (1)", "beta (2)", "gamma (3)"], 20, ["alpha (1), beta (2),", "gamma (3)"],
                     id="wraps, the comma stays"),
        pytest.param(["a" * 30, "b (1)"], 20, ["a" * 30 + ",", "b (1)"], id="a name longer than the width"),
    ],
)
def test_wrap_models(models: list[str], width: int, lines: list[str]) -> None:
    assert wrap_models(models, width) == lines


def test_a_gpu_whose_models_do_not_fit_continues_on_the_next_line() -> None:
    names = tuple(f"model-{k}-with-a-long-name" for k in range(4))
    gpu = GpuUsage(A0, 80.0, 0.5, 40.0, names, reserve_gib=1.0)
    lines = gpu_table_lines([gpu], {(A0, name): 2.0 for name in names})
    assert len(lines) == 3
    assert lines[1].split() == ["a", "0", "model-0-with-a-long-name", "(2),", "model-1-with-a-long-name", "(2),",
                                "40/80Gi", "1Gi", "0.5"]
    assert lines[2].startswith(" ") and lines[2].strip() == "model-2-with-a-long-name (2), model-3-with-a-long-name (2)"


@pytest.mark.parametrize(
    ("value", "digits", "expected"),
    [pytest.param(0.0, 6, 0.0, id="zero"), pytest.param(math.inf, 6, math.inf, id="inf"),
     pytest.param(123.456789, 3, 123.0, id="three digits"), pytest.param(1e-9 / 3, 2, 3.3e-10, id="tiny")],
)
def test_round_significant(value: float, digits: int, expected: float) -> None:
    assert round_significant(value, digits) == expected


@pytest.mark.parametrize(
    ("kept", "line"),
    [pytest.param(True, "steps:        1 (0 moved, 1 newly placed) (running replicas kept: no plan found beats that "
                        "by more than the stability threshold)", id="kept: says why"),
     pytest.param(False, "steps:        1 (0 moved, 1 newly placed)", id="fresh plan: nothing to keep")],
)
def test_the_summary_says_when_the_running_replicas_were_kept(kept: bool, line: str) -> None:
    plan = dataclasses.replace(hand_plan(), steps=(MigrationStep("m1", 0, None, A0),), kept_current=kept)
    assert line in plan_to_table(plan).splitlines()


def test_a_resize_step_is_shown_as_a_restart_in_place() -> None:
    plan = dataclasses.replace(hand_plan(), steps=(MigrationStep("m2", 0, A0, A0, stop_first=True),
                                                   MigrationStep("m1", 0, A0, A1)))
    document = plan_to_json(plan)
    assert [s["kind"] for s in document["steps"]] == ["resize", "move"]
    assert document["moves"] == 1 and document["shareRestarts"] == 1
    lines = step_lines(plan)
    assert lines[1] == "  1. m2 replica 0: restart on a/0 with its planned memory share"
    assert lines[2].startswith("  2. m1 replica 0: a/0 -> a/1")
    assert plan.restarts == 2 and plan.resizes == 1
