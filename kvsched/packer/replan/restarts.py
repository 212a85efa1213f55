"""Restarts a candidate re-plan costs: its moves plus the share restarts of the replicas that stay
(kvsched.packer.shares has the rule). The re-plan minimises these among the plans within the stability threshold
of the best plan found (`strategy`), ties to fewer moves.
Called by: `strategy`, `kvsched.packer.planner` (the resize steps of the final plan).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from kvsched.packer.evaluate import max_kvpr
from kvsched.packer.instance import FloatArray, Instance, IntArray
from kvsched.packer.replan.running import count_moves, rematch, share_array
from kvsched.packer.shares import SHARE_SLACK, gpu_keeps, kept_mask, pressure_limit, share_bound, sizes_of
from kvsched.packer.state import GpuState


@dataclass(frozen=True)
class Shares:
    """The running replicas' shares, (model, GPU index) -> share (`running_shares`; empty: none known, then
    restarts are moves), and the stability threshold that sets the pressure limit of a kept share."""

    by_slot: dict[tuple[str, int], float]
    threshold_ratio: float

    @property
    def known(self) -> bool:
        return bool(self.by_slot)


def share_restarts(inst: Instance, running: dict[int, list[int]], assign: IntArray, shares: Shares,
                   run: IntArray | None = None) -> np.ndarray:
    """Per item, True when it stays on its GPU in `assign` but restarts for its share (`kept_mask`'s complement
    over the staying replicas whose share is known); `run`: `rematch(inst, running, assign)` when the caller has
    it. O(items log items)."""
    run = rematch(inst, running, assign) if run is None else run
    share = share_array(inst, shares.by_slot, run)
    known: np.ndarray = (run >= 0) & (assign == run) & ~np.isnan(share)
    if not known.any():
        return known
    limit = pressure_limit(max_kvpr(inst, assign), shares.threshold_ratio)
    restarting: np.ndarray = known & ~kept_mask(inst, run, share, assign, limit)
    return restarting


def cost_of(inst: Instance, running: dict[int, list[int]], assign: IntArray, shares: Shares) -> tuple[int, int]:
    """(restarts, moves) of `assign`: restarts = moves + share restarts. O(items log items)."""
    run = rematch(inst, running, assign)
    moves = count_moves(run, assign)
    if not shares.known:
        return moves, moves
    return moves + int(share_restarts(inst, running, assign, shares, run).sum()), moves


def polish_restarts(inst: Instance, running: dict[int, list[int]], assign: IntArray, shares: Shares, *,
                    allow_moves: bool = True, max_rounds: int = 16) -> IntArray:
    """Fewer restarts without raising the peak: from each GPU where staying replicas restart for their share, move
    one replica off to a GPU whose kept shares leave room for it (`gpu_slack`: it adds no restart there) while
    that saves a restart on its GPU. Movers: replicas that restart anyway (new, moved, restarting for their share:
    a move costs them nothing more), and a replica that keeps its share when moving it saves two or more restarts;
    without `allow_moves` (a `max_migrations` cap) only new and moved replicas, so the moves never grow. Each
    round makes the best such move of every GPU whose moves touch GPUs no other move of the round touched. Never
    raises the max KVPR (every GPU stays at or below it) nor the restarts (`cost_of` checked at the end).
    O(rounds * (items + movers * G) + rounds * items * k log k), k replicas per GPU.
    """
    if not shares.known or inst.n_gpus < 2:
        return assign
    start = cost_of(inst, running, assign, shares)
    cap = max_kvpr(inst, assign)
    limit = pressure_limit(cap, shares.threshold_ratio)
    out = assign.copy()
    for _ in range(max_rounds):
        steps = _restart_moves(inst, running, out, shares, cap, limit, allow_moves)
        if not steps:
            break
        for i, h in steps:
            out[i] = h
    if cost_of(inst, running, out, shares) < start and max_kvpr(inst, out) <= cap * (1 + 1e-12):
        return out
    return assign


def _restart_moves(inst: Instance, running: dict[int, list[int]], assign: IntArray, shares: Shares, cap: float,
                   limit: float, allow_moves: bool) -> list[tuple[int, int]]:
    """One round of `polish_restarts`: per GPU with share restarts, the move off it saving the most restarts
    (ties to the lower KVPR after), kept when neither of its GPUs is touched by a better move of the round."""
    run = rematch(inst, running, assign)
    share = share_array(inst, shares.by_slot, run)
    known = (run >= 0) & (assign == run) & ~np.isnan(share)
    kept = kept_mask(inst, run, share, assign, limit)
    restarting = known & ~kept
    bad = np.unique(assign[restarting]).tolist()
    if not bad:
        return []
    members: dict[int, list[int]] = {}
    for i in np.nonzero(assign >= 0)[0].tolist():
        members.setdefault(int(assign[i]), []).append(i)
    slack = np.array([gpu_slack(inst, g, members.get(g, []), kept, share, limit) for g in range(inst.n_gpus)])
    state = GpuState.totals_only(inst, assign)
    memory = inst.total_memory()
    groups = {int(grp): gpus for grp, gpus in running.items()}
    outside = inst.weights() + inst.overheads() + inst.contexts()
    sizes = sizes_of(inst)
    found: list[tuple[int, float, int, int, int]] = []  # (saved, value, i, g, h)
    for g in bad:
        here = members[g]
        before = int(restarting[here].sum())
        best: tuple[int, float, int, int, int] | None = None
        for i in here:
            pays = 0 if (run[i] != g or restarting[i]) else 1  # a kept replica that moves: one more restart
            if run[i] == g and not allow_moves:  # under a cap on moves only replicas that move anyway may
                continue
            keeps = gpu_keeps(inst, g, [j for j in here if j != i], known, share, limit, sizes)
            saved = before - int(restarting[i]) - (len(keeps) - sum(keeps)) - pays
            if saved <= 0 or (best is not None and saved < best[0]):
                continue
            load = float(inst.item_load[i])
            need = (float(outside[i]) + (load / limit if load > 0 else 0.0)) / memory
            values = state.kvprs_with(i)  # inf where its model is placed
            ok = (need <= slack + SHARE_SLACK) & (values <= cap * (1 + 1e-12))
            ok[g] = False
            ok[groups.get(int(inst.item_group[i]), [])] = False  # where its model runs: not a free move
            if not ok.any():
                continue
            h = int(np.argmin(np.where(ok, values, np.inf)))
            cand = (saved, float(values[h]), i, g, h)
            if best is None or (cand[0], -cand[1]) > (best[0], -best[1]):
                best = cand
        if best is not None:
            found.append(best)
    found.sort(key=lambda c: (-c[0], c[1], c[2]))
    touched: set[int] = set()
    steps: list[tuple[int, int]] = []
    for _, _, i, g, h in found:
        if g in touched or h in touched:
            continue
        touched.update((g, h))
        steps.append((i, h))
    return steps


def gpu_slack(inst: Instance, g: int, members: list[int], kept: np.ndarray, share: FloatArray,
              limit: float) -> float:
    """What GPU `g`'s bound leaves (share units) after its kept replicas' shares and what its other replicas need
    for pressure `limit`: bound - sum_kept max(s, least) - sum_other need(L) (kvsched.packer.shares). A replica
    fits without a restart there when need(L) + its context / M is at most this. O(k)."""
    m = float(inst.total_memory()[g])
    inside = inst.weights() + inst.overheads()
    contexts = float(inst.contexts()[members].sum()) if members else 0.0
    used = 0.0
    for i in members:
        if kept[i]:
            used += max(float(share[i]), float(inside[i]) / m)
        else:
            load = float(inst.item_load[i])
            used += (float(inside[i]) + (load / limit if load > 0 else 0.0)) / m
    return share_bound(m, float(inst.reserves()[g]), contexts) - used
