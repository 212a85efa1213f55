"""`make bench`: kvsched against the Prism greedy on ADRS-50 and on scale instances, plus the retune ablation.

Figures, not tests: nothing here asserts, and the exit code is 0 whatever the numbers. Prints a plain-text report
(targets marked PASS/MISS) and writes every figure as JSON to bench/results/latest.json (or --json PATH), with
the machine and the date. Times are wall time from time.perf_counter; a repeated solve reports its median.
Run: `python -m bench.run [--quick] [--repeat R] [--scale-sizes 16,128] [--no-ablation] [--json PATH]`;
`--headroom` runs only the cost of the memory headroom instead (bench/headroom.py).
Called by: `make bench`, tests/bench (smoke test on a tiny subset).
"""

from __future__ import annotations

import argparse
import gc
import math
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
import tracemalloc
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Sequence, TypeVar

import numpy as np

from bench.adrs import adrs_cases, adrs_optima
from bench.results import Target, figure, gap_pct, table, verdict, write_json
from bench.scale import scale_case
from kvsched.packer import Gpu, Model, PackOptions, Plan, solve
from kvsched.packer.bounds import fluid_bound, lower_bound
from kvsched.packer.evaluate import max_kvpr
from kvsched.packer.greedy import greedy
from kvsched.packer.instance import build_instance
from kvsched.packer.pack import try_pack
from kvsched.packer.search import candidates

REPO = Path(__file__).resolve().parent.parent
DEFAULT_JSON = REPO / "bench" / "results" / "latest.json"
DEFAULT_SCALE_SIZES = (16, 128, 1024, 8192)
QUICK_SCALE_SIZES = (16, 128)
# The headroom comparison solves every instance twice: 8192 GPUs only when asked for.
HEADROOM_SCALE_SIZES = (16, 128, 1024)
HEADROOM_JSON = REPO / "bench" / "results" / "headroom.json"
LOAD_JSON = REPO / "bench" / "results" / "load.json"  # python -m bench.run --load
QUICK_ADRS_CASES = 10
# The optima file gives ~8 significant digits; closer than this to the optimum counts as at it.
OPTIMUM_TOLERANCE_RATIO = 1e-6
# The retune ablation runs the scale sizes up to this many GPUs (8192 twice more would dominate the run).
ABLATION_MAX_GPUS = 1024
MIB = 1024.0 * 1024.0

T = TypeVar("T")
Case = tuple[list[Model], list[Gpu]]


# ---------------------------------------------------------------------------------------------- result rows


@dataclass(frozen=True)
class Machine:
    """Where and when the figures were taken; packer_dirty says kvsched/ had uncommitted changes."""

    platform: str
    python: str
    cpu_count: int | None
    numpy: str
    git_commit: str | None
    packer_dirty: bool | None
    date: str


@dataclass(frozen=True)
class AdrsCase:
    """One ADRS case. lower_bound is kvsched's plan's; times are medians over the repeats, in ms."""

    case: int
    n_gpus: int
    n_models: int
    optimum: float | None
    lower_bound: float
    greedy_max_kvpr: float
    greedy_unplaced: int
    greedy_ms: float
    kvsched_max_kvpr: float
    kvsched_unplaced: int
    kvsched_ms: float
    retunes: int
    proven_optimal: bool
    deterministic: bool  # the same max KVPR on every repeat


@dataclass(frozen=True)
class MethodSummary:
    """One method over the ADRS cases; gaps in % above the reference, times over the per-case medians."""

    method: str
    mean_max_kvpr: float
    at_reference: int
    cases: int
    mean_gap_pct: float
    worst_gap_pct: float
    median_ms: float
    mean_ms: float


@dataclass(frozen=True)
class AdrsReport:
    """reference is "optimum" (proven optima file found) or "lower bound" (kvsched's plan's, when it is not)."""

    reference: str
    optima_found: bool
    repeat: int
    cases: list[AdrsCase]
    greedy: MethodSummary
    kvsched: MethodSummary
    below_optimum: int  # kvsched below the proven optimum: a wrong optimum or an invalid plan


