"""Turn an internal assignment into the public `Plan`. Called by: `kvsched.packer.planner.solve` only."""

from __future__ import annotations

from typing import Mapping, Sequence

from kvsched.packer.domain import GpuUsage, MigrationStep, Placement, Plan, SearchStats, Unplaced, UnplacedCause
from kvsched.packer.evaluate import gpu_kvprs, gpu_totals, memory_fractions
from kvsched.packer.instance import Instance, IntArray


def build_plan(
    inst: Instance,
    assign: IntArray,
    *,
    lower_bound: float,
    solve_seconds: float,
    causes: Mapping[int, tuple[UnplacedCause, str]],
    steps: Sequence[MigrationStep] = (),
    kept_current: bool = False,
    next_move_gain: float = 0.0,
    stats: SearchStats = SearchStats(),
) -> Plan:
    """Placements in item order, GPUs in input order, unplaced items with the cause and sentence given for them.

    Invariant: every item appears exactly once, in `placements` or in `unplaced`. O(items + GPUs).
    """
    fractions = memory_fractions(inst, assign)
    kvprs = gpu_kvprs(inst, assign)
    _, weights = gpu_totals(inst, assign)
    placements: list[Placement] = []
    unplaced: list[Unplaced] = []
    models_on: list[list[str]] = [[] for _ in range(inst.n_gpus)]
    for i in range(inst.n_items):
        g = int(assign[i])
        if g < 0:
            cause, reason = causes.get(i, ("InsufficientCapacity",
                                           "no GPU has room for it next to the other models"))
            unplaced.append(Unplaced(inst.item_model[i], inst.item_replica[i], reason, cause))
            continue
        placements.append(Placement(inst.item_model[i], inst.item_replica[i], inst.gpu_id(g), float(fractions[i])))
        models_on[g].append(inst.item_model[i])
    gpus = tuple(
        GpuUsage(
            gpu=inst.gpu_id(g),
            memory_gib=float(inst.gpu_memory[g]),
            kvpr=float(kvprs[g]),
            used_memory_gib=float(weights[g]),
            models=tuple(models_on[g]),
        )
        for g in range(inst.n_gpus)
    )
    return Plan(
        max_kvpr=float(kvprs.max()) if inst.n_gpus else 0.0,
        lower_bound=float(lower_bound),
        retunes=stats.retunes,
        solve_seconds=float(solve_seconds),
        placements=tuple(placements),
        gpus=gpus,
        unplaced=tuple(unplaced),
        steps=tuple(steps),
        kept_current=kept_current,
        next_move_gain=float(next_move_gain),
        stats=stats,
    )
