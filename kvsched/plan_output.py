"""Render a packer `Plan` for people and programs: the JSON document of DESIGN.md and plain-text views of it.

Views (`plan_to_table(plan, view=...)`): one row per GPU ("table"), one row per node ("nodes"), or the N GPUs
with the highest KVPR ("top"); "auto" is the table up to TABLE_MAX_GPUS GPUs and the node summary above. Nodes
and GPUs are always listed in natural order of node name (`gpu-2` before `gpu-10`, kvsched.natural_order), then
GPU index; so are `gpus` and `placements` in the JSON (placements on one GPU in model order).

JSON conventions: memory values are GiB as numbers (`memory`, `usedMemory`, `reserve`, `engineMemory`,
`kvMemory`; rounded to 3 decimals) and the document says so in `"memoryUnit": "GiB"`; times are seconds; an
infinite KVPR or gap is `null` (JSON has no inf). `maxKVPR`, `lowerBound`, `nextMoveGain` and `memoryFraction`
keep full float precision, per-GPU `kvpr` keeps 6 significant digits. Per GPU, memory = usedMemory (weights) +
reserve + engineMemory (engine overheads and CUDA contexts) + kvMemory (what is left for KV cache, shared by
its replicas as their placements' kvMemory). Called by: `kvsched.cli` (`plan --output`, the table on stdout).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, Mapping, Sequence

from kvsched.natural_order import gpu_key, natural_key

if TYPE_CHECKING:  # types only: `kvsched --help` reads the view names here without loading the packer
    from kvsched.packer import GpuId, GpuUsage, Plan

# KV cache (GiB) of each model's replica on a GPU, for the table's models column.
KvByModel = Mapping[tuple["GpuId", str], float]

MEMORY_DECIMALS = 3
KVPR_SIGNIFICANT_DIGITS = 6
# Beyond this many characters the models column (each model with its KV cache) is cut and ends with "+N more".
MODELS_COLUMN_WIDTH = 60
# The node summary's models column is narrower: a node holds dozens of models, and its rows should fit 80 columns.
NODE_MODELS_COLUMN_WIDTH = 40
# The table lists at most this many migration steps; the JSON has them all.
STEPS_SHOWN = 40
View = Literal["auto", "table", "nodes", "top"]
VIEWS: tuple[View, ...] = ("auto", "table", "nodes", "top")
# "auto" prints one row per GPU up to this many GPUs (eight 8-GPU nodes fit a screen), one row per node above.
TABLE_MAX_GPUS = 64
# GPUs listed by the "top" view unless told otherwise.
DEFAULT_TOP = 20


def plan_to_json(plan: Plan) -> dict[str, Any]:
    """The DESIGN.md output document plus gapPercent, keptCurrent, moves, nextMoveGain, the ordered migration
    steps, each unplaced replica's machine-readable cause, per-GPU memory (reserve, engines, KV) and each
    placement's KV memory. O(plan size)."""
    return {
        "maxKVPR": _finite_or_none(plan.max_kvpr),
        "lowerBound": _finite_or_none(plan.lower_bound),
        "gapPercent": _finite_or_none(round(plan.gap_ratio * 100.0, 3)),
        "retunes": plan.retunes,
        "solveSeconds": round(plan.solve_seconds, 6),
        "keptCurrent": plan.kept_current,
        "moves": plan.moves,
        "shareRestarts": plan.resizes,
        "nextMoveGain": plan.next_move_gain,
        "memoryUnit": "GiB",
        "placements": [
            {
                "model": p.model,
                "replica": p.replica,
                "node": p.gpu.node,
                "gpu": p.gpu.index,
                "memoryFraction": p.memory_fraction,
                "kvMemory": round(p.kv_memory_gib, MEMORY_DECIMALS),
            }
            for p in sorted(plan.placements, key=lambda p: gpu_key(p.gpu))
        ],
        "gpus": [
            {
                "node": g.gpu.node,
                "gpu": g.gpu.index,
                "kvpr": _finite_or_none(round_significant(g.kvpr, KVPR_SIGNIFICANT_DIGITS)),
                "memory": round(g.memory_gib, MEMORY_DECIMALS),
                "usedMemory": round(g.used_memory_gib, MEMORY_DECIMALS),
                "reserve": round(g.reserve_gib, MEMORY_DECIMALS),
                "engineMemory": round(g.engine_gib, MEMORY_DECIMALS),
                "kvMemory": round(g.kv_memory_gib, MEMORY_DECIMALS),
                "models": list(g.models),
            }
            for g in sorted(plan.gpus, key=lambda g: gpu_key(g.gpu))
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
                "kind": "resize" if m.is_resize else "move" if m.is_move else "start",
            }
            for m in plan.steps
        ],
    }