@dataclass(frozen=True)
class ScaleRow:
    """One scale instance. Gaps in % above the fluid bound and above kvsched's plan's lower bound; times in s.

    tracemalloc_peak_mib: peak of Python-tracked allocations (numpy included) during one traced kvsched solve,
    run after the timed ones. maxrss_mib: ru_maxrss of the whole process after the timed (untraced) solves: the
    process's peak resident memory so far, interpreter and earlier cases included.
    """

    n_gpus: int
    n_models: int
    fluid_bound: float
    lower_bound: float
    greedy_max_kvpr: float
    greedy_unplaced: int
    greedy_gap_fluid_pct: float
    greedy_gap_lb_pct: float
    greedy_s: float
    kvsched_max_kvpr: float
    kvsched_unplaced: int
    kvsched_gap_fluid_pct: float
    kvsched_gap_lb_pct: float
    kvsched_s: float
    retunes: int
    tracemalloc_peak_mib: float
    maxrss_mib: float


@dataclass(frozen=True)
class RetuneRow:
    """Full solves of one suite with retune on or off. Counts are totals over the suite's instances."""

    suite: str
    retune: bool
    instances: int
    retunes: int
    checkpoints: int
    mean_gap_pct: float
    reference: str
    mean_bisection_iterations: float
    mean_passes: float
    median_ms: float
    mean_ms: float


@dataclass(frozen=True)
class FastPassRow:
    """One `try_pack` pass per instance at T = lower bound, with retune on and off, for one (order, policy).

    on_gap_pct: % above the lower bound of the max KVPR of the passes that completed with retune on (None when
    none did). A pass with retune off that completes at T = lower bound is optimal, so only its count matters.
    """

    suite: str
    order: str
    policy: str
    instances: int
    on_complete: int
    on_retunes: int
    on_mean_gap_pct: float | None
    on_worst_gap_pct: float | None
    on_mean_ms: float
    off_complete: int
    off_mean_ms: float


@dataclass(frozen=True)
class BudgetRow:
    """`solve` with time_budget_s=0 (first feasible plan, no improving phases), retune on or off."""

    suite: str
    retune: bool
    instances: int
    reference: str
    mean_gap_pct: float
    worst_gap_pct: float
    retunes: int
    median_ms: float
    mean_ms: float


@dataclass(frozen=True)
class AblationReport:
    full: list[RetuneRow]
    fast_pass: list[FastPassRow]
    budget_zero: list[BudgetRow]


@dataclass(frozen=True)
class Report:
    machine: Machine
    repeat: int
    scale_sizes: list[int]
    adrs: AdrsReport
    scale: list[ScaleRow]
    targets: list[Target]
    ablation: AblationReport | None


# ------------------------------------------------------------------------------------------------- helpers


def timed(fn: Callable[[], T], repeat: int) -> tuple[list[T], float]:
    """Results of `repeat` calls of fn and the median wall time of one call, in seconds."""
    results: list[T] = []
    seconds: list[float] = []
    for _ in range(max(1, repeat)):
        start = time.perf_counter()
        results.append(fn())
        seconds.append(time.perf_counter() - start)
    return results, statistics.median(seconds)


def run_greedy(models: Sequence[Model], gpus: Sequence[Gpu]) -> tuple[float, int]:
    """The Prism baseline as the benchmark measures it: (max KVPR of the placed replicas, replicas unplaced)."""
    inst = build_instance(models, gpus)
    assign = greedy(inst)
    return max_kvpr(inst, assign), int((assign < 0).sum())


def maxrss_mib() -> float:
    """ru_maxrss of this process in MiB (Linux reports KiB, macOS bytes)."""
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / MIB if sys.platform == "darwin" else rss / 1024.0


def machine_info() -> Machine:
    def git(*args: str) -> str | None:
        try:
            out = subprocess.run(["git", "-C", str(REPO), *args], capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.SubprocessError):
            return None
        return out.stdout.strip() if out.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    status = git("status", "--porcelain", "--", "kvsched")
    return Machine(
        platform=platform.platform(),
        python=platform.python_version(),
        cpu_count=os.cpu_count(),
        numpy=np.__version__,
        git_commit=commit,
        packer_dirty=None if status is None else bool(status),
        date=datetime.now(timezone.utc).isoformat(timespec="seconds"),
    )


