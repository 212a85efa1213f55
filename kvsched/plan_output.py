"""Render a packer `Plan` for people and programs: the JSON document of DESIGN.md and a plain-text table.

JSON conventions: memory values are GiB as numbers (`memory`, `usedMemory`; rounded to 3 decimals) and the
document says so in `"memoryUnit": "GiB"`; times are seconds; an infinite KVPR or gap is `null` (JSON has no
inf). `maxKVPR`, `lowerBound`, `nextMoveGain` and `memoryFraction` keep full float precision, per-GPU `kvpr`
keeps 6 significant digits. Called by: `kvsched.cli` (`plan --output`, the table on stdout).
"""

from __future__ import annotations

import math
from typing import Any

from kvsched.packer import Plan

MEMORY_DECIMALS = 3
KVPR_SIGNIFICANT_DIGITS = 6
# Beyond this many characters the models column is cut and ends with "+N more".
MODELS_COLUMN_WIDTH = 60
# The table lists at most this many migration steps; the JSON has them all.
STEPS_SHOWN = 40


def plan_to_json(plan: Plan) -> dict[str, Any]:
    """The DESIGN.md output document plus gapPercent, keptCurrent, moves, nextMoveGain, the ordered migration
    steps, each unplaced replica's machine-readable cause, and per-GPU memory. O(plan size)."""
    return {
        "maxKVPR": _finite_or_none(plan.max_kvpr),
        "lowerBound": _finite_or_none(plan.lower_bound),
        "gapPercent": _finite_or_none(round(plan.gap_ratio * 100.0, 3)),
        "retunes": plan.retunes,
        "solveSeconds": round(plan.solve_seconds, 6),
        "keptCurrent": plan.kept_current,
        "moves": plan.moves,
        "nextMoveGain": plan.next_move_gain,
        "memoryUnit": "GiB",
        "placements": [
            {
                "model": p.model,
                "replica": p.replica,
                "node": p.gpu.node,
                "gpu": p.gpu.index,
                "memoryFraction": p.memory_fraction,
            }
            for p in plan.placements
        ],
        "gpus": [
            {
                "node": g.gpu.node,
                "gpu": g.gpu.index,
                "kvpr": _finite_or_none(round_significant(g.kvpr, KVPR_SIGNIFICANT_DIGITS)),
                "memory": round(g.memory_gib, MEMORY_DECIMALS),
                "usedMemory": round(g.used_memory_gib, MEMORY_DECIMALS),
                "models": list(g.models),
            }
            for g in plan.gpus
        ],
        "unplaced": [{"model": u.model, "replica": u.replica, "cause": u.cause, "reason": u.reason}
                     for u in plan.unplaced],
        "steps": [
            {
                "model": m.model,
                "replica": m.replica,
                "fromNode": m.source.node if m.source is not None else None,
                "fromGpu": m.source.index if m.source is not None else None,
                "toNode": m.target.node,
                "toGpu": m.target.index,
                "stopFirst": m.stop_first,
            }
            for m in plan.steps
        ],
    }


def plan_to_table(plan: Plan) -> str:
    """A table with one row per GPU, then unplaced replicas with reasons, the migration steps when replicas move,
    then a summary block. Ends with \\n."""
    header = ("NODE", "GPU", "MODELS", "MEMORY", "KVPR")
    rows = [
        (
            g.gpu.node,
            str(g.gpu.index),
            shorten_models(g.models, MODELS_COLUMN_WIDTH),
            format_memory(g.used_memory_gib, g.memory_gib),
            format_kvpr(g.kvpr),
        )
        for g in plan.gpus
    ]
    widths = [max(len(r[c]) for r in [header, *rows]) for c in range(len(header))]
    right_aligned = {1, 3, 4}
    lines = []
    for row in [header, *rows]:
        cells = [cell.rjust(w) if c in right_aligned else cell.ljust(w) for c, (cell, w) in enumerate(zip(row, widths))]
        lines.append("  ".join(cells).rstrip())
    if plan.unplaced:
        lines.append("")
        lines.append(f"UNPLACED ({len(plan.unplaced)} replica(s)):")
        for u in plan.unplaced:
            lines.append(f"  {u.model} replica {u.replica}: {u.reason}")
    if plan.moves:
        lines.append("")
        lines.extend(step_lines(plan))
    lines.append("")
    lines.extend(summary_lines(plan))
    return "\n".join(lines) + "\n"


