"""`solve`: the packer's one entry point (work in progress: greedy only)."""

from __future__ import annotations

import time
from typing import Callable, Sequence

from kvsched.packer.domain import Gpu, Model, Plan, Slot
from kvsched.packer.greedy import greedy
from kvsched.packer.instance import build_instance
from kvsched.packer.options import PackOptions
from kvsched.packer.result import build_plan

Clock = Callable[[], float]


def solve(
    models: Sequence[Model],
    gpus: Sequence[Gpu],
    *,
    current: Sequence[Slot] = (),
    options: PackOptions = PackOptions(),
    clock: Clock = time.perf_counter,
) -> Plan:
    start = clock()
    inst = build_instance(models, gpus)
    assign = greedy(inst)
    return build_plan(inst, assign, lower_bound=0.0, solve_seconds=clock() - start, reasons={})