# ------------------------------------------------------------------------------------------------- ADRS-50


def _summarise(method: str, values: list[float], references: list[float], times_ms: list[float]) -> MethodSummary:
    gaps = [gap_pct(v, r) for v, r in zip(values, references)]
    return MethodSummary(
        method=method,
        mean_max_kvpr=statistics.fmean(values) if values else math.nan,
        at_reference=sum(v <= r * (1 + OPTIMUM_TOLERANCE_RATIO) for v, r in zip(values, references)),
        cases=len(values),
        mean_gap_pct=statistics.fmean(gaps) if gaps else math.nan,
        worst_gap_pct=max(gaps, default=math.nan),
        median_ms=statistics.median(times_ms) if times_ms else math.nan,
        mean_ms=statistics.fmean(times_ms) if times_ms else math.nan,
    )


def adrs_references(cases: Sequence[AdrsCase]) -> list[float]:
    """Per case, the proven optimum when known, else kvsched's plan's lower bound."""
    return [c.optimum if c.optimum is not None else c.lower_bound for c in cases]


def run_adrs(count: int = 50, repeat: int = 3) -> AdrsReport:
    """The first `count` ADRS cases, greedy and kvsched side by side, each solved `repeat` times."""
    optima = adrs_optima()
    rows: list[AdrsCase] = []
    for k, (models, gpus) in enumerate(adrs_cases(count)):
        greedy_runs, greedy_s = timed(lambda: run_greedy(models, gpus), repeat)
        plans, solve_s = timed(lambda: solve(models, gpus), repeat)
        plan = plans[-1]
        rows.append(AdrsCase(
            case=k,
            n_gpus=len(gpus),
            n_models=len(models),
            optimum=optima[k] if optima is not None and k < len(optima) else None,
            lower_bound=plan.lower_bound,
            greedy_max_kvpr=greedy_runs[-1][0],
            greedy_unplaced=greedy_runs[-1][1],
            greedy_ms=greedy_s * 1e3,
            kvsched_max_kvpr=plan.max_kvpr,
            kvsched_unplaced=len(plan.unplaced),
            kvsched_ms=solve_s * 1e3,
            retunes=plan.retunes,
            proven_optimal=plan.stats.proven_optimal,
            deterministic=len({p.max_kvpr for p in plans}) == 1,
        ))
    refs = adrs_references(rows)
    known = optima is not None
    return AdrsReport(
        reference="optimum" if known else "lower bound",
        optima_found=known,
        repeat=repeat,
        cases=rows,
        greedy=_summarise("greedy", [r.greedy_max_kvpr for r in rows], refs, [r.greedy_ms for r in rows]),
        kvsched=_summarise("kvsched", [r.kvsched_max_kvpr for r in rows], refs, [r.kvsched_ms for r in rows]),
        below_optimum=sum(r.optimum is not None and r.kvsched_max_kvpr < r.optimum * (1 - 2 * OPTIMUM_TOLERANCE_RATIO)
                          for r in rows),
    )


# --------------------------------------------------------------------------------------------------- scale


def run_scale(sizes: Sequence[int], repeat: int = 1) -> list[ScaleRow]:
    """scale_case(n) for each n: greedy and kvsched against the fluid bound and the plan's lower bound.

    The timed solves run untraced; one more solve runs under tracemalloc for the Python allocation peak.
    """
    rows: list[ScaleRow] = []
    for n in sizes:
        models, gpus = scale_case(n)
        inst = build_instance(models, gpus)
        fluid = fluid_bound(inst.item_load, inst.item_size, inst.gpu_memory)
        gc.collect()
        greedy_runs, greedy_s = timed(lambda: run_greedy(models, gpus), repeat)
        gc.collect()
        plans, solve_s = timed(lambda: solve(models, gpus), repeat)
        rss = maxrss_mib()
        plan = plans[-1]
        gc.collect()
        peak = _traced_peak_bytes(lambda: solve(models, gpus))
        g_kvpr, g_unplaced = greedy_runs[-1]
        rows.append(ScaleRow(
            n_gpus=n,
            n_models=len(models),
            fluid_bound=fluid,
            lower_bound=plan.lower_bound,
            greedy_max_kvpr=g_kvpr,
            greedy_unplaced=g_unplaced,
            greedy_gap_fluid_pct=gap_pct(g_kvpr, fluid),
            greedy_gap_lb_pct=gap_pct(g_kvpr, plan.lower_bound),
            greedy_s=greedy_s,
            kvsched_max_kvpr=plan.max_kvpr,
            kvsched_unplaced=len(plan.unplaced),
            kvsched_gap_fluid_pct=gap_pct(plan.max_kvpr, fluid),
            kvsched_gap_lb_pct=gap_pct(plan.max_kvpr, plan.lower_bound),
            kvsched_s=solve_s,
            retunes=plan.retunes,
            tracemalloc_peak_mib=peak / MIB,
            maxrss_mib=rss,
        ))
    return rows


