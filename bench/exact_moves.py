"""Exact references for the churn benchmark, with OR-Tools CP-SAT (a bench-only dependency: the `bench` extra).

Two questions, both at the level of models (replicas of one model are interchangeable, and never share a GPU, so
a 0/1 variable x[j, g] "model j has a replica on GPU g" with sum_g x[j, g] = replicas_j says everything):

- `min_max_kvpr`: the smallest max KVPR of any placement, by bisection on T with a feasibility model at each T.
- `fewest_moves`: the fewest moves of running replicas such that max KVPR <= a cap.

KVPR_g <= T is linear in x at a fixed T: sum_j x[j, g] * (n_j / k_j + T * m_j) <= T * M_g. CP-SAT needs integer
coefficients, so both sides are scaled by S and rounded *towards feasibility* (weights down, capacities up): a
model proven infeasible proves the real problem infeasible at T (valid lower bounds); a solution found may
exceed T by ~1e-7 relative, so every figure reported is the solution's KVPR recomputed in floating point.

A move (as in the issue): a running replica whose GPU is no longer one of its model's GPUs. Running replicas
on a GPU that is gone are forced restarts, not moves; when a model has fewer replicas than run now, the surplus
ones stop and are not moves either. `count_moves` applies that rule to any pair of placements.
Called by: bench/churn.py.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Mapping, Sequence

from ortools.sat.python import cp_model

from kvsched.packer import Gpu, GpuId, Model

# Scaled capacities are about this large: rounding moves a constraint by ~1e-7 of the largest capacity.
_SCALE_TARGET = 1e7
# Worker threads of each CP-SAT solve (the machine has 2 cores); results may differ from run to run.
DEFAULT_WORKERS = 2

GpuSets = Mapping[str, frozenset[GpuId]]


@dataclass(frozen=True)
class Solved:
    """A placement found by CP-SAT (model -> its GPUs) with its max KVPR recomputed, or none."""

    status: str  # OPTIMAL, FEASIBLE, INFEASIBLE, UNKNOWN (time limit without an answer), MODEL_INVALID
    gpus_of: dict[str, frozenset[GpuId]] | None
    max_kvpr: float
    objective: float | None
    seconds: float
    bound: float | None = None  # CP-SAT's proven bound on the objective (a lower bound: no placement does better)


@dataclass(frozen=True)
class MinMaxKvpr:
    """Best max KVPR found and the largest T proven unreachable (proven_lower <= optimum <= value).

    proven says the two meet within the bisection tolerance; otherwise some step hit its time limit.
    """

    value: float
    gpus_of: dict[str, frozenset[GpuId]] | None
    proven_lower: float
    proven: bool
    steps: int
    seconds: float


def placement_kvpr(models: Sequence[Model], gpus: Sequence[Gpu], gpus_of: GpuSets) -> float:
    """Max KVPR of a model-level placement, computed here (not with the packer's code): N_g / (M_g - W_g)."""
    load = {g.id: 0.0 for g in gpus}
    weights = {g.id: 0.0 for g in gpus}
    for m in models:
        for gid in gpus_of.get(m.name, frozenset()):
            load[gid] += m.rate_rps / m.slo_s / m.replicas
            weights[gid] += m.size_gib
    worst = 0.0
    for g in gpus:
        free = g.memory_gib - weights[g.id]
        if free < -1e-9 * g.memory_gib or (free <= 0 and load[g.id] > 0):
            return math.inf
        if load[g.id] > 0:
            worst = max(worst, load[g.id] / free)
    return worst


def count_moves(models: Sequence[Model], gpus: Sequence[Gpu], before: GpuSets, after: GpuSets) -> int:
    """Moves from `before` to `after`: per model, running replicas (on GPUs that still exist) whose GPU is not
    one of the model's GPUs after, less the replicas the model no longer needs. Models not in `models` count 0.
    """
    alive = {g.id for g in gpus}
    moves = 0
    for m in models:
        running = before.get(m.name, frozenset()) & alive
        gone = len(running - after.get(m.name, frozenset()))
        moves += max(0, gone - max(0, len(running) - m.replicas))
    return moves


class _Model:
    """The x[j, g] variables and the KVPR constraints at one T."""

    def __init__(self, models: Sequence[Model], gpus: Sequence[Gpu], target: float, *,
                 break_symmetry: bool = False) -> None:
        self.models, self.gpus, self.target = models, gpus, target
        self.cp = cp_model.CpModel()
        scale = _SCALE_TARGET / max(target * max(g.memory_gib for g in gpus), 1e-12)
        self.x: dict[tuple[int, int], cp_model.IntVar] = {}
        rank = _class_ranks(gpus)
        last_replica = _last_replica_index(models) if break_symmetry else None
        on_gpu: list[list[cp_model.IntVar]] = [[] for _ in gpus]
        weight_on_gpu: list[list[int]] = [[] for _ in gpus]
        for j, m in enumerate(models):
            weight = m.rate_rps / m.slo_s / m.replicas + target * m.size_gib
            row = []
            for g, gpu in enumerate(gpus):
                if last_replica is not None and rank[g] > last_replica[j]:
                    continue  # see _last_replica_index
                if _fits_alone(m, gpu, target):
                    var = self.x[j, g] = self.cp.NewBoolVar(f"x_{j}_{g}")
                    row.append(var)
                    on_gpu[g].append(var)
                    weight_on_gpu[g].append(math.floor(weight * scale))
            # LinearExpr.Sum / WeightedSum build in C++ (128 GPUs x 700 models: 1.0 s a model, 1.4 s with sum())
            self.cp.Add(cp_model.LinearExpr.Sum(row) == m.replicas)
        for g, gpu in enumerate(gpus):
            if on_gpu[g]:
                self.cp.Add(cp_model.LinearExpr.WeightedSum(on_gpu[g], weight_on_gpu[g])
                            <= math.ceil(target * gpu.memory_gib * scale))

    def hint(self, gpus_of: GpuSets | None) -> None:
        if not gpus_of:
            return
        for (j, g), var in self.x.items():
            self.cp.AddHint(var, self.gpus[g].id in gpus_of.get(self.models[j].name, frozenset()))

    def solve(self, time_limit_s: float, workers: int) -> Solved:
        solver = cp_model.CpSolver()
        solver.parameters.max_time_in_seconds = max(0.01, time_limit_s)
        solver.parameters.num_workers = workers
        start = time.perf_counter()
        status = solver.Solve(self.cp)
        seconds = time.perf_counter() - start
        name = solver.StatusName(status)
        if status not in (cp_model.OPTIMAL, cp_model.FEASIBLE):
            bound = solver.BestObjectiveBound() if self.cp.HasObjective() and status == cp_model.UNKNOWN else None
            return Solved(name, None, math.inf, None, seconds, bound)
        chosen: dict[str, set[GpuId]] = {m.name: set() for m in self.models}
        for (j, g), var in self.x.items():
            if solver.Value(var):
                chosen[self.models[j].name].add(self.gpus[g].id)
        gpus_of = {k: frozenset(v) for k, v in chosen.items()}
        objective = solver.ObjectiveValue() if self.cp.HasObjective() else None
        bound = solver.BestObjectiveBound() if self.cp.HasObjective() else None
        return Solved(name, gpus_of, placement_kvpr(self.models, self.gpus, gpus_of), objective, seconds, bound)


def _class_ranks(gpus: Sequence[Gpu]) -> list[int]:
    """Position of each GPU among the GPUs of its memory size, in input order."""
    seen: dict[float, int] = {}
    ranks = []
    for gpu in gpus:
        ranks.append(seen.get(gpu.memory_gib, 0))
        seen[gpu.memory_gib] = ranks[-1] + 1
    return ranks


def _last_replica_index(models: Sequence[Model]) -> list[int]:
    """Symmetry breaking for a plan from scratch: number the replicas 0, 1, ... in model order and sort the GPUs
    of each memory size by the smallest replica number they hold; then the GPU of rank r holds no replica
    numbered below r, so model j (replicas c_j .. c_j + k_j - 1) sits only on GPUs of rank <= c_j + k_j - 1.
    Every placement has such a relabelling (`canonical`), so no optimum is cut off.
    """
    out, count = [], 0
    for m in models:
        count += m.replicas
        out.append(count - 1)
    return out


def canonical(models: Sequence[Model], gpus: Sequence[Gpu], gpus_of: GpuSets) -> dict[str, frozenset[GpuId]]:
    """`gpus_of` with the GPUs of each memory size permuted into the order `_last_replica_index` assumes."""
    first: dict[GpuId, int] = {}
    number = 0  # the first replica number of the model at hand
    for m in models:
        for k, gid in enumerate(sorted(gpus_of.get(m.name, frozenset()))):
            first.setdefault(gid, number + k)
        number += m.replicas
    by_size: dict[float, list[GpuId]] = {}
    for gpu in gpus:
        by_size.setdefault(gpu.memory_gib, []).append(gpu.id)
    relabel: dict[GpuId, GpuId] = {}
    for ids in by_size.values():
        ordered = sorted(ids, key=lambda gid: (first.get(gid, math.inf), ids.index(gid)))
        relabel.update(zip(ordered, ids))
    return {name: frozenset(relabel[g] for g in gs if g in relabel) for name, gs in gpus_of.items()}


def _fits_alone(m: Model, gpu: Gpu, target: float) -> bool:
    """Whether one replica of m alone on gpu has KVPR <= T (weights below memory when it carries load)."""
    load = m.rate_rps / m.slo_s / m.replicas
    return load + target * m.size_gib <= target * gpu.memory_gib * (1 + 1e-9) and (
        m.size_gib < gpu.memory_gib or (load == 0 and m.size_gib <= gpu.memory_gib))


def feasible_at(models: Sequence[Model], gpus: Sequence[Gpu], target: float, *, hint: GpuSets | None = None,
                time_limit_s: float = 5.0, workers: int = DEFAULT_WORKERS) -> Solved:
    """A placement with max KVPR <= target (up to rounding), INFEASIBLE when none exists, UNKNOWN on time-out."""
    model = _Model(models, gpus, target, break_symmetry=True)
    model.hint(canonical(models, gpus, hint) if hint else None)
    return model.solve(time_limit_s, workers)


def min_max_kvpr(models: Sequence[Model], gpus: Sequence[Gpu], *, lower: float, upper: float,
                 hint: GpuSets | None = None, step_limit_s: float = 3.0, total_limit_s: float = 12.0,
                 tolerance_ratio: float = 1e-3, workers: int = DEFAULT_WORKERS) -> MinMaxKvpr:
    """Bisection on T between a valid lower bound and the max KVPR of a known plan (`hint`, value `upper`).

    Each step solves the feasibility model at T. Feasible: the upper end drops to the solution's real KVPR.
    Infeasible: the lower end rises to T (proven). Unknown: the search goes on below T but the proven lower
    end stays. Stops at the tolerance or when the total time is spent.
    """
    start = time.perf_counter()
    best_value, best = upper, dict(hint) if hint else None
    proven_lower = max(0.0, lower)
    search_lower = proven_lower
    steps = 0
    while best_value > search_lower * (1 + tolerance_ratio) and search_lower > 0:
        left = total_limit_s - (time.perf_counter() - start)
        if left <= 0.05:
            break
        target = math.sqrt(search_lower * best_value)
        res = feasible_at(models, gpus, target, hint=best, time_limit_s=min(step_limit_s, left), workers=workers)
        steps += 1
        if res.gpus_of is not None:
            if res.max_kvpr < best_value:
                best_value, best = res.max_kvpr, res.gpus_of
            else:  # rounding: the solution sits a hair above T, not below the best; stop narrowing here
                search_lower = max(search_lower, target)
        elif res.status == "INFEASIBLE":
            proven_lower = search_lower = target
        else:
            search_lower = target
    return MinMaxKvpr(value=best_value, gpus_of=best, proven_lower=proven_lower,
                      proven=best_value <= proven_lower * (1 + tolerance_ratio) * (1 + 1e-9),
                      steps=steps, seconds=time.perf_counter() - start)


def fewest_moves(models: Sequence[Model], gpus: Sequence[Gpu], current: GpuSets, cap: float, *,
                 hint: GpuSets | None = None, time_limit_s: float = 10.0,
                 workers: int = DEFAULT_WORKERS) -> Solved:
    """The placement with max KVPR <= cap (up to rounding) that moves the fewest running replicas.

    Objective: sum over models j and GPUs g where j runs now of (1 - x[j, g]), less the surplus replicas of
    models that shrank (`count_moves` of the result equals the objective). OPTIMAL means proven fewest.
    """
    model = _Model(models, gpus, cap)
    index = {g.id: k for k, g in enumerate(gpus)}
    kept_terms = []
    constant = 0
    for j, m in enumerate(models):
        running = [index[gid] for gid in current.get(m.name, frozenset()) if gid in index]
        constant += len(running) - max(0, len(running) - m.replicas)
        kept_terms.extend(model.x[j, g] for g in running if (j, g) in model.x)
    model.cp.Minimize(constant - cp_model.LinearExpr.Sum(kept_terms))
    model.hint(hint)
    return model.solve(time_limit_s, workers)


# ---------------------------------------------------------------------------------- configuration LP bound


class _TooManyStates(Exception):
    """The knapsack's Pareto list outgrew its cap: no exact answer, so no proof."""


# Pareto states one knapsack may keep; many small models per GPU blow the list up (then the LP proves nothing).
_MAX_STATES = 5_000


def _best_subset(weights: Sequence[float], values: Sequence[float], capacity: float) -> tuple[float, tuple[int, ...]]:
    """Exact 0/1 knapsack with real weights and values: the largest total value of items with total weight <=
    capacity (1e-12 relative slack, in the direction that keeps the bound valid), and the items. Pareto states
    (weight, value) with dominated ones dropped; exponential at worst, small when few items fit together.
    Raises _TooManyStates past _MAX_STATES."""
    limit = capacity * (1 + 1e-12)
    states: list[tuple[float, float, tuple[int, ...]]] = [(0.0, 0.0, ())]
    for i, (w, v) in enumerate(zip(weights, values)):
        if v <= 0 or w > limit:
            continue
        grown = [(a + w, b + v, s + (i,)) for a, b, s in states if a + w <= limit]
        merged = sorted(states + grown, key=lambda x: (x[0], -x[1]))
        states, best = [], -1.0
        for state in merged:
            if state[1] > best:
                states.append(state)
                best = state[1]
        if len(states) > _MAX_STATES:
            raise _TooManyStates
    top = max(states, key=lambda x: x[1])
    return top[1], top[2]


def config_lp_refutes(models: Sequence[Model], gpus: Sequence[Gpu], target: float, *, max_rounds: int = 300) -> bool:
    try:
        return _config_lp_refutes(models, gpus, target, max_rounds)
    except _TooManyStates:
        return False


def _config_lp_refutes(models: Sequence[Model], gpus: Sequence[Gpu], target: float, max_rounds: int) -> bool:
    """True when the configuration LP proves that no placement has max KVPR <= target.

    Columns are feasible GPU contents (at most one replica per model, total n + T*m <= T*M), one LP row per
    model (cover its replicas) and per memory size (at most that many GPUs). Column generation with GLOP on the
    phase-1 LP and exact knapsack pricing; the answer is then checked independently of the LP's accuracy by the
    Farkas certificate: with u the duals of the model rows, sum_j k_j u_j > sum over memory sizes of
    count * max{u(S) : S fits} proves infeasibility. Bench only (OR-Tools' GLOP).
    """
    from ortools.linear_solver import pywraplp

    weights = [m.rate_rps / m.slo_s / m.replicas + target * m.size_gib for m in models]
    sizes: dict[float, int] = {}
    for gpu in gpus:
        sizes[gpu.memory_gib] = sizes.get(gpu.memory_gib, 0) + 1
    columns = [(mem, (j,)) for mem in sizes for j in range(len(models)) if weights[j] <= target * mem]
    u = [0.0] * len(models)
    for _ in range(max_rounds):
        lp = pywraplp.Solver.CreateSolver("GLOP")
        lam = [lp.NumVar(0, lp.infinity(), "") for _ in columns]
        slack = [lp.NumVar(0, lp.infinity(), "") for _ in models]
        cover = []
        for j, m in enumerate(models):
            row = lp.Constraint(m.replicas, lp.infinity())
            row.SetCoefficient(slack[j], 1)
            cover.append(row)
        per_size = {mem: lp.Constraint(-lp.infinity(), count) for mem, count in sizes.items()}
        for var, (mem, subset) in zip(lam, columns):
            per_size[mem].SetCoefficient(var, 1)
            for j in subset:
                cover[j].SetCoefficient(var, 1)
        objective = lp.Objective()
        for var in slack:
            objective.SetCoefficient(var, 1)
        objective.SetMinimization()
        if lp.Solve() != pywraplp.Solver.OPTIMAL:
            return False
        u = [max(0.0, row.dual_value()) for row in cover]
        added = False
        for mem in sizes:
            fits = [w if w <= target * mem else math.inf for w in weights]
            value, subset = _best_subset(fits, u, target * mem)
            if value + per_size[mem].dual_value() > 1e-9 and (mem, subset) not in columns:
                columns.append((mem, subset))
                added = True
        if not added:
            break
    supply = 0.0
    for mem, count in sizes.items():
        fits = [w if w <= target * mem else math.inf for w in weights]
        supply += count * _best_subset(fits, u, target * mem)[0]
    demand = sum(m.replicas * uj for m, uj in zip(models, u))
    return demand > supply * (1 + 1e-9) + 1e-9


def config_lp_bound(models: Sequence[Model], gpus: Sequence[Gpu], lower: float, upper: float, *,
                    tolerance_ratio: float = 1e-4, time_limit_s: float = 30.0) -> float:
    """The largest T in [lower, upper] found by bisection that the configuration LP refutes (or `lower`): a
    valid lower bound on the optimal max KVPR when `lower` is one."""
    start = time.perf_counter()
    lo, hi = lower, upper
    while hi > lo * (1 + tolerance_ratio) and time.perf_counter() - start < time_limit_s:
        mid = math.sqrt(lo * hi)
        if config_lp_refutes(models, gpus, mid):
            lo = mid
        else:
            hi = mid
    return lo


# ------------------------------------------------------------------------------------------ fewest restarts


def _need_share(m: Model, gpu: Gpu, limit: float) -> float:
    """need(L) + c / M: the share (of M) a flexible replica of m takes on gpu for pressure <= L, with its context
    (kvsched.packer.shares, written again here from the formula)."""
    load = m.rate_rps / m.slo_s / m.replicas
    kv = load / limit if load > 0 else 0.0
    return (m.size_gib + m.overhead_gib + kv + m.context_gib) / gpu.memory_gib


def keepable(m: Model, gpu: Gpu, share: float, limit: float, step: float = 1e-3) -> bool:
    """Whether a replica of m running on gpu with `share` may keep it at pressure limit L: its own pressure
    n / ((share + one rounding step) M - m - o) <= L (the packer's rule)."""
    load = m.rate_rps / m.slo_s / m.replicas
    kv = (share + step) * gpu.memory_gib - m.size_gib - m.overhead_gib
    return (load <= 0 and kv >= 0) or (load > 0 and kv > 0 and load / kv <= limit * (1 + 1e-9))


def fewest_restarts(models: Sequence[Model], gpus: Sequence[Gpu], current: GpuSets,
                    shares: Mapping[tuple[str, GpuId], float], cap: float, limit: float, *,
                    hint: GpuSets | None = None, time_limit_s: float = 10.0,
                    workers: int = DEFAULT_WORKERS) -> Solved:
    """The placement with max KVPR <= cap (up to rounding) that restarts the fewest running replicas: moves plus
    replicas that stay but cannot keep their running share (`shares`, by model and GPU) at pressure limit `limit`.

    For a fixed L the share rule is linear: k[j, g] (replica of j on g keeps its share) <= x[j, g], only where it
    runs with a share it may keep (`keepable`), and per GPU
        sum_j x[j, g] (need_j(L) + c_j / M_g) + sum_j k[j, g] (max(s_jg, least_j) - need_j(L)) <= 1 - R_g / M_g
    (the kept shares plus what the flexible replicas need fit the GPU's bound). Objective: running replicas (less
    the surplus of models that shrank) minus the kept ones. Coefficients are rounded towards feasibility, and L
    is the caller's for every plan (the packer's is (1 + threshold) x its own plan's peak, at most
    (1 + threshold) x cap), so the optimum is a lower bound on the restarts of any plan within cap under the
    packer's rule. OPTIMAL means proven fewest.
    """
    model = _Model(models, gpus, cap)
    index = {g.id: k for k, g in enumerate(gpus)}
    scale = 1e6
    constant = 0
    kept_vars: list[cp_model.IntVar] = []
    kept_on: dict[int, list[tuple[int, cp_model.IntVar, int]]] = {g: [] for g in range(len(gpus))}  # (j, k, coef)
    share_vars: dict[int, list[cp_model.IntVar]] = {g: [] for g in range(len(gpus))}
    share_coefs: dict[int, list[int]] = {g: [] for g in range(len(gpus))}
    need_on: dict[int, list[tuple[int, int]]] = {g: [] for g in range(len(gpus))}  # (j, coef)
    for (j, g), var in model.x.items():
        share_vars[g].append(var)
        share_coefs[g].append(math.floor(_need_share(models[j], gpus[g], limit) * scale))
        need_on[g].append((j, share_coefs[g][-1]))
    for j, m in enumerate(models):
        running = [index[gid] for gid in current.get(m.name, frozenset()) if gid in index]
        constant += len(running) - max(0, len(running) - m.replicas)
        for g in running:
            s = shares.get((m.name, gpus[g].id))
            if (j, g) not in model.x or s is None or not keepable(m, gpus[g], s, limit):
                continue
            k = model.cp.NewBoolVar(f"k_{j}_{g}")
            model.cp.Add(k <= model.x[j, g])
            held = max(s, (m.size_gib + m.overhead_gib) / gpus[g].memory_gib)
            gain = held - (_need_share(m, gpus[g], limit) - m.context_gib / gpus[g].memory_gib)
            share_vars[g].append(k)
            share_coefs[g].append(math.floor(gain * scale))
            kept_vars.append(k)
            kept_on[g].append((j, k, share_coefs[g][-1]))
    capacity = {g: math.ceil((1 - gpu.reserve_gib / gpu.memory_gib) * scale) for g, gpu in enumerate(gpus)}
    for g in range(len(gpus)):
        if share_vars[g]:
            model.cp.Add(cp_model.LinearExpr.WeightedSum(share_vars[g], share_coefs[g]) <= capacity[g])
    model.cp.Minimize(constant - cp_model.LinearExpr.Sum(kept_vars))
    model.hint(hint)
    if hint:
        _hint_kept(model, hint, need_on, kept_on, capacity)
    return model.solve(time_limit_s, workers)


def _hint_kept(model: _Model, hint: GpuSets, need_on: Mapping[int, list[tuple[int, int]]],
               kept_on: Mapping[int, list[tuple[int, cp_model.IntVar, int]]], capacity: Mapping[int, int]) -> None:
    """Complete a placement hint with kept shares that fit: per GPU, every replica the hint keeps where it runs
    keeps its share, dropping the largest gains until the GPU's share constraint holds. Without it CP-SAT got
    only x hinted and at 128 GPUs x 700 models found 61 restarts where kvsched's plan, the hint, has 20."""
    on = {(j, g) for (j, g) in model.x if model.gpus[g].id in hint.get(model.models[j].name, frozenset())}
    for g, kept in kept_on.items():
        if not kept:
            continue
        flexible = sum(c for j, c in need_on[g] if (j, g) in on)
        chosen = sorted((c, n) for n, (j, _, c) in enumerate(kept) if (j, g) in on)  # (gain, position in kept)
        total = flexible + sum(c for c, _ in chosen)
        while chosen and total > capacity[g] and chosen[-1][0] > 0:
            total -= chosen.pop()[0]
        keep = {n for _, n in chosen} if total <= capacity[g] else set()
        for n, (_, k, _) in enumerate(kept):
            model.cp.AddHint(k, n in keep)
