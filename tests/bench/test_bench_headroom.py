"""Smoke test of the headroom comparison (`python -m bench.run --headroom`) on 2 ADRS cases and scale 16.

Checks that its figures agree with each other and that the headroom really reaches the solves; never how much
it costs (that is for bench/, not here).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench.adrs import adrs_cases
from bench.headroom import Headroom, HeadroomReport, format_headroom, run_headroom, with_headroom
from bench.run import main

SLACK = 1e-9


@pytest.fixture(scope="module")
def report() -> HeadroomReport:
    return run_headroom(adrs_count=2, scale_sizes=[16], repeat=1)


def test_each_instance_is_solved_without_and_with_the_headroom(report: HeadroomReport) -> None:
    assert [(c.suite, c.case) for c in report.cases] == [("ADRS (2)", 0), ("ADRS (2)", 1), ("scale-16", 0)]
    for case in report.cases:
        for side in (case.without, case.with_):
            assert side.max_kvpr >= side.lower_bound * (1 - SLACK) and side.ratio >= 1 - SLACK
            assert side.ms > 0
        # Less memory for KV cache everywhere: the headroom never lowers a proven optimum.
        if case.without.proven_optimal and case.with_.proven_optimal:
            assert case.cost_pct >= -SLACK


def test_rows_summarise_their_cases(report: HeadroomReport) -> None:
    assert [(r.suite, r.instances) for r in report.rows] == [("ADRS (2)", 2), ("scale-16", 1)]
    scale = report.rows[1]
    (case,) = [c for c in report.cases if c.suite == "scale-16"]
    assert scale.cost_median_pct == scale.cost_max_pct == case.cost_pct
    assert scale.ratio_with == case.with_.ratio
    text = "\n".join(format_headroom(report))
    assert "ADRS (2)" in text and "scale-16" in text and "cost median %" in text


def test_the_headroom_is_on_every_model_and_gpu() -> None:
    models, gpus = adrs_cases(1)[0]
    headroom = Headroom(reserve_gib=1.5, overhead_gib=2.0, context_gib=0.25)
    loaded, held = with_headroom(models, gpus, headroom)
    assert all((m.overhead_gib, m.context_gib) == (2.0, 0.25) for m in loaded)
    assert all(g.reserve_gib == 1.5 for g in held)
    assert [m.size_gib for m in loaded] == [m.size_gib for m in models]


def test_the_flag_runs_the_comparison_and_writes_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "headroom.json"
    assert main(["--headroom", "--quick", "--adrs-cases", "1", "--scale-sizes", "16", "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "HEADROOM" in text and "ADRS-50" not in text
    document = json.loads(out.read_text())
    assert [r["suite"] for r in document["rows"]] == ["ADRS (1)", "scale-16"]