def _traced_peak_bytes(fn: Callable[[], object]) -> int:
    """Peak bytes of Python-tracked allocations while fn runs, above what was allocated before it."""
    already = tracemalloc.is_tracing()
    if not already:
        tracemalloc.start()
    before, _ = tracemalloc.get_traced_memory()
    tracemalloc.reset_peak()
    try:
        fn()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        if not already:
            tracemalloc.stop()
    return max(0, peak - before)


# ------------------------------------------------------------------------------------------------- targets


def judge_targets(adrs: AdrsReport, scale: Sequence[ScaleRow]) -> list[Target]:
    """The issue's targets, each PASS or MISS on the figures of this run ("not run" when they are absent)."""
    status = verdict
    k = adrs.kvsched
    targets = [
        Target(f"ADRS: all {k.cases} cases at the proven optimum",
               f"{k.at_reference}/{k.cases}" if adrs.optima_found else "no optima file",
               status(k.at_reference == k.cases) if adrs.optima_found else "not run"),
        Target("ADRS: mean solve <= 20 ms", f"{k.mean_ms:.1f} ms", status(k.mean_ms <= 20.0)),
    ]
    by_size = {r.n_gpus: r for r in scale}
    for n, limit_s in ((128, 1.0), (1024, 10.0)):
        row = by_size.get(n)
        if row is None:
            targets.append(Target(f"scale {n}: <= 1.0% above fluid in <= {limit_s:g} s", "-", "not run"))
            continue
        ok = row.kvsched_gap_fluid_pct <= 1.0 and row.kvsched_s <= limit_s and row.kvsched_unplaced == 0
        targets.append(Target(f"scale {n}: <= 1.0% above fluid in <= {limit_s:g} s",
                              f"{row.kvsched_gap_fluid_pct:.3f}% in {row.kvsched_s:.2f} s", status(ok)))
    row = by_size.get(8192)
    if row is None:
        targets.append(Target("scale 8192: finishes in <= 60 s", "-", "not run"))
        targets.append(Target("scale 8192: peak memory <= 1 GiB (ru_maxrss)", "-", "not run"))
    else:
        targets.append(Target("scale 8192: finishes in <= 60 s",
                              f"{row.kvsched_s:.1f} s, {row.kvsched_unplaced} unplaced",
                              status(row.kvsched_s <= 60.0 and row.kvsched_unplaced == 0)))
        targets.append(Target("scale 8192: peak memory <= 1 GiB (ru_maxrss)",
                              f"rss {row.maxrss_mib:.0f} MiB, tracemalloc {row.tracemalloc_peak_mib:.0f} MiB",
                              status(row.maxrss_mib <= 1024.0)))
    return targets


# ------------------------------------------------------------------------------------------------ ablation


Suite = tuple[str, list[Case], list[float], str]


def _ablation_suites(adrs_count: int, scale_sizes: Sequence[int]) -> list[Suite]:
    """(name, instances, reference per instance, reference name): ADRS against the proven optima (or the
    lower bound when the optima file is missing), each scale size <= ABLATION_MAX_GPUS against its fluid bound."""
    optima = adrs_optima()
    cases = adrs_cases(adrs_count)
    if optima is not None:
        suites: list[Suite] = [(f"ADRS ({adrs_count})", cases, optima[:adrs_count], "optimum")]
    else:
        bounds = []
        for models, gpus in cases:
            inst = build_instance(models, gpus)
            bounds.append(lower_bound(inst.item_load, inst.item_size, inst.gpu_memory))
        suites = [(f"ADRS ({adrs_count})", cases, bounds, "lower bound")]
    for n in scale_sizes:
        if n <= ABLATION_MAX_GPUS:
            models, gpus = scale_case(n)
            inst = build_instance(models, gpus)
            suites.append((f"scale-{n}", [(models, gpus)],
                           [fluid_bound(inst.item_load, inst.item_size, inst.gpu_memory)], "fluid bound"))
    return suites


