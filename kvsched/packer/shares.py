"""Memory shares of running replicas: which ones a plan lets keep the share they started with, which restart.

A replica's share f of its GPU's memory M (`--gpu-memory-utilization`) is fixed when its engine starts. On a GPU
with reserve R whose engines take CUDA contexts c_j outside their shares, every engine starts in any order
exactly when

    sum_j f_j <= bound = 1 - (R + sum_j c_j) / M      and      f_j x M >= m_j + o_j (weights plus overhead)

(docs/packer.md, "Memory on a real GPU"; `share_bound`, `least_share`). A re-plan that keeps a replica on its GPU
can keep its share, or restart it in place with a new one (a *share restart*, as costly as a move: the engine
loads its weights again). For a plan and a pressure limit L (the controller's: (1 + threshold) x the plan's
max KVPR), a staying replica i with known share s_i is *kept* when, on its GPU,
- its own KV-cache pressure n_i / (s_i M - m_i - o_i) is at most L (s_i taken one rounding step up: SHARE_STEP),
  and
- the kept shares leave the GPU's *flexible* replicas (moved in, new, restarted, or of unknown share) room for
  pressure L:  sum_kept max(s_i, least_i) + sum_flexible need_j(L) <= bound,  need_j(L) = (m_j + o_j + n_j / L) / M.
Restarting a kept replica i gives back s_i and asks need_i(L): a gain of s_i - need_i(L). Per GPU the fewest
restarts that make it fit are the replicas whose own pressure exceeds L, then the largest gains first (one
constraint: sorting by gain is optimal). Restarting every staying replica always fits a plan whose max KVPR is at
most L (the pooled pressure of the GPU), so every plan has an answer.

The flexible replicas of a GPU share what the kept ones leave in proportion to load (`kept_memory_shares`), so
the shares the plan reports keep both invariants, and a replica that keeps its share is told that share.
Pure; called by `kvsched.packer.planner`, `result`, the `replan` modules (to count restarts), and
kvsched.controller.headroom (share_bound, least_share).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from kvsched.packer.instance import FloatArray, Instance, IntArray

# Sums of shares compare with this slack (shares are written with 3 decimals; float noise is far below it).
SHARE_SLACK = 1e-6
# Shares are written rounded down to this step (kvsched.api.names.SHARE_DECIMALS; tests/packer tie the two): a
# replica restarted with its planned share runs with up to one step less, so its own pressure is judged with one
# step back. Otherwise a small model, whose KV memory is a few steps, would be restarted again and again.
SHARE_STEP = 1e-3


def share_bound(memory_gib: float, reserve_gib: float, contexts_gib: float) -> float:
    """1 - (R + sum of the contexts of the GPU's engines) / M: the most the shares on a GPU of `memory_gib` may
    sum to (see the module); 0 when the memory is not > 0. O(1)."""
    if memory_gib <= 0:
        return 0.0
    return 1.0 - (reserve_gib + contexts_gib) / memory_gib


def least_share(inside_gib: float, memory_gib: float) -> float:
    """(m + o) / M: the smallest share an engine that needs `inside_gib` (weights plus overhead) inside its share
    can start with; 1.0 when the memory is not > 0. O(1)."""
    if memory_gib <= 0:
        return 1.0
    return inside_gib / memory_gib


def pressure_limit(plan_max_kvpr: float, threshold_ratio: float) -> float:
    """L = (1 + threshold) x the plan's max KVPR: the most KV-cache pressure a kept share may leave its replica
    (the controller's `starved` rule, kvsched.controller.shares)."""
    return (1.0 + threshold_ratio) * plan_max_kvpr


def _need(inside_gib: float, load: float, memory_gib: float, limit: float) -> float:
    """need(L) = (m + o + n / L) / M: the share a replica needs for pressure <= L (inf when L <= 0 and it has
    load)."""
    if load <= 0:
        return inside_gib / memory_gib
    if limit <= 0:
        return math.inf
    return (inside_gib + load / limit) / memory_gib


def restarts_on_gpu(memory_gib: float, bound: float, staying: list[tuple[float, float, float]],
                    flexible: list[tuple[float, float]], limit: float) -> list[bool]:
    """Which staying replicas of one GPU keep their share (True) under the module's rule.

    `staying`: per replica with a known share, (share, inside GiB m + o, load); `flexible`: per other replica on
    the GPU, (inside GiB, load); `bound`: `share_bound` with the contexts of every replica on the GPU; `limit`: L.
    The fewest restarts (see the module). O(k log k) for k replicas."""
    if not staying:
        return []
    keep = [True] * len(staying)
    used = sum(_need(inside, load, memory_gib, limit) for inside, load in flexible)
    gains: list[tuple[float, int]] = []
    for k, (share, inside, load) in enumerate(staying):
        kv = (share + SHARE_STEP) * memory_gib - inside
        own_ok = (load <= 0 and kv >= -1e-9) or (load > 0 and kv > 0 and load / kv <= limit * (1 + 1e-9))
        need = _need(inside, load, memory_gib, limit)
        if not own_ok:
            keep[k] = False
            used += need
            continue
        held = max(share, inside / memory_gib)
        used += held
        gains.append((held - need, k))
    gains.sort(key=lambda e: (-e[0], e[1]))
    for gain, k in gains:
        if used <= bound + SHARE_SLACK:
            break
        keep[k] = False
        used -= gain
    return keep


@dataclass(frozen=True, eq=False)
class Sizes:
    """Per item m + o (`inside`, GiB), c (`context`), load; per GPU memory M and reserve R: the arrays the share
    rule reads, computed once per call (`sizes_of`)."""

    inside: list[float]
    context: list[float]
    load: list[float]
    memory: list[float]
    reserve: list[float]


def sizes_of(inst: Instance) -> Sizes:
    """The `Sizes` of `inst`. O(items + G)."""
    return Sizes((inst.weights() + inst.overheads()).tolist(), inst.contexts().tolist(), inst.item_load.tolist(),
                 inst.total_memory().tolist(), inst.reserves().tolist())


def kept_mask(inst: Instance, run: IntArray, share: FloatArray, assign: IntArray, limit: float) -> np.ndarray:
    """Per item, True when it stays (run == assign >= 0, after `rematch`), its running share is known (`share`
    not NaN) and it keeps that share under the pressure limit `limit` (the module's rule). O(items log items)."""
    kept = np.zeros(inst.n_items, dtype=bool)
    known = (run >= 0) & (assign == run) & ~np.isnan(share)
    if not known.any():
        return kept
    sizes = sizes_of(inst)
    placed = np.nonzero(assign >= 0)[0]
    order = placed[np.argsort(assign[placed], kind="stable")]
    bounds = np.searchsorted(assign[order], np.arange(inst.n_gpus + 1))
    for g in np.unique(assign[known]).tolist():
        members = order[bounds[g]:bounds[g + 1]].tolist()
        keep = gpu_keeps(inst, g, members, known, share, limit, sizes)
        for i, k in zip([i for i in members if known[i]], keep):
            kept[i] = k
    return kept


def gpu_keeps(inst: Instance, g: int, members: list[int], known: np.ndarray, share: FloatArray,
              limit: float, sizes: Sizes | None = None) -> list[bool]:
    """`restarts_on_gpu` for GPU `g` holding items `members`; `known` marks the staying items with a known share
    (their answers come in `members` order); `sizes`: `sizes_of(inst)` when the caller has it. O(k log k)."""
    z = sizes if sizes is not None else sizes_of(inst)
    memory = z.memory[g]
    bound = share_bound(memory, z.reserve[g], sum(z.context[i] for i in members))
    staying = [(float(share[i]), z.inside[i], z.load[i]) for i in members if known[i]]
    flexible = [(z.inside[i], z.load[i]) for i in members if not known[i]]
    return restarts_on_gpu(memory, bound, staying, flexible, limit)


def kept_memory_shares(inst: Instance, assign: IntArray, kept: np.ndarray, share: FloatArray,
                       fractions: FloatArray, kv: FloatArray) -> tuple[FloatArray, FloatArray]:
    """The plan's (fraction, KV GiB) per item with the kept replicas' shares honoured: a kept item gets its running
    share (and the KV memory it leaves beyond m + o); on its GPU the other items share bound - the kept shares, less
    their m + o, in proportion to load (by weights without load). GPUs without kept items keep `fractions` and
    `kv` (kvsched.packer.evaluate.memory_shares). Sums stay within each GPU's bound. O(items)."""
    if not kept.any():
        return fractions, kv
    fractions = fractions.copy()
    kv = kv.copy()
    memory = inst.total_memory()
    inside = inst.weights() + inst.overheads()
    for g in np.unique(assign[kept]).tolist():
        members = np.nonzero(assign == g)[0]
        mine = kept[members]
        held = members[mine]
        rest = members[~mine]
        m = float(memory[g])
        bound = share_bound(m, float(inst.reserves()[g]), float(inst.contexts()[members].sum()))
        fractions[held] = share[held]
        kv[held] = np.maximum(share[held] * m - inside[held], 0.0)
        if rest.size == 0:
            continue
        left = max((bound - float(np.maximum(share[held], inside[held] / m).sum())) * m - float(inside[rest].sum()),
                   0.0)
        load = inst.item_load[rest]
        total = float(load.sum())
        part = load / total if total > 0 else inst.weights()[rest] / float(inst.weights()[rest].sum())
        kv[rest] = left * part
        fractions[rest] = (inside[rest] + kv[rest]) / m
    return fractions, kv
