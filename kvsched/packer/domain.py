"""Domain types of the packer: what goes in (models, GPUs, the current assignment) and what comes out (a plan).

Everything here is a frozen dataclass of plain values so that plans are hashable, comparable and safe to share.
Memory is in GiB, request rates in requests per second, SLOs in seconds. A model's *load* is rate / SLO; the
KV-cache pressure ratio (KVPR) of a GPU is its summed load over the memory left for KV cache: its memory minus
its reserve, minus each replica's weights, engine overhead and CUDA context (all 0 unless given; docs/packer.md,
"Memory on a real GPU").
Called by: every packer module, and by the adapters (CLI, controller, extender) that build inputs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal, get_args

from kvsched.packer.errors import InvalidInput


# A guard against typos such as `replicas: 1000000000`, which would otherwise expand into a billion items.
MAX_REPLICAS = 100_000
# The largest load rate / SLO of one model, in requests per second squared. A million requests per second at a
# 1 ms SLO is 1e9; the margin keeps every sum over a cluster's loads finite and exact enough to bisect on (an
# infinite load, e.g. a rate of 1e308 with a 0.5 s SLO, made the packer fail for every model).
MAX_LOAD = 1e12


@dataclass(frozen=True, order=True)
class GpuId:
    """A GPU by node name and device index on that node; orders by node then index (ties break by id)."""

    node: str
    index: int

    def __str__(self) -> str:
        return f"{self.node}/{self.index}"


def _check_number(obj: str, name: str, value: object, *, positive: bool) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InvalidInput(obj, name, value, "must be a number")
    number = float(value)
    if not math.isfinite(number):
        raise InvalidInput(obj, name, value, "must be finite")
    if positive and number <= 0:
        raise InvalidInput(obj, name, value, "must be greater than zero")
    if number < 0:
        raise InvalidInput(obj, name, value, "must not be negative")
    return number


@dataclass(frozen=True)
class Model:
    """An LLM served with `replicas` identical copies; each replica carries rate_rps / replicas of the traffic.

    Invariants (checked on construction): name non-empty, size_gib > 0, rate_rps >= 0, slo_s > 0,
    rate_rps / slo_s <= MAX_LOAD, replicas >= 1, overhead_gib >= 0, context_gib >= 0.

    overhead_gib: the engine's working memory besides weights and KV cache (activations, CUDA graphs,
    workspaces), counted INSIDE the memory fraction the engine is given. context_gib: the CUDA context of the
    engine process, OUTSIDE its fraction (created before the engine's start-up check). Both per replica; 0 (the
    default) plans as if the engine needed nothing but weights and KV cache, as the packer did before.
    """

    name: str
    size_gib: float
    rate_rps: float
    slo_s: float
    replicas: int = 1
    overhead_gib: float = 0.0
    context_gib: float = 0.0

    def __post_init__(self) -> None:
        obj = f"model {self.name!r}"
        if not isinstance(self.name, str) or not self.name:
            raise InvalidInput("model", "name", self.name, "must be a non-empty string")
        _check_number(obj, "size_gib", self.size_gib, positive=True)
        _check_number(obj, "rate_rps", self.rate_rps, positive=False)
        _check_number(obj, "slo_s", self.slo_s, positive=True)
        if not self.rate_rps / self.slo_s <= MAX_LOAD:
            raise InvalidInput(obj, "rate_rps", self.rate_rps,
                               f"divided by the SLO ({self.slo_s!r} s) must be at most {MAX_LOAD:g} requests/s^2")
        if isinstance(self.replicas, bool) or not isinstance(self.replicas, int) or self.replicas < 1:
            raise InvalidInput(obj, "replicas", self.replicas, "must be an integer >= 1")
        if self.replicas > MAX_REPLICAS:
            raise InvalidInput(obj, "replicas", self.replicas,
                               f"must be at most {MAX_REPLICAS} (each replica needs a GPU of its own)")
        _check_number(obj, "overhead_gib", self.overhead_gib, positive=False)
        _check_number(obj, "context_gib", self.context_gib, positive=False)

    @property
    def load(self) -> float:
        """n = rate / SLO, in requests per second squared, summed over all replicas."""
        return self.rate_rps / self.slo_s

    @property
    def replica_load(self) -> float:
        """Load carried by one replica: n / replicas."""
        return self.load / self.replicas

    @property
    def footprint_gib(self) -> float:
        """What one replica takes of its GPU besides KV cache: weights + engine overhead + CUDA context."""
        return self.size_gib + self.overhead_gib + self.context_gib


@dataclass(frozen=True)
class Gpu:
    """One GPU with `memory_gib` of device memory, of which `reserve_gib` is never planned: what the driver
    reserves and the gap between the memory a node is labelled with and what the device reports (0: none).

    Invariants: memory_gib > 0, 0 <= reserve_gib < memory_gib, index >= 0, node non-empty.
    """

    node: str
    index: int
    memory_gib: float
    reserve_gib: float = 0.0

    def __post_init__(self) -> None:
        if not isinstance(self.node, str) or not self.node:
            raise InvalidInput("gpu", "node", self.node, "must be a non-empty string")
        obj = f"gpu {self.node}/{self.index}"
        if isinstance(self.index, bool) or not isinstance(self.index, int) or self.index < 0:
            raise InvalidInput(obj, "index", self.index, "must be an integer >= 0")
        memory = _check_number(obj, "memory_gib", self.memory_gib, positive=True)
        reserve = _check_number(obj, "reserve_gib", self.reserve_gib, positive=False)
        if reserve >= memory:
            raise InvalidInput(obj, "reserve_gib", self.reserve_gib,
                               f"must be less than the GPU's memory ({memory:g}Gi): nothing would be left to plan")

    @property
    def usable_gib(self) -> float:
        """memory_gib - reserve_gib: what replicas may take."""
        return self.memory_gib - self.reserve_gib

    @property
    def id(self) -> GpuId:
        return GpuId(self.node, self.index)


@dataclass(frozen=True)
class Slot:
    """Replica `replica` (0-based) of model `model` sits on GPU `gpu`. Used for the current assignment.

    memory_fraction: the share of the GPU's memory its engine runs with (`--gpu-memory-utilization`), None when
    not known; a re-plan lets a replica that stays keep it where it fits (kvsched.packer.shares)."""

    model: str
    replica: int
    gpu: GpuId
    memory_fraction: float | None = None


@dataclass(frozen=True)
class Placement:
    """A planned replica: where it goes, the share of the GPU's memory its engine may take (0 < f <= 1), and the
    GiB of that share left for its KV cache (the share minus its weights and engine overhead)."""

    model: str
    replica: int
    gpu: GpuId
    memory_fraction: float
    kv_memory_gib: float = 0.0


@dataclass(frozen=True)
class GpuUsage:
    """One GPU in a plan: its KVPR (inf when nothing is left for KV cache while it carries load), its memory,
    the weights on it (used_memory_gib), its reserve, its replicas' engine overheads and CUDA contexts together
    (engine_gib) and the memory left for KV cache (kv_memory_gib), all GiB, and its models.

    memory_gib = reserve_gib + used_memory_gib + engine_gib + kv_memory_gib (up to float rounding).
    """

    gpu: GpuId
    memory_gib: float
    kvpr: float
    used_memory_gib: float
    models: tuple[str, ...]
    reserve_gib: float = 0.0
    engine_gib: float = 0.0
    kv_memory_gib: float = 0.0


# Why a replica is unplaced, machine-readable (the controller's `Unschedulable` condition reasons):
# ModelTooLarge: its weights exceed the largest GPU's memory. NoRoomForEngine: its weights fit a GPU's memory,
# but its weights plus engine overhead and CUDA context exceed what every GPU offers once its reserve is set
# aside. NoRoomForKVCache: those fit a GPU exactly, leaving no memory for KV cache while it carries load.
# TooFewGPUs: more replicas than GPUs able to hold one (replicas of one model never share a GPU), or no GPUs at
# all. InsufficientCapacity: a GPU could hold it alone, but none has room next to the replicas placed.
UnplacedCause = Literal["ModelTooLarge", "NoRoomForEngine", "NoRoomForKVCache", "TooFewGPUs",
                        "InsufficientCapacity"]
UNPLACED_CAUSES: tuple[UnplacedCause, ...] = get_args(UnplacedCause)


@dataclass(frozen=True)
class Unplaced:
    """A replica the plan could not place: `cause` for programs, `reason` a sentence naming the limit it hit."""

    model: str
    replica: int
    reason: str
    cause: UnplacedCause = "InsufficientCapacity"


@dataclass(frozen=True)
class MigrationStep:
    """One step of going from the running placement to the plan: start replica `replica` of `model` on `target`.

    source is the GPU the replica runs on now (None: a replica started for the first time, or whose GPU is gone).
    stop_first False: start the new replica, then stop the old one (make before break). stop_first True: stop the
    old one first; the new one starts once `target` has room (a later step frees it). Steps are ordered so that
    no GPU ever holds more weights than its memory when they are carried out one at a time in order.
    source == target (`is_resize`, stop_first True): the replica restarts in place with its planned memory share;
    these come first (they change no weights, and give back share the moves and new replicas need).
    """

    model: str
    replica: int
    source: GpuId | None
    target: GpuId
    stop_first: bool = False

    @property
    def is_move(self) -> bool:
        """A running replica changes GPU (a pod restart elsewhere), as opposed to a new replica starting."""
        return self.source is not None and self.source != self.target

    @property
    def is_resize(self) -> bool:
        """A running replica restarts in place (source == target, always `stop_first`) with its planned memory
        share: the share it runs with does not fit next to the plan's replicas (kvsched.packer.shares)."""
        return self.source is not None and self.source == self.target