def run_ablation(adrs_count: int, scale_sizes: Sequence[int], repeat: int = 3) -> AblationReport:
    """Retune on vs off: full solves, single passes at T = lower bound, and solves with a zero time budget.

    ADRS solves repeat `repeat` times (median); scale solves run once.
    """
    full: list[RetuneRow] = []
    fast: list[FastPassRow] = []
    budget: list[BudgetRow] = []
    for suite in _ablation_suites(adrs_count, scale_sizes):
        name, cases = suite[0], suite[1]
        reps = repeat if name.startswith("ADRS") else 1
        for on in (True, False):
            full.append(_retune_row(suite, PackOptions(retune=on), reps))
        for on in (True, False):
            budget.append(_budget_row(suite, PackOptions(retune=on, time_budget_s=0.0), reps))
        fast.extend(_fast_pass_rows(name, cases))
    return AblationReport(full=full, fast_pass=fast, budget_zero=budget)


def _retune_row(suite: Suite, options: PackOptions, repeat: int) -> RetuneRow:
    name, cases, refs, ref_name = suite
    plans: list[Plan] = []
    times_ms: list[float] = []
    gaps: list[float] = []
    for (models, gpus), ref in zip(cases, refs):
        runs, seconds = timed(lambda: solve(models, gpus, options=options), repeat)
        plan = runs[-1]
        plans.append(plan)
        times_ms.append(seconds * 1e3)
        gaps.append(gap_pct(plan.max_kvpr, ref))
    return RetuneRow(
        suite=name,
        retune=options.retune,
        instances=len(plans),
        retunes=sum(p.stats.retunes for p in plans),
        checkpoints=sum(p.stats.checkpoints for p in plans),
        mean_gap_pct=statistics.fmean(gaps),
        reference=ref_name,
        mean_bisection_iterations=statistics.fmean(p.stats.bisection_iterations for p in plans),
        mean_passes=statistics.fmean(p.stats.passes for p in plans),
        median_ms=statistics.median(times_ms),
        mean_ms=statistics.fmean(times_ms),
    )


def _budget_row(suite: Suite, options: PackOptions, repeat: int) -> BudgetRow:
    name, cases, refs, ref_name = suite
    gaps: list[float] = []
    times_ms: list[float] = []
    retunes = 0
    for (models, gpus), ref in zip(cases, refs):
        runs, seconds = timed(lambda: solve(models, gpus, options=options), repeat)
        plan = runs[-1]
        gaps.append(gap_pct(plan.max_kvpr, ref))
        times_ms.append(seconds * 1e3)
        retunes += plan.retunes
    return BudgetRow(suite=name, retune=options.retune, instances=len(gaps), reference=ref_name,
                     mean_gap_pct=statistics.fmean(gaps), worst_gap_pct=max(gaps), retunes=retunes,
                     median_ms=statistics.median(times_ms), mean_ms=statistics.fmean(times_ms))