def choose_view(view: View, n_gpus: int) -> View:
    """The view "auto" stands for with `n_gpus` GPUs: "table" up to TABLE_MAX_GPUS, "nodes" above; others as given."""
    if view != "auto":
        return view
    return "table" if n_gpus <= TABLE_MAX_GPUS else "nodes"


def plan_to_table(plan: Plan, *, view: View = "table", top: int = DEFAULT_TOP) -> str:
    """The chosen view (one row per GPU, per node, or the `top` hottest GPUs; see choose_view), then unplaced
    replicas with reasons, the migration steps when replicas move, then a summary block. Ends with \\n.
    O(GPUs log GPUs)."""
    chosen = choose_view(view, len(plan.gpus))
    gpus = sorted(plan.gpus, key=lambda g: gpu_key(g.gpu))
    kv = {(p.gpu, p.model): p.kv_memory_gib for p in plan.placements}
    if chosen == "nodes":
        nodes = node_summaries(gpus)
        lines = [f"NODES ({len(nodes)}, {len(gpus)} GPUs; --view table lists every GPU, --top N the hottest):",
                 *node_table_lines(nodes)]
    elif chosen == "top":
        hottest = hottest_gpus(gpus, top)
        lines = [f"HOTTEST {len(hottest)} OF {len(gpus)} GPUs BY KVPR (--view table lists every GPU):",
                 *gpu_table_lines(hottest, kv)]
    else:
        lines = gpu_table_lines(gpus, kv)
    if plan.unplaced:
        lines.append("")
        lines.append(f"UNPLACED ({len(plan.unplaced)} replica(s)):")
        for u in plan.unplaced:
            lines.append(f"  {u.model} replica {u.replica}: {u.reason}")
    if plan.restarts:
        lines.append("")
        lines.extend(step_lines(plan))
    lines.append("")
    lines.extend(summary_lines(plan))
    return "\n".join(lines) + "\n"


def gpu_table_lines(gpus: Sequence[GpuUsage], kv: KvByModel | None = None) -> list[str]:
    """Header and one row per GPU, in the order given: node, GPU, models, weights/total memory, reserve, KVPR.

    With `kv`, each model is followed by its replica's KV cache in GiB and every model is listed: a GPU whose
    models do not fit MODELS_COLUMN_WIDTH continues on the next lines (only the models column filled).
    Without, the models column is cut with "+N more".
    """
    header = ("NODE", "GPU", "MODELS (KV CACHE GiB)" if kv is not None else "MODELS", "MEMORY", "RESERVE", "KVPR")
    rows: list[tuple[str, ...]] = [header]
    for g in gpus:
        if kv is None:
            models = [shorten_models(g.models, MODELS_COLUMN_WIDTH)]
        else:
            models = wrap_models([f"{name} ({format_kv(kv.get((g.gpu, name), 0.0))})" for name in g.models],
                                 MODELS_COLUMN_WIDTH)
        rows.append((g.gpu.node, str(g.gpu.index), models[0], format_memory(g.used_memory_gib, g.memory_gib),
                     f"{_gib(g.reserve_gib)}Gi", format_kvpr(g.kvpr)))
        rows.extend(("", "", more, "", "", "") for more in models[1:])
    return _aligned(rows, right_aligned={1, 3, 4, 5})


def wrap_models(models: Sequence[str], width: int) -> list[str]:
    """Comma-joined names in lines of at most `width` characters (a name longer than that gets a line of its
    own); every line but the last ends with a comma. ["-"] for none."""
    if not models:
        return ["-"]
    lines: list[list[str]] = [[]]
    for name in models:
        if lines[-1] and len(", ".join([*lines[-1], name])) + 1 > width:
            lines.append([])
        lines[-1].append(name)
    return [", ".join(line) + ("," if k < len(lines) - 1 else "") for k, line in enumerate(lines)]


@dataclass(frozen=True)
class NodeSummary:
    """One node of a plan: its GPUs, the distinct models on them (first seen first), summed weights and memory
    (GiB), and the highest KVPR among its GPUs."""

    node: str
    gpus: int
    models: tuple[str, ...]
    used_memory_gib: float
    memory_gib: float
    max_kvpr: float


def node_summaries(gpus: Sequence[GpuUsage]) -> list[NodeSummary]:
    """One summary per node, nodes in natural order. O(GPUs log GPUs + placements)."""
    by_node: dict[str, list[GpuUsage]] = {}
    for g in gpus:
        by_node.setdefault(g.gpu.node, []).append(g)
    return [
        NodeSummary(
            node=node,
            gpus=len(members),
            models=tuple(dict.fromkeys(name for g in members for name in g.models)),
            used_memory_gib=sum(g.used_memory_gib for g in members),
            memory_gib=sum(g.memory_gib for g in members),
            max_kvpr=max(g.kvpr for g in members),
        )
        for node, members in sorted(by_node.items(), key=lambda item: natural_key(item[0]))
    ]


