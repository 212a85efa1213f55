"""The controller's decisions: a snapshot of the cluster in, the smallest set of writes out (no cluster needed).

`decide(world, config, planner, now=...)` is the core; kvsched.k8s reads the cluster into a `World` and carries
out the `Decision`. See docs/controller.md.
"""

from kvsched.controller.config import DecisionConfig
from kvsched.controller.decide import (
    Decision,
    DeploymentPatch,
    Event,
    EventTarget,
    Eviction,
    Planner,
    StatusWrite,
    decide,
)
from kvsched.controller.migrations import Blocked
from kvsched.controller.objects import (
    DeploymentObj,
    ModelServingObj,
    NodeObj,
    ObjectKey,
    OwnerRef,
    PodObj,
    World,
)
from kvsched.controller.selector import Selector, SelectorError, parse_selector

__all__ = [
    "Blocked",
    "Decision",
    "DecisionConfig",
    "DeploymentObj",
    "DeploymentPatch",
    "Event",
    "EventTarget",
    "Eviction",
    "ModelServingObj",
    "NodeObj",
    "ObjectKey",
    "OwnerRef",
    "Planner",
    "PodObj",
    "Selector",
    "SelectorError",
    "StatusWrite",
    "World",
    "decide",
    "parse_selector",
]
