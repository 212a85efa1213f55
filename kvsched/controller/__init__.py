"""The controller's decisions: a snapshot of the cluster in, the smallest set of writes out (no cluster needed).

`decide(world, config, planner, now=...)` is the core: it takes a `kvsched.api.objects.World` and returns a
`Decision` made of `kvsched.api.records`; kvsched.k8s reads the cluster into the World and carries out the writes,
kvsched.runtime runs the loop. See docs/controller.md.
"""

from kvsched.controller.config import DecisionConfig
from kvsched.controller.decide import Decision, Planner, decide
from kvsched.controller.migrations import Blocked
from kvsched.controller.selector import Selector, SelectorError, parse_selector

__all__ = [
    "Blocked",
    "Decision",
    "DecisionConfig",
    "Planner",
    "Selector",
    "SelectorError",
    "decide",
    "parse_selector",
]