def node_table_lines(nodes: Sequence[NodeSummary]) -> list[str]:
    """Header and one row per node: node, GPUs, models, used/total memory, max KVPR on the node."""
    header = ("NODE", "GPUS", "MODELS", "MEMORY", "MAX KVPR")
    rows = [
        (
            n.node,
            str(n.gpus),
            shorten_models(n.models, NODE_MODELS_COLUMN_WIDTH),
            format_memory(n.used_memory_gib, n.memory_gib),
            format_kvpr(n.max_kvpr),
        )
        for n in nodes
    ]
    return _aligned([header, *rows], right_aligned={1, 3, 4})


def hottest_gpus(gpus: Sequence[GpuUsage], n: int) -> list[GpuUsage]:
    """The `n` GPUs with the highest KVPR (all of them when fewer), highest first; ties in natural GPU order.

    Raises ValueError for n < 1. O(GPUs log GPUs).
    """
    if n < 1:
        raise ValueError(f"the number of GPUs to list must be at least 1, got {n}")
    return sorted(gpus, key=lambda g: (-g.kvpr, gpu_key(g.gpu)))[:n]


def _aligned(rows: Sequence[tuple[str, ...]], right_aligned: set[int]) -> list[str]:
    """Columns padded to their widest cell, two spaces apart, trailing blanks cut."""
    widths = [max(len(r[c]) for r in rows) for c in range(len(rows[0]))]
    return ["  ".join(cell.rjust(w) if c in right_aligned else cell.ljust(w)
                      for c, (cell, w) in enumerate(zip(row, widths))).rstrip()
            for row in rows]


def step_lines(plan: Plan) -> list[str]:
    """`STEPS (N):` then one numbered line per step in order (at most STEPS_SHOWN, then "... +K more")."""
    lines = [f"STEPS ({len(plan.steps)}, in order):"]
    for k, m in enumerate(plan.steps[:STEPS_SHOWN], start=1):
        if m.is_resize:
            lines.append(f"  {k}. {m.model} replica {m.replica}: restart on {m.target} with its planned memory share")
            continue
        source = "start" if m.source is None else f"{m.source} ->"
        how = " (stop the old one first)" if m.stop_first else ""
        lines.append(f"  {k}. {m.model} replica {m.replica}: {source} {m.target}{how}")
    if len(plan.steps) > STEPS_SHOWN:
        lines.append(f"  ... +{len(plan.steps) - STEPS_SHOWN} more (see --output)")
    return lines


def summary_lines(plan: Plan) -> list[str]:
    """The summary block: max KVPR, lower bound, gap, retunes, placed/unplaced, memory left for KV cache and the
    headroom beside it, steps, solve time."""
    total = len(plan.placements) + len(plan.unplaced)
    steps = f"{len(plan.steps)} ({plan.moves} moved, {len(plan.steps) - plan.restarts} newly placed)"
    if plan.resizes:
        steps = (f"{len(plan.steps)} ({plan.moves} moved, {plan.resizes} restarted in place for their memory share, "
                 f"{len(plan.steps) - plan.restarts} newly placed)")
    if plan.kept_current:
        steps += " (running replicas kept: no plan found beats that by more than the stability threshold)"
    reserve = sum(g.reserve_gib for g in plan.gpus)
    engines = sum(g.engine_gib for g in plan.gpus)
    kv = sum(g.kv_memory_gib for g in plan.gpus)
    lines = [
        f"max KVPR:     {format_kvpr(plan.max_kvpr)}",
        f"lower bound:  {format_kvpr(plan.lower_bound)}",
        f"gap:          {format_gap(plan.gap_ratio)}",
        f"retunes:      {plan.retunes}",
        f"placed:       {len(plan.placements)}/{total} replicas",
        f"memory:       {_gib(kv)}Gi for KV cache; {_gib(reserve)}Gi reserved on {len(plan.gpus)} GPUs, "
        f"{_gib(engines)}Gi engine overheads and CUDA contexts",
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


def format_kv(gib: float) -> str:
    """A replica's KV cache in GiB: one decimal from 1 GiB up ("21.3"), two below ("0.05"), no trailing zeros."""
    text = f"{gib:.1f}" if gib >= 1 else f"{gib:.2f}"
    return text.rstrip("0").rstrip(".") if "." in text else text


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