def _fast_pass_rows(suite: str, cases: Sequence[Case]) -> list[FastPassRow]:
    """For each (order, policy) the search would try first on these instances, one pass each at T = bound."""
    insts = [build_instance(models, gpus) for models, gpus in cases]
    targets = [lower_bound(i.item_load, i.item_size, i.gpu_memory) for i in insts]
    rows: list[FastPassRow] = []
    for order, policy in candidates(insts[0].n_gpus):
        on_gaps: list[float] = []
        on_retunes = off_complete = 0
        on_ms: list[float] = []
        off_ms: list[float] = []
        for inst, target in zip(insts, targets):
            items = list(range(inst.n_items))
            start = time.perf_counter()
            on = try_pack(inst, items, target, order=order, policy=policy, retune=True)
            on_ms.append((time.perf_counter() - start) * 1e3)
            on_retunes += on.retunes
            if on.complete:
                on_gaps.append(gap_pct(max_kvpr(inst, on.assign), target))
            start = time.perf_counter()
            off = try_pack(inst, items, target, order=order, policy=policy, retune=False)
            off_ms.append((time.perf_counter() - start) * 1e3)
            off_complete += off.complete
        rows.append(FastPassRow(
            suite=suite, order=order, policy=policy, instances=len(insts),
            on_complete=len(on_gaps), on_retunes=on_retunes,
            on_mean_gap_pct=statistics.fmean(on_gaps) if on_gaps else None,
            on_worst_gap_pct=max(on_gaps) if on_gaps else None,
            on_mean_ms=statistics.fmean(on_ms),
            off_complete=off_complete, off_mean_ms=statistics.fmean(off_ms),
        ))
    return rows


# -------------------------------------------------------------------------------------------------- report


def format_report(report: Report) -> str:
    """The whole report as aligned plain text."""
    m = report.machine
    out = [
        "kvsched benchmark",
        f"  date {m.date}  |  {m.platform}  |  python {m.python}  |  numpy {m.numpy}  |  {m.cpu_count} CPUs",
        f"  commit {m.git_commit or '?'}"
        + ("  (kvsched/ has uncommitted changes)" if m.packer_dirty else ""),
        "",
    ]
    out += _format_adrs(report.adrs)
    out += _format_scale(report.scale)
    out += ["", "TARGETS"]
    out += table(["target", "measured", "status"], [[t.name, t.measured, t.status] for t in report.targets])
    if report.ablation is not None:
        out += _format_ablation(report.ablation)
    return "\n".join(out) + "\n"


def _format_adrs(adrs: AdrsReport) -> list[str]:
    n = adrs.kvsched.cases
    out = [f"ADRS-50: {n} cases, median of {adrs.repeat} run(s) per case, gap to the {adrs.reference}"]
    if not adrs.optima_found:
        out.append("  NOTE: adrs50_optima.json not found; gaps and 'at ref' are against kvsched's lower bound only")
    rows = [[s.method, f"{s.mean_max_kvpr:.6f}", f"{s.at_reference}/{s.cases}", figure(s.mean_gap_pct),
             figure(s.worst_gap_pct), figure(s.median_ms, ".2f"), figure(s.mean_ms, ".2f")]
            for s in (adrs.greedy, adrs.kvsched)]
    out += table(["method", "mean max KVPR", "at ref", "mean gap %", "worst gap %", "median ms", "mean ms"], rows)
    missed = [c.case for c, ref in zip(adrs.cases, adrs_references(adrs.cases))
              if c.kvsched_max_kvpr > ref * (1 + OPTIMUM_TOLERANCE_RATIO)]
    out.append(f"  kvsched above the {adrs.reference} on cases: {missed or 'none'}")
    proven = sum(c.proven_optimal for c in adrs.cases)
    out.append(f"  kvsched proved optimality itself on {proven}/{n}; retunes fired in "
               f"{sum(c.retunes > 0 for c in adrs.cases)}/{n} cases")
    if adrs.below_optimum:
        out.append(f"  WARNING: kvsched below the proven optimum on {adrs.below_optimum} case(s)")
    unstable = [c.case for c in adrs.cases if not c.deterministic]
    if unstable:
        out.append(f"  WARNING: max KVPR differed between repeats on cases {unstable}")
    return out


