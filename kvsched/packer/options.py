"""Knobs of the search, with the reason for each default. Built by adapters from flags; read by `solve`."""

from __future__ import annotations

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
    # Keep the current assignment when its max KVPR is within this ratio of the best plan found (no churn).
    stability_threshold_ratio: float = 0.05
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
        if self.retune_threshold_ratio < 0:
            raise InvalidInput("options", "retuneThreshold", self.retune_threshold_ratio, "must be >= 0")
        if not 0 < self.bisection_tolerance_ratio < 1:
            raise InvalidInput("options", "bisectionTolerance", self.bisection_tolerance_ratio, "must be in (0, 1)")
        if self.time_budget_s < 0:
            raise InvalidInput("options", "timeBudgetSeconds", self.time_budget_s, "must be >= 0")
        if self.stability_threshold_ratio < 0:
            raise InvalidInput("options", "stabilityThreshold", self.stability_threshold_ratio, "must be >= 0")
