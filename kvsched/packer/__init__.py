"""The retuning packer: a pure library that places LLM replicas on GPUs to minimise the worst KVPR.

Entry point: `solve(models, gpus, current=..., planned=..., options=..., clock=...) -> Plan` (module
`planner`), for a fresh plan and a re-plan alike. No Kubernetes, no I/O, no globals: plain data in, plain data out.
Callers: the CLI, the controller, the benchmark.
"""

from kvsched.packer.domain import (
    UNPLACED_CAUSES,
    Gpu,
    GpuId,
    GpuUsage,
    MigrationStep,
    Model,
    Placement,
    Plan,
    SearchStats,
    Slot,
    Unplaced,
    UnplacedCause,
)
from kvsched.packer.errors import InvalidInput
from kvsched.packer.options import PackOptions
from kvsched.packer.planner import solve
from kvsched.packer.progress import Progress, ProgressCallback

__all__ = [
    "UNPLACED_CAUSES",
    "Gpu",
    "GpuId",
    "GpuUsage",
    "InvalidInput",
    "MigrationStep",
    "Model",
    "PackOptions",
    "Placement",
    "Plan",
    "Progress",
    "ProgressCallback",
    "SearchStats",
    "Slot",
    "Unplaced",
    "UnplacedCause",
    "solve",
]
