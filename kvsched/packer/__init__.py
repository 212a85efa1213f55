"""The retuning packer: a pure library that places LLM replicas on GPUs to minimise the worst KVPR.

Entry point: `solve(models, gpus, current=..., options=..., clock=...) -> Plan`. No Kubernetes, no I/O, no
globals: plain data in, plain data out. Callers: the CLI, the controller, the benchmark.
"""

from kvsched.packer.domain import (
    Gpu,
    GpuId,
    GpuUsage,
    Migration,
    Model,
    Placement,
    Plan,
    SearchStats,
    Slot,
    Unplaced,
)
from kvsched.packer.errors import InvalidInput
from kvsched.packer.options import PackOptions
from kvsched.packer.solve import solve

__all__ = [
    "Gpu",
    "GpuId",
    "GpuUsage",
    "InvalidInput",
    "Migration",
    "Model",
    "PackOptions",
    "Placement",
    "Plan",
    "SearchStats",
    "Slot",
    "Unplaced",
    "solve",
]