@dataclass(frozen=True)
class SearchStats:
    """How the search went: bisection iterations, packing passes, checkpoints evaluated and retunes fired."""

    bisection_iterations: int = 0
    passes: int = 0
    checkpoints: int = 0
    retunes: int = 0
    local_search_moves: int = 0
    proven_optimal: bool = False


@dataclass(frozen=True)
class Plan:
    """The packer's answer.

    max_kvpr is the largest KVPR over all GPUs of the placed replicas (0 when nothing carries load);
    lower_bound <= the optimal max KVPR of the placeable replicas; retunes counts mid-pack raises of T over the
    whole search; solve_seconds is measured with the injected clock.
    steps: how to get from the running placement (`current`) to this plan, in order (a fresh plan: one start
    step per replica). kept_current: no running replica moves (new and orphaned replicas may still start).
    next_move_gain: when `max_migrations` stopped the re-plan short, by how much more moves would lower the
    max KVPR (this plan's minus that of the same re-plan without the cap): the controller migrates in waves,
    re-planning after each, while it is > 0. 0 when the cap did not bind.
    """

    max_kvpr: float
    lower_bound: float
    retunes: int
    solve_seconds: float
    placements: tuple[Placement, ...]
    gpus: tuple[GpuUsage, ...]
    unplaced: tuple[Unplaced, ...] = ()
    steps: tuple[MigrationStep, ...] = ()
    kept_current: bool = False
    next_move_gain: float = 0.0
    stats: SearchStats = field(default_factory=SearchStats)

    @property
    def moves(self) -> int:
        """Running replicas this plan moves to another GPU (steps with another source)."""
        return sum(1 for s in self.steps if s.is_move)

    @property
    def resizes(self) -> int:
        """Running replicas this plan restarts in place for their memory share (`MigrationStep.is_resize`)."""
        return sum(1 for s in self.steps if s.is_resize)

    @property
    def restarts(self) -> int:
        """Pod restarts this plan costs: moves plus share restarts (what a re-plan minimises)."""
        return self.moves + self.resizes

    @property
    def migrations(self) -> tuple[MigrationStep, ...]:
        """The same as `steps` (the earlier name, kept for callers written against it)."""
        return self.steps

    @property
    def gap_ratio(self) -> float:
        """max_kvpr / lower_bound - 1 (0 when both are 0)."""
        if self.lower_bound <= 0:
            return 0.0 if self.max_kvpr <= 0 else math.inf
        return self.max_kvpr / self.lower_bound - 1.0
