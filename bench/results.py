"""What the benchmarks report, shared by the suites: targets with their status, gaps in %, plain-text tables
and figures, and JSON (which has no inf or NaN).

Figures only: nothing here measures or asserts.
Called by: bench/run.py, bench/churn.py.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence


@dataclass(frozen=True)
class Target:
    """A goal from the issue next to the figure it is judged on; status is PASS, MISS or "not run"."""

    name: str
    measured: str
    status: str


def verdict(ok: bool) -> str:
    """A target's status for a figure that was measured."""
    return "PASS" if ok else "MISS"


def gap_pct(value: float, reference: float) -> float:
    """How far `value` is above `reference`, in % (0 when both are 0, inf when only the reference is)."""
    if reference <= 0:
        return 0.0 if value <= 0 else math.inf
    return (value / reference - 1.0) * 100.0


def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    """Columns padded to their widest cell: the first left-aligned, the rest right-aligned."""
    widths = [max(len(str(h)), *(len(r[c]) for r in rows)) for c, h in enumerate(headers)]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(cell.ljust(w) if c == 0 else cell.rjust(w)
                         for c, (cell, w) in enumerate(zip(cells, widths))).rstrip()

    return [line(headers), line(["-" * w for w in widths]), *(line(r) for r in rows)]


def figure(value: float | None, fmt: str = ".3f") -> str:
    """A number for a table cell: "-" when missing (None, NaN), "inf" when infinite."""
    if value is None or math.isnan(value):
        return "-"
    return "inf" if math.isinf(value) else format(value, fmt)


def jsonable(value: object) -> object:
    """`value` (dicts, lists, scalars) with non-finite floats as None: JSON has no inf or NaN."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: jsonable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [jsonable(v) for v in value]
    return value


def write_json(report: Any, path: Path, *, indent: int = 1) -> None:
    """Every figure of `report` (a dataclass instance) as JSON at `path`, creating its directory."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(jsonable(dataclasses.asdict(report)), indent=indent) + "\n")
