"""Draw a plan as a bar chart: one bar per GPU with its models' weights stacked and its KVPR marked.

Bars are GiB of memory (left axis): a coloured segment per model, the free memory (the KV cache) as a light
segment on top. KVPR is on the right axis: a dot per GPU, a line at the plan's max KVPR and one at the lower
bound. The format follows the file suffix (.svg or .png). matplotlib is imported inside `write_plot` (Agg
backend) so that importing this module, and `kvsched --help`, stay fast.
Bars are in natural order of node name (`gpu-2` before `gpu-10`), then GPU index.
Called by: `kvsched.cli` (`plan --plot`).
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

from kvsched.natural_order import gpu_key
from kvsched.packer import Model, Plan
from kvsched.plan_output import format_kvpr

if TYPE_CHECKING:
    from matplotlib.artist import Artist
    from matplotlib.axes import Axes

PLOT_SUFFIXES = (".svg", ".png")
# With more models than this a legend would hide the bars; segments are labelled inside the bars instead.
MAX_LEGEND_MODELS = 12
PNG_DPI = 120
BAR_WIDTH = 0.8
LABEL_FONT_PT = 6.5


def write_plot(plan: Plan, models: Sequence[Model], file: Path) -> None:
    """Render `plan` to `file` (.svg or .png). `models` gives each model's size (GiB) for the segments.

    Raises ValueError for another suffix and OSError when the file cannot be written. O(GPUs * models on each).
    """
    suffix = file.suffix.lower()
    if suffix not in PLOT_SUFFIXES:
        raise ValueError(f"plot file must end in {' or '.join(PLOT_SUFFIXES)}, got {file.name!r}")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plan = dataclasses.replace(plan, gpus=tuple(sorted(plan.gpus, key=lambda g: gpu_key(g.gpu))))
    size_gib = {m.name: m.size_gib for m in models}
    names_in_plan = sorted({name for g in plan.gpus for name in g.models})
    palette = _palette(len(names_in_plan))
    colour = {name: palette[i % len(palette)] for i, name in enumerate(names_in_plan)}
    use_legend = len(names_in_plan) <= MAX_LEGEND_MODELS

    n_gpus = len(plan.gpus)
    width_in = max(8.0, 0.42 * n_gpus + 2.5)
    height_in = 5.5 if use_legend else 7.0
    fig, ax = plt.subplots(figsize=(width_in, height_in))
    ax_kvpr = ax.twinx()
    top_gib = max((g.memory_gib for g in plan.gpus), default=1.0) * 1.08
    ax.set_ylim(0, top_gib)
    # Points per GiB on the memory axis: decides whether a segment is tall enough for its label.
    points_per_gib = height_in * 72 * 0.7 / top_gib

    x = list(range(n_gpus))
    for xi, g in zip(x, plan.gpus):
        bottom = 0.0
        for name in g.models:
            height = size_gib[name]
            ax.bar(xi, height, BAR_WIDTH, bottom=bottom, color=colour[name], edgecolor="white", linewidth=0.6,
                   label=name if use_legend else None)
            label = "" if use_legend else fit_label(name, height * points_per_gib)
            if label:
                ax.text(xi, bottom + height / 2, label, rotation=90, ha="center", va="center",
                        fontsize=LABEL_FONT_PT, color=_text_colour(colour[name]), clip_on=True)
            bottom += height
        free = max(g.memory_gib - bottom, 0.0)
        ax.bar(xi, free, BAR_WIDTH, bottom=bottom, color="#eeeeee", edgecolor="#bbbbbb", linewidth=0.6,
               label="free (KV cache)" if use_legend else None)

    _draw_kvpr(ax_kvpr, plan, x)

    ax.set_xticks(x)
    ax.set_xticklabels([str(g.gpu) for g in plan.gpus], rotation=60 if n_gpus > 8 else 0,
                       ha="right" if n_gpus > 8 else "center", fontsize=8)
    ax.set_xlim(-0.6, n_gpus - 0.4)
    ax.set_ylabel("memory (GiB): model weights, free = KV cache")
    ax_kvpr.set_ylabel("KVPR (load / free GiB)")
    title = (f"kvsched plan: max KVPR {format_kvpr(plan.max_kvpr)}, lower bound {format_kvpr(plan.lower_bound)}, "
             f"{len(plan.placements)} replicas on {n_gpus} GPUs"
             + (f", {len(plan.unplaced)} unplaced" if plan.unplaced else ""))
    handles, labels = _dedup_legend(ax, ax_kvpr, use_legend)
    if use_legend:  # models and markers in one column right of the chart
        ax.set_title(title, fontsize=10)
        fig.legend(handles, labels, loc="upper left", bbox_to_anchor=(1.0, 0.95), fontsize=8, frameon=False)
    else:  # models are labelled in the bars; the markers go in a row between title and chart
        ax.set_title(title, fontsize=10, pad=20)
        ax.legend(handles, labels, loc="lower left", bbox_to_anchor=(0.0, 1.0), ncol=len(labels), fontsize=8,
                  frameon=False, borderaxespad=0.2)
    fig.tight_layout()
    try:
        fig.savefig(file, format=suffix[1:], dpi=PNG_DPI, bbox_inches="tight")
    finally:
        plt.close(fig)


def fit_label(name: str, height_pt: float) -> str:
    """`name` as it fits a vertical segment `height_pt` points tall: whole, cut with "…", or "" when too short."""
    fits_chars = int((height_pt - 4) / (LABEL_FONT_PT * 0.6))
    if fits_chars >= len(name):
        return name
    if fits_chars >= 6:
        return name[: fits_chars - 1] + "…"
    return ""


def _draw_kvpr(ax_kvpr: Axes, plan: Plan, x: list[int]) -> None:
    """Dots for finite KVPRs, a triangle at the top for inf, and the max / lower-bound lines."""
    finite = [g.kvpr for g in plan.gpus if math.isfinite(g.kvpr)]
    kvpr_top = max([*finite, plan.lower_bound if math.isfinite(plan.lower_bound) else 0.0], default=0.0)
    kvpr_top = kvpr_top * 1.15 if kvpr_top > 0 else 1.0
    ax_kvpr.set_ylim(0, kvpr_top)
    xs = [xi for xi, g in zip(x, plan.gpus) if math.isfinite(g.kvpr)]
    ys = [g.kvpr for g in plan.gpus if math.isfinite(g.kvpr)]
    ax_kvpr.plot(xs, ys, "o", color="black", markeredgecolor="white", markersize=6, zorder=5,
                 label="KVPR of the GPU")
    inf_x = [xi for xi, g in zip(x, plan.gpus) if math.isinf(g.kvpr)]
    if inf_x:
        ax_kvpr.plot(inf_x, [kvpr_top * 0.97] * len(inf_x), "^", color="red", markersize=7, zorder=5,
                     label="KVPR inf (no room for KV cache)")
    if math.isfinite(plan.max_kvpr) and plan.max_kvpr > 0:
        ax_kvpr.axhline(plan.max_kvpr, color="crimson", linestyle="--", linewidth=1,
                        label=f"max KVPR {format_kvpr(plan.max_kvpr)}")
    if math.isfinite(plan.lower_bound) and plan.lower_bound > 0:
        ax_kvpr.axhline(plan.lower_bound, color="seagreen", linestyle=":", linewidth=1.2,
                        label=f"lower bound {format_kvpr(plan.lower_bound)}")


def _dedup_legend(ax: Axes, ax_kvpr: Axes, use_legend: bool) -> tuple[list[Artist], list[str]]:
    """One legend entry per label across both axes; only the KVPR entries when models are labelled in bars."""
    handles: list[Artist] = []
    labels: list[str] = []
    sources = [ax, ax_kvpr] if use_legend else [ax_kvpr]
    for source in sources:
        for handle, label in zip(*source.get_legend_handles_labels()):
            if label not in labels:
                handles.append(handle)
                labels.append(label)
    return handles, labels


def _text_colour(background: tuple[float, float, float, float]) -> str:
    """Black on light segments, white on dark ones (relative luminance, ITU-R BT.709)."""
    r, g, b, _ = background
    return "black" if 0.2126 * r + 0.7152 * g + 0.0722 * b > 0.45 else "white"


def _palette(n: int) -> list[tuple[float, float, float, float]]:
    """Up to 60 distinct colours; more models reuse them in order.

    tab20 holds 10 dark/light pairs of one hue: the dark ones come first so neighbouring models do not share a
    hue while there are at most 10 of them.
    """
    from matplotlib import colormaps

    names = ["tab20"] if n <= 20 else ["tab20", "tab20b", "tab20c"]
    colours: list[tuple[float, float, float, float]] = []
    for cmap_name in names:
        cmap = colormaps[cmap_name]
        for i in [*range(0, 20, 2), *range(1, 20, 2)]:
            r, g, b, a = cmap(i)
            colours.append((float(r), float(g), float(b), float(a)))
    return colours
