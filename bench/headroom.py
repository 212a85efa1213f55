"""What the memory headroom of issue 15 costs in KVPR: ADRS-50 and scale instances solved twice in one run,
without headroom and with the defaults of `kvsched plan` (kvsched.settings: a reserve per GPU, an engine overhead
and a CUDA context per replica).

Figures, not tests. Per suite: the max KVPR over its lower bound without and with headroom (each plan against
its own instance's bound), and the cost of the headroom, max KVPR with / without - 1; medians over the
instances, solve times medians of the repeats. Run: `python -m bench.run --headroom [--quick]`.
Called by: bench/run.py, tests/bench.
"""

from __future__ import annotations

import dataclasses
import statistics
from dataclasses import dataclass
from typing import Sequence

from bench.adrs import adrs_cases
from bench.results import figure, gap_pct, table
from bench.scale import scale_case
from kvsched.packer import Gpu, Model, Plan, solve
from kvsched.settings import DEFAULT_ENGINE_CONTEXT_GIB, DEFAULT_ENGINE_OVERHEAD_GIB, DEFAULT_GPU_MEMORY_RESERVE_GIB


@dataclass(frozen=True)
class Headroom:
    """GiB per GPU (reserve) and per replica (overhead inside its fraction, context outside it)."""

    reserve_gib: float = DEFAULT_GPU_MEMORY_RESERVE_GIB
    overhead_gib: float = DEFAULT_ENGINE_OVERHEAD_GIB
    context_gib: float = DEFAULT_ENGINE_CONTEXT_GIB


def with_headroom(models: Sequence[Model], gpus: Sequence[Gpu],
                  headroom: Headroom) -> tuple[list[Model], list[Gpu]]:
    """The same instance with the headroom on every model and GPU."""
    return ([dataclasses.replace(m, overhead_gib=headroom.overhead_gib, context_gib=headroom.context_gib)
             for m in models],
            [dataclasses.replace(g, reserve_gib=headroom.reserve_gib) for g in gpus])


@dataclass(frozen=True)
class Side:
    """One instance solved one way: its max KVPR, lower bound, unplaced replicas and median solve time (ms)."""

    max_kvpr: float
    lower_bound: float
    unplaced: int
    ms: float
    proven_optimal: bool

    @property
    def ratio(self) -> float:
        """max KVPR / lower bound (1 when both are 0)."""
        return 1.0 + gap_pct(self.max_kvpr, self.lower_bound) / 100.0


@dataclass(frozen=True)
class HeadroomCase:
    suite: str
    case: int
    without: Side
    with_: Side

    @property
    def cost_pct(self) -> float:
        """How much higher the max KVPR is with the headroom, in %."""
        return gap_pct(self.with_.max_kvpr, self.without.max_kvpr)


@dataclass(frozen=True)
class HeadroomRow:
    """One suite: medians over its instances (ratios to each plan's own lower bound, costs in %, times in ms)."""

    suite: str
    instances: int
    ratio_without: float
    ratio_with: float
    cost_median_pct: float
    cost_max_pct: float
    unplaced_without: int
    unplaced_with: int
    proven_without: int
    proven_with: int
    ms_without: float
    ms_with: float


@dataclass(frozen=True)
class HeadroomReport:
    headroom: Headroom
    repeat: int
    rows: list[HeadroomRow]
    cases: list[HeadroomCase]


def _side(models: Sequence[Model], gpus: Sequence[Gpu], repeat: int) -> Side:
    import time

    plans: list[Plan] = []
    seconds: list[float] = []
    for _ in range(max(1, repeat)):
        start = time.perf_counter()
        plans.append(solve(models, gpus))
        seconds.append(time.perf_counter() - start)
    plan = plans[-1]
    return Side(plan.max_kvpr, plan.lower_bound, len(plan.unplaced), statistics.median(seconds) * 1e3,
                plan.stats.proven_optimal)


def run_headroom(adrs_count: int = 50, scale_sizes: Sequence[int] = (16, 128, 1024), repeat: int = 3,
                 headroom: Headroom = Headroom()) -> HeadroomReport:
    """Each ADRS case (solved `repeat` times for the time) and each scale size (once), without and with."""
    suites: list[tuple[str, list[tuple[list[Model], list[Gpu]]], int]] = [
        (f"ADRS ({adrs_count})", adrs_cases(adrs_count), repeat)]
    suites += [(f"scale-{n}", [scale_case(n)], 1) for n in scale_sizes]
    cases: list[HeadroomCase] = []
    rows: list[HeadroomRow] = []
    for name, instances, reps in suites:
        mine = []
        for k, (models, gpus) in enumerate(instances):
            without = _side(models, gpus, reps)
            with_ = _side(*with_headroom(models, gpus, headroom), reps)
            mine.append(HeadroomCase(name, k, without, with_))
        cases += mine
        costs = [c.cost_pct for c in mine]
        rows.append(HeadroomRow(
            suite=name,
            instances=len(mine),
            ratio_without=statistics.median(c.without.ratio for c in mine),
            ratio_with=statistics.median(c.with_.ratio for c in mine),
            cost_median_pct=statistics.median(costs),
            cost_max_pct=max(costs),
            unplaced_without=sum(c.without.unplaced for c in mine),
            unplaced_with=sum(c.with_.unplaced for c in mine),
            proven_without=sum(c.without.proven_optimal for c in mine),
            proven_with=sum(c.with_.proven_optimal for c in mine),
            ms_without=statistics.median(c.without.ms for c in mine),
            ms_with=statistics.median(c.with_.ms for c in mine),
        ))
    return HeadroomReport(headroom=headroom, repeat=repeat, rows=rows, cases=cases)


def format_headroom(report: HeadroomReport) -> list[str]:
    h = report.headroom
    out = [f"HEADROOM: each instance solved without and with {h.reserve_gib:g} GiB reserved per GPU, "
           f"{h.overhead_gib:g} GiB engine overhead and {h.context_gib:g} GiB CUDA context per replica",
           "  max KVPR / lower bound: medians over the instances, each plan against its own instance's bound; "
           "cost: max KVPR with / without - 1"]
    out += table(
        ["suite", "instances", "ratio without", "ratio with", "cost median %", "cost max %", "unplaced w/o / w",
         "proven w/o / w", "median ms w/o", "median ms w"],
        [[r.suite, str(r.instances), f"{r.ratio_without:.4f}", f"{r.ratio_with:.4f}", figure(r.cost_median_pct, ".2f"),
          figure(r.cost_max_pct, ".2f"), f"{r.unplaced_without} / {r.unplaced_with}",
          f"{r.proven_without} / {r.proven_with}", figure(r.ms_without, ".1f"), figure(r.ms_with, ".1f")]
         for r in report.rows])
    return out
