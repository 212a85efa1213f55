"""Smoke test of the benchmark runner on a tiny subset: 3 ADRS cases, scale 16, repeat 1.

Checks the report's structure and that its figures agree with each other (greedy >= kvsched >= lower bound,
counts within range). It never checks how good the packer is: the packer is tuned against bench/, not here.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from bench.results import write_json
from bench.run import Report, build_report, format_report, main

SLACK = 1e-9  # relative, for comparisons of floats computed along different paths
OPTIMUM_SLACK = 2e-6  # the optima file is rounded and came from a bisection at 1e-6


@pytest.fixture(scope="module")
def report() -> Report:
    return build_report(adrs_count=3, scale_sizes=[16], repeat=1, ablation=True)


def test_adrs_figures_are_consistent(report: Report) -> None:
    adrs = report.adrs
    assert len(adrs.cases) == 3
    for case in adrs.cases:
        assert case.greedy_max_kvpr >= case.kvsched_max_kvpr * (1 - SLACK)
        assert case.kvsched_max_kvpr >= case.lower_bound * (1 - SLACK)
        if case.optimum is not None:
            assert case.kvsched_max_kvpr >= case.optimum * (1 - OPTIMUM_SLACK)
            assert case.lower_bound <= case.optimum * (1 + OPTIMUM_SLACK)
        assert case.greedy_ms > 0 and case.kvsched_ms > 0
    for summary in (adrs.greedy, adrs.kvsched):
        assert summary.cases == 3
        assert 0 <= summary.at_reference <= summary.cases
        assert summary.worst_gap_pct >= summary.mean_gap_pct >= -OPTIMUM_SLACK * 100
        assert summary.mean_ms > 0 and summary.median_ms > 0
    assert adrs.greedy.mean_max_kvpr >= adrs.kvsched.mean_max_kvpr * (1 - SLACK)
    assert adrs.greedy.at_reference <= adrs.kvsched.at_reference
    assert adrs.reference == ("optimum" if adrs.optima_found else "lower bound")


def test_scale_figures_are_consistent(report: Report) -> None:
    [row] = report.scale
    assert (row.n_gpus, row.n_models) == (16, 48)
    assert row.lower_bound >= row.fluid_bound * (1 - SLACK)
    assert row.greedy_max_kvpr >= row.kvsched_max_kvpr * (1 - SLACK)
    assert row.kvsched_max_kvpr >= row.lower_bound * (1 - SLACK)
    assert row.greedy_gap_fluid_pct >= row.kvsched_gap_fluid_pct - SLACK
    assert row.kvsched_gap_fluid_pct >= row.kvsched_gap_lb_pct - SLACK >= -SLACK
    assert row.kvsched_s > 0 and row.greedy_s > 0
    assert row.tracemalloc_peak_mib > 0 and row.maxrss_mib > 0


def test_targets_cover_the_issue(report: Report) -> None:
    statuses = {t.name: t.status for t in report.targets}
    assert len(statuses) == 6
    assert set(statuses.values()) <= {"PASS", "MISS", "not run"}
    assert all(s == "not run" for name, s in statuses.items() if "1024" in name or "8192" in name)
    assert statuses["scale 128: <= 1.0% above fluid in <= 1 s"] == "not run"


def test_ablation_counts_are_in_range(report: Report) -> None:
    ab = report.ablation
    assert ab is not None
    assert [(r.suite, r.retune) for r in ab.full] == [
        ("ADRS (3)", True), ("ADRS (3)", False), ("scale-16", True), ("scale-16", False)]
    for row in ab.full:
        assert 0 <= row.retunes <= row.checkpoints
        assert row.mean_gap_pct >= -OPTIMUM_SLACK * 100
        assert row.mean_passes >= row.mean_bisection_iterations >= 0
        if not row.retune:
            assert row.retunes == 0
    assert ab.fast_pass
    for fast in ab.fast_pass:
        assert 0 <= fast.on_complete <= fast.instances
        assert 0 <= fast.off_complete <= fast.instances
        assert (fast.on_mean_gap_pct is None) == (fast.on_complete == 0)
        if fast.on_mean_gap_pct is not None and fast.on_worst_gap_pct is not None:
            assert fast.on_worst_gap_pct >= fast.on_mean_gap_pct >= -SLACK
    assert len(ab.budget_zero) == 4
    for budget in ab.budget_zero:
        assert budget.worst_gap_pct >= budget.mean_gap_pct >= -OPTIMUM_SLACK * 100
        if not budget.retune:
            assert budget.retunes == 0


def test_text_report_has_every_section(report: Report) -> None:
    text = format_report(report)
    for heading in ("ADRS-50", "SCALE", "TARGETS", "RETUNE ABLATION", "SINGLE PASS", "TIME BUDGET 0"):
        assert heading in text
    lines = text.splitlines()
    rules = [i for i, line in enumerate(lines) if line.startswith("---")]
    assert len(rules) >= 6
    for i in rules:  # the header above each rule is exactly as wide as the rule
        assert len(lines[i - 1]) == len(lines[i])


def test_json_holds_every_figure(report: Report, tmp_path: Path) -> None:
    path = tmp_path / "out" / "latest.json"
    write_json(report, path)

    def reject(name: str) -> float:
        raise AssertionError(f"non-standard JSON constant {name}")

    data = json.loads(path.read_text(), parse_constant=reject)
    assert set(data) >= {"machine", "adrs", "scale", "targets", "ablation"}
    assert {"platform", "python", "cpu_count", "date"} <= set(data["machine"])
    assert len(data["adrs"]["cases"]) == 3
    assert math.isfinite(data["scale"][0]["kvsched_s"])


def test_main_writes_json_and_exits_zero(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "r.json"
    code = main(["--adrs-cases", "2", "--scale-sizes", "16", "--repeat", "1", "--no-ablation", "--json", str(path)])
    assert code == 0
    assert "TARGETS" in capsys.readouterr().out
    assert json.loads(path.read_text())["ablation"] is None


def test_help_explains_the_flags(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for flag in ("--quick", "--repeat", "--scale-sizes", "--no-ablation", "--json"):
        assert flag in out
