"""What the decision core needs from the controller's settings (built from `ControllerSettings` by the CLI).

The defaults are `ControllerSettings`' own (kvsched.settings, which says why each is what it is), read from there
so that they live in one place; the core needs nothing else of the settings machinery.
Called by: kvsched.controller.decide, kvsched.runtime (the loop, `decision_config`),
kvsched.cli (`kvsched plan --kubeconfig`), tests/controller.
"""

from __future__ import annotations

from dataclasses import dataclass

from kvsched.controller.headroom import Headroom
from kvsched.controller.selector import Selector
from kvsched.packer import PackOptions
from kvsched.settings import ControllerSettings

_SETTINGS = ControllerSettings()


@dataclass(frozen=True)
class DecisionConfig:
    """Knobs of one decision.

    `node_selector`: which nodes form kvsched's GPU pool (nodes must also have `nvidia.com/gpu` capacity and a
    GPU memory label). `scheduler_name`: the scheduler profile managed pods use. `stability_threshold_ratio`:
    keep the running placement unless a new plan beats its max KVPR by more than this. `max_migrations`: cap on
    the moves of one re-plan (None: no cap). `time_budget_s`: soft limit of one packer solve, in seconds.
    `runtime_class_name`: the runtime class managed templates get ("": leave theirs). `start_timeout_s`: how long
    a pod bound and not Ready holds its GPU's start gate (kvsched.controller.start_gate; <= 0: off).
    `node_not_ready_grace_s`: how long a node that stopped being Ready stays in the plan (<= 0: none).
    Memory headroom, GiB (kvsched.controller.headroom, docs/packer.md "Memory on a real GPU"):
    `gpu_memory_reserve_gib` of every GPU is never planned; each replica's engine needs `engine_overhead_gib`
    inside its share besides its weights (a model's `spec.engineOverhead` overrides it) and
    `engine_context_gib` outside it.
    `gpu_holders`: keep a holder pod per planned GPU (kvsched.controller.holders) in `holder_namespace`, with
    `holder_image`, `holder_priority_class` and `holder_service_account`.
    `max_restarting` / `max_restarting_per_node`: the disruption budget of a wave of migration steps
    (kvsched.controller.migrations): pods restarting at once cluster-wide / starting at once on one node.
    `make_before_break`: moves with room start the replacement first (kvsched.controller.surge).
    `pod_disruption_budget`: give each managed model a PodDisruptionBudget with `maxUnavailable:
    pod_disruption_budget_max_unavailable` (kvsched.controller.pdb; a Deployment's annotation overrides it).

    Every default is `ControllerSettings`' (5 s budget, 0.05 stability, no migration cap), so
    `decision_config(ControllerSettings()) == DecisionConfig()`. `PackOptions` keeps its own defaults (a 30 s
    budget) for the offline `kvsched plan FILE`, which is not a controller.
    """

    node_selector: Selector = Selector()
    scheduler_name: str = _SETTINGS.scheduler_name
    stability_threshold_ratio: float = _SETTINGS.stability_threshold
    max_migrations: int | None = _SETTINGS.max_migrations
    time_budget_s: float = _SETTINGS.time_budget_s
    runtime_class_name: str = _SETTINGS.runtime_class_name
    gpu_holders: bool = _SETTINGS.gpu_holders
    holder_namespace: str = _SETTINGS.holder_namespace
    holder_image: str = _SETTINGS.holder_image
    holder_priority_class: str = _SETTINGS.holder_priority_class
    holder_service_account: str = _SETTINGS.holder_service_account
    start_timeout_s: float = _SETTINGS.start_timeout_s
    node_not_ready_grace_s: float = _SETTINGS.node_not_ready_grace_s
    gpu_memory_reserve_gib: float = _SETTINGS.gpu_memory_reserve_gib
    engine_overhead_gib: float = _SETTINGS.engine_overhead_gib
    engine_context_gib: float = _SETTINGS.engine_context_gib
    max_restarting: int = _SETTINGS.max_restarting
    max_restarting_per_node: int = _SETTINGS.max_restarting_per_node
    make_before_break: bool = _SETTINGS.make_before_break
    pod_disruption_budget: bool = _SETTINGS.pod_disruption_budget
    pod_disruption_budget_max_unavailable: int = _SETTINGS.pod_disruption_budget_max_unavailable

    def headroom(self) -> Headroom:
        """The three memory headroom figures together (what the extender's slot rule is given too)."""
        return Headroom(self.gpu_memory_reserve_gib, self.engine_overhead_gib, self.engine_context_gib)

    def pack_options(self) -> PackOptions:
        """The packer's options for one solve of this decision: this config's time budget, stability threshold
        and migration cap, the packer's defaults for the rest. The one place the controller's loop and
        `kvsched plan --kubeconfig` get their options from. Raises InvalidInput for a negative budget or
        threshold, or a negative cap. O(1)."""
        return PackOptions(time_budget_s=self.time_budget_s,
                           stability_threshold_ratio=self.stability_threshold_ratio,
                           max_migrations=self.max_migrations)
