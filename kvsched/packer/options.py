"""Knobs of the search, with the reason for each default. Built by adapters from flags; read by `solve`."""

from __future__ import annotations

import math
from dataclasses import dataclass

from kvsched.packer.errors import InvalidInput


@dataclass(frozen=True)
class PackOptions:
    """Settings of one solve. All ratios are dimensionless; times are seconds of the injected clock."""

    # Fractions of the items after which a pass at T checks whether what is left proves T too low. The seed used
    # ~40% and ~75%: late enough that the partial placement says something, early enough to still act on it.
    checkpoints: tuple[float, ...] = (0.4, 0.75)
    # Raise T only when the residual bound beats it by more than this; smaller raises are noise of the heuristic.
    retune_threshold_ratio: float = 0.02
    # Turn mid-pack retuning off (the benchmark's ablation does).
    retune: bool = True
    # Bisection stops when hi / lo - 1 falls below this. Past ~0.2% a pass from scratch rarely beats the
    # warm-started descent that follows it, which is far cheaper per step.
    bisection_tolerance_ratio: float = 2e-3
    max_bisection_iterations: int = 40
    # Soft wall budget of one solve: bisection starts no new step after 30% of it, the improving phases (local
    # search, descent, exact search) stop at it. The first feasible plan is always produced whatever the budget,
    # so 0 gives the controller's fast path (one retuning pass at the lower bound). 30 s lets 8192 GPUs finish
    # well inside a minute; small clusters reach a local optimum long before it.
    time_budget_s: float = 30.0
    # Re-planning: running replicas stay where they run (the replicas that do not run yet optimised around them)
    # unless the best plan found beats that by more than this ratio; then the fewest moves that get within this
    # ratio of the best plan found. 5%: a pod restart costs minutes of weight loading, a few percent of
    # KV-cache headroom costs far less.
    stability_threshold_ratio: float = 0.05
    # Re-planning: at most this many running replicas move in one re-plan (None: no cap). When the cap binds, the
    # plan is the lowest max KVPR reachable with that many moves and `Plan.next_move_gain` says what further
    # moves would bring, so the controller can migrate in waves. Moves forced by the change itself (a replica its GPU
    # can no longer hold, or room made for a new replica that fits nowhere else) are made regardless.
    max_migrations: int | None = None
    # Local search off the peak GPU after bisection.
    local_search: bool = True
    # Instances with at most this many replicas get an exact branch-and-bound pass that can prove optimality.
    exact_max_items: int = 40
    # Node budget of that exact pass; it stops early (still valid, just unproven) when spent.
    exact_node_limit: int = 200_000

    def __post_init__(self) -> None:
        for c in self.checkpoints:
            if not 0.0 < c < 1.0:
                raise InvalidInput("options", "checkpoints", self.checkpoints, "each must be in (0, 1)")
        if not self.retune_threshold_ratio >= 0:
            raise InvalidInput("options", "retune_threshold_ratio", self.retune_threshold_ratio, "must be >= 0")
        if not 0 < self.bisection_tolerance_ratio < 1:
            raise InvalidInput("options", "bisection_tolerance_ratio", self.bisection_tolerance_ratio,
                               "must be in (0, 1)")
        if not self.time_budget_s >= 0:
            raise InvalidInput("options", "time_budget_s", self.time_budget_s, "must be >= 0")
        if not (self.stability_threshold_ratio >= 0 and math.isfinite(self.stability_threshold_ratio)):
            raise InvalidInput("options", "stability_threshold_ratio", self.stability_threshold_ratio,
                               "must be a finite number >= 0")
        if self.max_migrations is not None and (isinstance(self.max_migrations, bool)
                                                or not isinstance(self.max_migrations, int)
                                                or self.max_migrations < 0):
            raise InvalidInput("options", "max_migrations", self.max_migrations, "must be an integer >= 0 or None")
