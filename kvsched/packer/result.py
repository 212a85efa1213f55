"""Turn an internal assignment into the public `Plan`. Called by: `kvsched.packer.planner.solve` only."""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

from kvsched.packer.domain import GpuUsage, MigrationStep, Placement, Plan, SearchStats, Unplaced, UnplacedCause
from kvsched.packer.evaluate import gpu_kvprs, kv_memory_left, memory_shares
from kvsched.packer.instance import FloatArray, Instance, IntArray
from kvsched.packer.shares import kept_memory_shares


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
    kept: np.ndarray | None = None,
    share: FloatArray | None = None,
) -> Plan:
    """Placements in item order, GPUs in input order, unplaced items with the cause and sentence given for them.

    `kept` (per item, with `share`, the share it runs with): replicas that keep their running share; their GPUs'
    fractions honour them (kvsched.packer.shares.kept_memory_shares).
    Invariant: every item appears exactly once, in `placements` or in `unplaced`. O(items + GPUs).
    """
    fractions, kv = memory_shares(inst, assign)
    if kept is not None and share is not None:
        fractions, kv = kept_memory_shares(inst, assign, kept, share, fractions, kv)
    kvprs = gpu_kvprs(inst, assign)
    left = kv_memory_left(inst, assign)
    placed = assign >= 0
    # Weights alone (used_memory_gib keeps its meaning), and the engines' overheads and contexts beside them.
    weights = np.bincount(assign[placed], weights=inst.weights()[placed], minlength=inst.n_gpus)
    engines = np.bincount(assign[placed], weights=(inst.overheads() + inst.contexts())[placed],
                          minlength=inst.n_gpus)
    memory = inst.total_memory()
    reserve = inst.reserves()
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
        placements.append(Placement(inst.item_model[i], inst.item_replica[i], inst.gpu_id(g), float(fractions[i]),
                                    float(kv[i])))
        models_on[g].append(inst.item_model[i])
    gpus = tuple(
        GpuUsage(
            gpu=inst.gpu_id(g),
            memory_gib=float(memory[g]),
            kvpr=float(kvprs[g]),
            used_memory_gib=float(weights[g]),
            models=tuple(models_on[g]),
            reserve_gib=float(reserve[g]),
            engine_gib=float(engines[g]),
            kv_memory_gib=float(left[g]),
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
