"""What the decision core needs from the controller's settings (built from `ControllerSettings` by the CLI).

Kept apart from kvsched.settings so that the core and its tests need no settings machinery.
Called by: kvsched.controller.decide, kvsched.controller.reconcile, tests/controller.
"""

from __future__ import annotations

from dataclasses import dataclass

from kvsched.api.names import DEFAULT_SCHEDULER_NAME
from kvsched.controller.selector import Selector


@dataclass(frozen=True)
class DecisionConfig:
    """Knobs of one decision.

    `node_selector`: which nodes form kvsched's GPU pool (nodes must also have `nvidia.com/gpu` capacity and a
    GPU memory label). `scheduler_name`: the scheduler profile managed pods use. `stability_threshold_ratio`:
    keep the running placement unless a new plan beats its max KVPR by more than this. `max_migrations`: cap on
    the moves of one re-plan (None: no cap). `time_budget_s`: soft limit of one packer solve.
    """

    node_selector: Selector = Selector()
    scheduler_name: str = DEFAULT_SCHEDULER_NAME
    stability_threshold_ratio: float = 0.05
    max_migrations: int | None = None
    time_budget_s: float = 30.0