def step_lines(plan: Plan) -> list[str]:
    """`STEPS (N):` then one numbered line per step in order (at most STEPS_SHOWN, then "... +K more")."""
    lines = [f"STEPS ({len(plan.steps)}, in order):"]
    for k, m in enumerate(plan.steps[:STEPS_SHOWN], start=1):
        source = "start" if m.source is None else f"{m.source} ->"
        how = " (stop the old one first)" if m.stop_first else ""
        lines.append(f"  {k}. {m.model} replica {m.replica}: {source} {m.target}{how}")
    if len(plan.steps) > STEPS_SHOWN:
        lines.append(f"  ... +{len(plan.steps) - STEPS_SHOWN} more (see --output)")
    return lines


def summary_lines(plan: Plan) -> list[str]:
    """The summary block: max KVPR, lower bound, gap, retunes, placed/unplaced, steps, solve time."""
    total = len(plan.placements) + len(plan.unplaced)
    steps = f"{len(plan.steps)} ({plan.moves} moved, {len(plan.steps) - plan.moves} newly placed)"
    if plan.kept_current:
        steps += " (kept the running placement: within the stability threshold)"
    lines = [
        f"max KVPR:     {format_kvpr(plan.max_kvpr)}",
        f"lower bound:  {format_kvpr(plan.lower_bound)}",
        f"gap:          {format_gap(plan.gap_ratio)}",
        f"retunes:      {plan.retunes}",
        f"placed:       {len(plan.placements)}/{total} replicas",
        f"steps:        {steps}",
    ]
    if plan.next_move_gain > 0:
        lines.append(f"next move:    more moves would lower the max KVPR by {format_kvpr(plan.next_move_gain)} "
                     "(max migrations reached)")
    lines.append(f"solve time:   {plan.solve_seconds:.3f} s")
    return lines


def format_kvpr(kvpr: float) -> str:
    """6 significant digits, "inf" when the weights fill a loaded GPU."""
    return "inf" if math.isinf(kvpr) else f"{kvpr:.{KVPR_SIGNIFICANT_DIGITS}g}"


def format_gap(gap_ratio: float) -> str:
    """The gap to the lower bound in percent; "inf" when the bound is 0 but the plan is not."""
    return "inf" if math.isinf(gap_ratio) else f"{gap_ratio * 100.0:.2f}%"


def format_memory(used_gib: float, total_gib: float) -> str:
    """`56/80Gi`: used weights over GPU memory, GiB, at most one decimal, no trailing ".0"."""
    return f"{_gib(used_gib)}/{_gib(total_gib)}Gi"


def shorten_models(models: tuple[str, ...], width: int) -> str:
    """Comma-joined names; when longer than `width`, as many as fit followed by "+N more". "-" for none."""
    if not models:
        return "-"
    joined = ", ".join(models)
    if len(joined) <= width:
        return joined
    kept: list[str] = []
    for name in models:
        left_after = len(models) - len(kept) - 1
        if len(", ".join([*kept, name, f"+{left_after} more"])) > width:
            break
        kept.append(name)
    rest = len(models) - len(kept)
    if not kept:  # even the first name is too long: cut it
        return models[0][: max(width - 12, 8)] + "…" + (f", +{rest - 1} more" if rest > 1 else "")
    return ", ".join([*kept, f"+{rest} more"])


def round_significant(value: float, digits: int) -> float:
    """`value` rounded to `digits` significant digits (inf and 0 unchanged)."""
    if value == 0 or not math.isfinite(value):
        return value
    return float(f"{value:.{digits}g}")


def _gib(value: float) -> str:
    text = f"{value:.1f}"
    return text[:-2] if text.endswith(".0") else text


def _finite_or_none(value: float) -> float | None:
    return value if math.isfinite(value) else None
