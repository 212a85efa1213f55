"""Natural order of names, so that `gpu-2` comes before `gpu-10`: the one sort key every printed or written plan uses.

Called by: `kvsched.cluster_file` (the GPUs a plan is made from), `kvsched.plan_output` (table, summaries, JSON),
`kvsched.plot`.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from kvsched.packer import GpuId

# ASCII digits only: str.isdigit also accepts superscripts such as "²", which int() rejects.
_DIGIT_RUNS = re.compile(r"([0-9]+)")

NaturalKey = tuple[tuple[str | int, ...], str]


def natural_key(name: str) -> NaturalKey:
    """Sort key: `name` split into text and number runs, numbers compared by value, text case-insensitively.

    Text and numbers alternate (text first, possibly empty), so two keys never compare a str with an int.
    Names equal under that rule ("gpu-7", "gpu-007", "GPU-7") are ordered by the name itself, so the order is
    total and deterministic. O(len(name)).
    """
    parts = _DIGIT_RUNS.split(name)
    runs = tuple(int(part) if k % 2 else part.casefold() for k, part in enumerate(parts))
    return runs, name


def gpu_key(gpu: GpuId) -> tuple[NaturalKey, int]:
    """Sort key of a GPU: node name in natural order, then device index."""
    return natural_key(gpu.node), gpu.index