def _format_scale(scale: Sequence[ScaleRow]) -> list[str]:
    out = ["", "SCALE: homogeneous 80 GiB GPUs, 3 models per GPU; gaps in % above the fluid bound and above "
               "kvsched's lower bound (LB)"]
    rows = []
    for r in scale:
        rows.append([str(r.n_gpus), str(r.n_models), f"{r.fluid_bound:.5f}",
                     figure(r.greedy_gap_fluid_pct), figure(r.greedy_gap_lb_pct), figure(r.greedy_s, ".3f"),
                     figure(r.kvsched_gap_fluid_pct), figure(r.kvsched_gap_lb_pct), figure(r.kvsched_s, ".3f"),
                     str(r.retunes), str(r.greedy_unplaced + r.kvsched_unplaced),
                     f"{r.tracemalloc_peak_mib:.1f}", f"{r.maxrss_mib:.0f}"])
    out += table(["GPUs", "models", "fluid", "greedy %fl", "greedy %LB", "greedy s", "kvsched %fl",
                  "kvsched %LB", "kvsched s", "retunes", "unplaced", "tracemalloc MiB", "maxrss MiB"], rows)
    out.append("  tracemalloc MiB: peak Python allocations (numpy included) of one traced kvsched solve.")
    out.append("  maxrss MiB: ru_maxrss of the whole process so far (interpreter, earlier sizes included).")
    return out


def _format_ablation(ab: AblationReport) -> list[str]:
    out = ["", "RETUNE ABLATION: full solve, retune on vs off (gap to the reference; counts summed over instances)"]
    out += table(
        ["suite", "retune", "fired / checkpoints", "mean gap %", "reference", "bisect it", "passes",
         "median ms", "mean ms"],
        [[r.suite, "on" if r.retune else "off", f"{r.retunes} / {r.checkpoints}", figure(r.mean_gap_pct),
          r.reference, f"{r.mean_bisection_iterations:.1f}", f"{r.mean_passes:.1f}", figure(r.median_ms, ".1f"),
          figure(r.mean_ms, ".1f")] for r in ab.full])
    out += ["", "SINGLE PASS at T = lower bound (try_pack once per instance; the search's own candidates)"]
    out += table(
        ["suite", "order/policy", "on: complete", "on: retunes", "on: mean gap %", "on: worst gap %", "on ms",
         "off: complete", "off ms"],
        [[r.suite, f"{r.order}/{r.policy}", f"{r.on_complete}/{r.instances}", str(r.on_retunes),
          figure(r.on_mean_gap_pct), figure(r.on_worst_gap_pct), figure(r.on_mean_ms, ".2f"),
          f"{r.off_complete}/{r.instances}", figure(r.off_mean_ms, ".2f")] for r in ab.fast_pass])
    out.append("  on: gap of the completed passes' max KVPR to the lower bound; off: a pass that completes at the "
               "bound is optimal.")
    out += ["", "TIME BUDGET 0 (solve's first feasible plan, no improving phases)"]
    out += table(
        ["suite", "retune", "mean gap %", "worst gap %", "reference", "retunes", "median ms", "mean ms"],
        [[r.suite, "on" if r.retune else "off", figure(r.mean_gap_pct), figure(r.worst_gap_pct), r.reference,
          str(r.retunes), figure(r.median_ms, ".1f"), figure(r.mean_ms, ".1f")] for r in ab.budget_zero])
    return out


# ----------------------------------------------------------------------------------------------------- CLI


