"""`kvsched serve` solves in a child process: the same plan as in-process, and a child that dies is replaced."""
from __future__ import annotations

import os
import signal

import pytest
from concurrent.futures.process import BrokenProcessPool

from kvsched.packer import Gpu, Model, PackOptions, Slot, GpuId, solve
from kvsched.runtime.solver import ProcessSolver

MODELS = [Model(f"m{i}", size_gib=2 + i % 5, rate_rps=1 + i % 3, slo_s=1, replicas=1 + i % 2) for i in range(12)]
GPUS = [Gpu(f"n{i // 4}", i % 4, memory_gib=40 if i % 2 else 80) for i in range(8)]
OPTIONS = PackOptions(time_budget_s=0.0)  # the first plan found: deterministic, whatever the machine's load


def summary(plan: object) -> tuple[object, ...]:
    return (plan.max_kvpr, plan.lower_bound,  # type: ignore[attr-defined]
            sorted((p.model, p.replica, p.gpu) for p in plan.placements))  # type: ignore[attr-defined]


@pytest.fixture()
def solver() -> ProcessSolver:
    s = ProcessSolver()
    yield s
    s.close()


def test_the_child_process_makes_the_plan_solve_makes(solver: ProcessSolver) -> None:
    current = [Slot("m0", 0, GpuId("n0", 1))]
    plan = solver(MODELS, GPUS, current=current, planned=(), options=OPTIONS)
    assert solver.pid is not None and solver.pid != os.getpid()
    assert summary(plan) == summary(solve(MODELS, GPUS, current=current, options=OPTIONS))


def test_a_dead_child_fails_one_solve_and_the_next_gets_a_new_one(solver: ProcessSolver) -> None:
    solver(MODELS, GPUS, options=OPTIONS)
    first = solver.pid
    assert first is not None
    os.kill(first, signal.SIGKILL)
    with pytest.raises(BrokenProcessPool):
        solver(MODELS, GPUS, options=OPTIONS)
    plan = solver(MODELS, GPUS, options=OPTIONS)
    assert solver.pid not in (None, first) and len(plan.placements) == sum(m.replicas for m in MODELS)
