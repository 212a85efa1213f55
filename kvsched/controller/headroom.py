"""Memory headroom on one GPU: the bound on its engines' memory shares, and the shares written for a plan.

The model (docs/packer.md, "Memory on a real GPU"): a GPU of memory M (its label) keeps a reserve R that is never
planned (the driver's memory plus the gap between the label and the total the device reports); every engine j
takes a CUDA context c_j outside its share and needs its weights m_j plus an overhead o_j inside it. An engine
starts only when the free memory is at least its share times the reported total: free = M_reported - R_driver -
sum over engines already running of (share_i x M + c_i) - c_j (its own context comes first). With M_reported >=
M - (R - R_driver), that holds for every engine in every start order exactly when, with k engines on the GPU,

    sum_j share_j <= bound = 1 - (R + sum_j c_j) / M      and      share_j x M >= m_j + o_j for each j,

and the packer's fractions meet both with equality in the first (their KV memory is all that is left). The slot
rule (kvsched.controller.slots), the share restarts (shares) and the status slots (here: `rounded_shares`) use
these two functions and nothing else; they live in kvsched.packer.shares (the re-plan counts share restarts with
them) and are re-exported here.
Called by: kvsched.controller.slots, shares, decide.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

from kvsched.api.names import SHARE_DECIMALS, SHARE_EPSILON, share_of
from kvsched.packer import GpuId, Model, Placement, Plan
from kvsched.packer.shares import least_share, share_bound

__all__ = ["Headroom", "least_share", "plan_shares", "rounded_shares", "share_bound"]

_STEP = 10.0 ** -SHARE_DECIMALS


@dataclass(frozen=True)
class Headroom:
    """The memory headroom settings, GiB >= 0: `reserve_gib` of every GPU never planned; per replica
    `overhead_gib` inside its share besides its weights (for models whose spec sets none) and `context_gib`
    outside it. The default is none (the packer's); the controller and the extender get the settings'."""

    reserve_gib: float = 0.0
    overhead_gib: float = 0.0
    context_gib: float = 0.0


def _ceil_share(x: float) -> float:
    scale = 10.0 ** SHARE_DECIMALS
    return math.ceil(x * scale - 1e-6) / scale


def rounded_shares(fractions: Sequence[float], least: Sequence[float], bound: float) -> list[float]:
    """The shares written for one GPU's replicas (SHARE_DECIMALS decimals), given their exact `fractions`, their
    `least_share`s and the GPU's `share_bound`.

    Each fraction is rounded down (`share_of`), then raised to its least share rounded up where rounding down
    went below it; if that takes the sum over `bound`, the shares with the most room above their least give
    back one step each until the sum fits. When that cannot fit (the GPU leaves less than one step, M / 1000,
    of KV memory per replica: its engines would find no room for a KV cache anyway) the shares are the
    fractions rounded down. So the sum never exceeds `bound` when the fractions' does not, and each share is at
    least its least share whenever the GPU leaves a step of KV memory per replica. O(k^2) for k replicas.
    """
    floors = [share_of(f) for f in fractions]
    lows = [_ceil_share(lo) for lo in least]
    # Raised only where the exact fraction holds the least share (a plan that does not is left as it is).
    shares = [lo if down < lo and f >= exact - 1e-9 else down
              for down, f, lo, exact in zip(floors, fractions, lows, least)]
    while sum(shares) > bound + SHARE_EPSILON:
        room = [(s - lo, i) for i, (s, lo) in enumerate(zip(shares, lows)) if s - lo >= _STEP - 1e-12]
        if not room:
            return floors
        _, i = max(room)
        shares[i] = round(shares[i] - _STEP, SHARE_DECIMALS)
    return shares


def plan_shares(plan: Plan, models: Sequence[Model]) -> dict[tuple[str, GpuId], float]:
    """The share written for every placement of `plan` (status slots, the pods' annotations), by (model, GPU):
    `rounded_shares` of each GPU's replicas, with the GPU's memory and reserve from the plan and each replica's
    weights, overhead and context from `models` (by name; a model not there counts as needing nothing).
    O(placements)."""
    by_name = {m.name: m for m in models}
    usage = {g.gpu: g for g in plan.gpus}
    on_gpu: dict[GpuId, list[Placement]] = {}
    for p in plan.placements:
        on_gpu.setdefault(p.gpu, []).append(p)
    out: dict[tuple[str, GpuId], float] = {}
    for gpu, placements in on_gpu.items():
        memory = usage[gpu].memory_gib if gpu in usage else 0.0
        reserve = usage[gpu].reserve_gib if gpu in usage else 0.0
        found = [by_name.get(p.model) for p in placements]
        contexts = sum(m.context_gib for m in found if m is not None)
        least = [least_share(m.size_gib + m.overhead_gib, memory) if m is not None else 0.0 for m in found]
        shares = rounded_shares([p.memory_fraction for p in placements], least,
                                share_bound(memory, reserve, contexts))
        for p, share in zip(placements, shares):
            out[(p.model, gpu)] = share
    return out