def _sizes(text: str) -> tuple[int, ...]:
    try:
        sizes = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated GPU counts such as 16,128, got {text!r}") from None
    if not sizes or any(n < 1 for n in sizes):
        raise argparse.ArgumentTypeError(f"expected positive GPU counts, got {text!r}")
    return sizes


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.run",
        description="Benchmark kvsched against the Prism greedy: ADRS-50 against proven optima, scale instances "
                    "against the fluid bound, and the mid-pack retune ablation. Prints a report, writes JSON. "
                    "Reports figures only: the exit code is 0 whatever they are.",
        epilog="A full run solves each scale size twice (timed, then under tracemalloc) and 8192 GPUs can take "
               "minutes: run it on a quiet machine. Use --quick while developing.",
    )
    parser.add_argument("--quick", action="store_true",
                        help=f"smoke run: first {QUICK_ADRS_CASES} ADRS cases, scale "
                             f"{','.join(map(str, QUICK_SCALE_SIZES))}, repeat 1 (explicit flags still win)")
    parser.add_argument("--repeat", type=int, metavar="R",
                        help="solve each ADRS case R times and keep the median time (default 3; 1 with --quick); "
                             "scale sizes run once")
    parser.add_argument("--scale-sizes", type=_sizes, metavar="N,N,...",
                        help="GPU counts of the scale instances (default 16,128,1024,8192)")
    parser.add_argument("--adrs-cases", type=int, metavar="K",
                        help="run only the first K ADRS cases (default 50; 10 with --quick)")
    parser.add_argument("--no-ablation", action="store_true", help="skip the retune on/off ablation")
    parser.add_argument("--churn", action="store_true",
                        help="also run the churn suite (bench/churn.py; needs the `bench` extra, OR-Tools)")
    parser.add_argument("--headroom", action="store_true",
                        help="instead of the rest: the KVPR cost of the memory headroom (kvsched plan's default "
                             "reserve, engine overhead and CUDA context), ADRS and scale solved without and with "
                             f"it (scale {','.join(map(str, HEADROOM_SCALE_SIZES))} unless --scale-sizes; JSON to "
                             "bench/results/headroom.json unless --json)")
    parser.add_argument("--load", action="store_true",
                        help="instead of the rest: `kvsched serve` against the e2e control plane (bench/load.py, "
                             "its defaults; --quick: 8 nodes, 100 models, 500 pods; run it under the e2e flock); "
                             "JSON to bench/results/load.json unless --json")
    parser.add_argument("--json", type=Path, default=None, metavar="PATH",
                        help="where to write every figure as JSON (default bench/results/latest.json)")
    args = parser.parse_args(argv)
    if args.json is None:
        args.json = HEADROOM_JSON if args.headroom else LOAD_JSON if args.load else DEFAULT_JSON
    if args.headroom and args.scale_sizes is None:
        args.scale_sizes = QUICK_SCALE_SIZES if args.quick else HEADROOM_SCALE_SIZES
    if args.repeat is None:
        args.repeat = 1 if args.quick else 3
    if args.scale_sizes is None:
        args.scale_sizes = QUICK_SCALE_SIZES if args.quick else DEFAULT_SCALE_SIZES
    if args.adrs_cases is None:
        args.adrs_cases = QUICK_ADRS_CASES if args.quick else 50
    if args.repeat < 1 or not 1 <= args.adrs_cases <= 50:
        parser.error("--repeat must be >= 1 and --adrs-cases in 1..50")
    return args


def build_report(adrs_count: int, scale_sizes: Sequence[int], repeat: int, ablation: bool) -> Report:
    """Run every part and judge the targets."""
    adrs = run_adrs(adrs_count, repeat)
    scale = run_scale(scale_sizes)
    return Report(
        machine=machine_info(),
        repeat=repeat,
        scale_sizes=list(scale_sizes),
        adrs=adrs,
        scale=scale,
        targets=judge_targets(adrs, scale),
        ablation=run_ablation(adrs_count, scale_sizes, repeat) if ablation else None,
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.load:
        from bench import load

        quick = ["--nodes", "8", "--models", "100", "--pods", "500"] if args.quick else []
        return load.main([*quick, "--json", str(args.json)])
    if args.headroom:
        from bench.headroom import format_headroom, run_headroom

        headroom = run_headroom(args.adrs_cases, args.scale_sizes, args.repeat)
        sys.stdout.write("\n".join([f"kvsched benchmark: memory headroom  |  {machine_info().date}", "",
                                     *format_headroom(headroom)]) + "\n")
        write_json(headroom, args.json)
        sys.stdout.write(f"\nJSON: {args.json}\n")
        return 0
    report = build_report(args.adrs_cases, args.scale_sizes, args.repeat, not args.no_ablation)
    sys.stdout.write(format_report(report))
    write_json(report, args.json)
    sys.stdout.write(f"\nJSON: {args.json}\n")
    if args.churn:
        _run_churn(args.quick, args.json.with_name("churn.json"))
    return 0


def _run_churn(quick: bool, json_path: Path) -> None:
    """The churn suite after the rest, with its own report and JSON (it needs OR-Tools, a bench-only extra)."""
    try:
        from bench import churn
    except ImportError as exc:
        sys.stdout.write(f"\nCHURN skipped: {exc} (install the bench extra: pip install -e '.[bench]')\n")
        return
    sys.stdout.write("\n")
    churn.main([*(["--quick"] if quick else []), "--json", str(json_path)])


if __name__ == "__main__":
    sys.exit(main())
