"""`kvsched plan` on big clusters: natural node order, the views (table, nodes, top), the progress display, and
the packer's progress callback that feeds it."""

from __future__ import annotations

import io
import json
import re
from pathlib import Path
from typing import Any, Callable

import pytest

from kvsched.cluster_file import load_cluster_file
from kvsched.natural_order import gpu_key, natural_key
from kvsched.packer import Gpu, GpuId, GpuUsage, Model, PackOptions, Progress, Slot, solve
from kvsched.packer.progress import PROGRESS_INTERVAL_S
from kvsched.plan_output import TABLE_MAX_GPUS, choose_view, hottest_gpus, node_summaries, plan_to_json, plan_to_table
from kvsched.plot import write_plot
from kvsched.progress_line import ProgressLine, progress_text
from tests.cli.conftest import Run

NO_SEARCH = PackOptions(time_budget_s=0)


# --- natural order -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("names, expected", [
    pytest.param([], [], id="empty list"),
    pytest.param(["gpu-1"], ["gpu-1"], id="one name"),
    pytest.param(["a", ""], ["", "a"], id="empty name first"),
    pytest.param(["gpu-10", "gpu-2", "gpu-1"], ["gpu-1", "gpu-2", "gpu-10"], id="numbers by value"),
    pytest.param(["gpu-a10", "gpu-a", "gpu-a2", "gpu-"], ["gpu-", "gpu-a", "gpu-a2", "gpu-a10"],
                 id="equal prefixes: shorter first, then by number"),
    pytest.param(["gpu-7", "gpu-007", "gpu-08", "gpu-010"], ["gpu-007", "gpu-7", "gpu-08", "gpu-010"],
                 id="leading zeros: by value, equal values by the name"),
    pytest.param(["n10x10", "n2x10", "n10x2", "n2x9"], ["n2x9", "n2x10", "n10x2", "n10x10"],
                 id="mixed: every number run by value"),
    pytest.param(["10", "9", "b", "1a", "a1"], ["1a", "9", "10", "a1", "b"], id="digits first, text first"),
    pytest.param(["rack2-node10", "rack10-node1", "rack2-node9"], ["rack2-node9", "rack2-node10", "rack10-node1"],
                 id="two numbers: the first decides"),
    pytest.param(["Gpu-2", "gpu-10", "GPU-1"], ["GPU-1", "Gpu-2", "gpu-10"], id="case does not split the order"),
    pytest.param(["gpu-2", "GPU-2", "gpu-2"], ["GPU-2", "gpu-2", "gpu-2"], id="exact ties and case ties"),
    pytest.param(["n²", "n3", "n1"], ["n1", "n3", "n²"], id="only ASCII digits are numbers"),
    pytest.param(["node-99999999999999999999", "node-100"], ["node-100", "node-99999999999999999999"],
                 id="numbers longer than 64 bits"),
])
def test_natural_key_orders(names: list[str], expected: list[str]) -> None:
    assert sorted(names, key=natural_key) == expected
    assert sorted(reversed(names), key=natural_key) == expected  # a total order: input order does not matter


def test_gpu_key_orders_by_node_then_index() -> None:
    ids = [GpuId("gpu-10", 0), GpuId("gpu-2", 1), GpuId("gpu-2", 0), GpuId("gpu-1", 10), GpuId("gpu-1", 2)]
    assert sorted(ids, key=gpu_key) == [GpuId("gpu-1", 2), GpuId("gpu-1", 10), GpuId("gpu-2", 0), GpuId("gpu-2", 1),
                                        GpuId("gpu-10", 0)]


LEXICAL_NODES = ["gpu-1", "gpu-10", "gpu-2"]  # what a plain string sort gives
NATURAL_NODES = ["gpu-1", "gpu-2", "gpu-10"]


def _lexical_plan() -> tuple[list[Model], Any]:
    """A plan whose GPUs come in plain string order (as a caller other than the cluster file may pass them)."""
    models = [Model("a", 10, 1, 1, replicas=3), Model("b", 20, 4, 1, replicas=3)]
    gpus = [Gpu(node, 0, 80) for node in LEXICAL_NODES]
    return models, solve(models, gpus, options=NO_SEARCH)


def _table_nodes(text: str) -> list[str]:
    rows = text.split("\n\n")[0].splitlines()
    start = next(i for i, line in enumerate(rows) if line.startswith("NODE "))
    return [line.split()[0] for line in rows[start + 1:]]


@pytest.mark.parametrize("view", ["table", "nodes", "top"])
def test_every_view_lists_nodes_in_natural_order(view: str) -> None:
    _, plan = _lexical_plan()
    table = plan_to_table(plan, view=view, top=3)  # type: ignore[arg-type]
    nodes = _table_nodes(table)
    if view == "top":  # hottest first, ties in natural order
        assert nodes == [g.gpu.node for g in sorted(plan.gpus, key=lambda g: (-g.kvpr, gpu_key(g.gpu)))]
    else:
        assert nodes == NATURAL_NODES


def test_json_gpus_and_placements_are_in_natural_order() -> None:
    _, plan = _lexical_plan()
    document = plan_to_json(plan)
    assert [g["node"] for g in document["gpus"]] == NATURAL_NODES
    placement_nodes = [p["node"] for p in document["placements"]]
    assert placement_nodes == sorted(placement_nodes, key=natural_key)
    assert set(placement_nodes) == set(NATURAL_NODES)


def test_plot_draws_bars_in_natural_order(tmp_path: Path) -> None:
    models, plan = _lexical_plan()
    write_plot(plan, models, tmp_path / "plan.svg")
    labels = re.findall(r"<!-- (gpu-\d+/\d+) -->", (tmp_path / "plan.svg").read_text())
    assert labels == [f"{node}/0" for node in NATURAL_NODES]


def test_cluster_file_gpus_reach_the_packer_in_natural_order(run_cli: Callable[..., Run],
                                                              write_cluster: Callable[..., Path]) -> None:
    path = write_cluster({
        "nodes": [{"name": n, "gpus": 2, "gpuMemory": "80Gi"} for n in ["gpu-10", "gpu-9", "gpu-1"]],
        "models": [{"name": "a", "size": 10, "requestRate": 1, "sloSeconds": 1, "replicas": 6}],
        "options": {"timeBudgetSeconds": 0},
    })
    cluster = load_cluster_file(path)
    assert [str(g.id) for g in cluster.gpus] == ["gpu-1/0", "gpu-1/1", "gpu-9/0", "gpu-9/1", "gpu-10/0", "gpu-10/1"]
    result = run_cli("plan", str(path))
    assert result.code == 0, result.err
    assert _table_nodes(result.out) == ["gpu-1", "gpu-1", "gpu-9", "gpu-9", "gpu-10", "gpu-10"]


# --- views ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("requested, n_gpus, expected", [
    pytest.param("auto", 0, "table", id="auto, no GPUs: table"),
    pytest.param("auto", 1, "table", id="auto, one GPU: table"),
    pytest.param("auto", TABLE_MAX_GPUS, "table", id="auto, at the limit: table"),
    pytest.param("auto", TABLE_MAX_GPUS + 1, "nodes", id="auto, one GPU over: nodes"),
    pytest.param("auto", 8192, "nodes", id="auto, 8192 GPUs: nodes"),
    pytest.param("table", 8192, "table", id="table asked for: table whatever the size"),
    pytest.param("nodes", 1, "nodes", id="nodes asked for on a small cluster"),
    pytest.param("top", 3, "top", id="top asked for"),
])
def test_choose_view(requested: str, n_gpus: int, expected: str) -> None:
    assert choose_view(requested, n_gpus) == expected  # type: ignore[arg-type]


def _cluster_of(n_gpus: int, per_node: int = 8) -> dict[str, Any]:
    """n_gpus 80 GiB GPUs on nodes of `per_node` (the last may be short), two light models per GPU."""
    nodes = []
    for k, first in enumerate(range(0, n_gpus, per_node)):
        nodes.append({"name": f"node-{k}", "gpus": min(per_node, n_gpus - first), "gpuMemory": "80Gi"})
    models = [{"name": f"m{j}", "size": 8 + j % 5, "requestRate": 1 + j % 3, "sloSeconds": 1}
              for j in range(2 * n_gpus)]
    return {"nodes": nodes, "models": models, "options": {"timeBudgetSeconds": 0}}


@pytest.mark.parametrize("n_gpus, args, header, rows", [
    pytest.param(TABLE_MAX_GPUS, [], "NODE    GPU", TABLE_MAX_GPUS, id="64 GPUs: a row per GPU"),
    pytest.param(TABLE_MAX_GPUS + 1, [], "NODE    GPUS", 9, id="65 GPUs: a row per node (8 full, 1 short)"),
    pytest.param(TABLE_MAX_GPUS + 1, ["--view", "table"], "NODE    GPU ", TABLE_MAX_GPUS + 1,
                 id="65 GPUs, --view table: a row per GPU"),
    pytest.param(16, ["--view", "nodes"], "NODE    GPUS", 2, id="16 GPUs, --view nodes: a row per node"),
    pytest.param(16, ["--view", "top"], "NODE    GPU ", 16, id="--view top, fewer GPUs than the default 20"),
])
def test_view_selection_by_size(run_cli: Callable[..., Run], write_cluster: Callable[..., Path], tmp_path: Path,
                                n_gpus: int, args: list[str], header: str, rows: int) -> None:
    path = write_cluster(_cluster_of(n_gpus))
    result = run_cli("plan", str(path), "--output", str(tmp_path / "plan.json"), *args)
    assert result.code == 0, result.err
    assert header in result.out
    assert len(_table_nodes(result.out)) == rows
    document = json.loads((tmp_path / "plan.json").read_text())
    assert len(document["gpus"]) == n_gpus, "the JSON stays complete whatever the view"
    assert len(document["placements"]) == 2 * n_gpus


def test_node_summary_adds_up_its_gpus() -> None:
    models = [Model("big", 40, 2, 1), Model("small", 10, 1, 1, replicas=2)]
    gpus = [Gpu("n2", 0, 80), Gpu("n2", 1, 80), Gpu("n10", 0, 40)]
    plan = solve(models, gpus, options=NO_SEARCH)
    summaries = node_summaries(plan.gpus)
    assert [s.node for s in summaries] == ["n2", "n10"]
    for s in summaries:
        members = [g for g in plan.gpus if g.gpu.node == s.node]
        assert s.gpus == len(members)
        assert s.memory_gib == sum(g.memory_gib for g in members)
        assert s.used_memory_gib == pytest.approx(sum(g.used_memory_gib for g in members))
        assert s.max_kvpr == max(g.kvpr for g in members)
        assert set(s.models) == {name for g in members for name in g.models}
        assert len(s.models) == len(set(s.models)), "each model once per node"


@pytest.mark.parametrize("top, listed", [
    pytest.param("1", 1, id="one"),
    pytest.param("5", 5, id="fewer than the GPUs"),
    pytest.param("16", 16, id="exactly the GPUs"),
    pytest.param("1000", 16, id="more than the GPUs: all of them"),
])
def test_top_lists_the_hottest_gpus(run_cli: Callable[..., Run], write_cluster: Callable[..., Path],
                                    tmp_path: Path, top: str, listed: int) -> None:
    path = write_cluster(_cluster_of(16))
    result = run_cli("plan", str(path), "--top", top, "--output", str(tmp_path / "plan.json"))
    assert result.code == 0, result.err
    assert f"HOTTEST {listed} OF 16 GPUs" in result.out
    rows = result.out.split("\n\n")[0].splitlines()[2:]
    assert len(rows) == listed
    document = json.loads((tmp_path / "plan.json").read_text())
    every = sorted((g["kvpr"] for g in document["gpus"]), reverse=True)
    shown = [float(row.split()[-1]) for row in rows]
    assert shown == pytest.approx(every[:listed], rel=1e-5), "the highest KVPRs, highest first"


@pytest.mark.parametrize("args, message", [
    pytest.param(["--top", "0"], "must be an integer >= 1", id="zero"),
    pytest.param(["--top", "-3"], "must be an integer >= 0", id="negative"),
    pytest.param(["--top", "many"], "is not an integer", id="not a number"),
    pytest.param(["--top", "3", "--view", "nodes"], "does not combine with --view nodes", id="with another view"),
    pytest.param(["--view", "rows"], "invalid choice: 'rows'", id="unknown view"),
])
def test_bad_view_arguments_are_usage_errors(run_cli: Callable[..., Run], write_cluster: Callable[..., Path],
                                             args: list[str], message: str) -> None:
    path = write_cluster(_cluster_of(4))
    result = run_cli("plan", str(path), *args)
    assert result.code == 2
    assert message in result.err
    assert "Traceback" not in result.err and result.out == ""


def _usage(node: str, index: int, kvpr: float) -> GpuUsage:
    return GpuUsage(GpuId(node, index), memory_gib=80, kvpr=kvpr, used_memory_gib=40, models=("m",))


@pytest.mark.parametrize("gpus, n, expected", [
    pytest.param([], 5, [], id="no GPUs"),
    pytest.param([_usage("a", 0, 0.1)], 1, ["a/0"], id="one GPU"),
    pytest.param([_usage("gpu-10", 0, 0.2), _usage("gpu-2", 0, 0.2), _usage("gpu-2", 1, 0.2)], 2,
                 ["gpu-2/0", "gpu-2/1"], id="exact ties: natural order"),
    pytest.param([_usage("a", 0, 0.0), _usage("b", 0, float("inf")), _usage("c", 0, 0.5)], 3,
                 ["b/0", "c/0", "a/0"], id="inf (weights fill a loaded GPU) first, idle last"),
    pytest.param([_usage("a", 0, 0.3), _usage("b", 0, 0.1)], 10, ["a/0", "b/0"], id="n beyond the GPUs"),
])
def test_hottest_gpus(gpus: list[GpuUsage], n: int, expected: list[str]) -> None:
    assert [str(g.gpu) for g in hottest_gpus(gpus, n)] == expected


def test_hottest_gpus_refuses_zero() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        hottest_gpus([_usage("a", 0, 0.1)], 0)


# --- progress display ----------------------------------------------------------------------------------------

PROGRESS_LINE = re.compile(r"^kvsched plan: \d+\.\d s [a-z -]+: best max KVPR \S+, lower bound \S+, gap \S+$")


@pytest.mark.parametrize("args, shown", [
    pytest.param(["--progress"], True, id="--progress on a pipe: lines"),
    pytest.param([], False, id="default on a pipe: nothing"),
    pytest.param(["--no-progress"], False, id="--no-progress: nothing"),
])
def test_progress_lines_on_a_pipe(run_cli: Callable[..., Run], write_cluster: Callable[..., Path],
                                  args: list[str], shown: bool) -> None:
    path = write_cluster(_cluster_of(16))
    result = run_cli("plan", str(path), "--output", "-", *args)
    assert result.code == 0, result.err
    lines = [line for line in result.err.splitlines() if line.startswith("kvsched plan: ")]
    assert bool(lines) is shown
    assert "\r" not in result.err
    document = json.loads(result.out)  # stdout stays the JSON alone
    if shown:
        assert all(PROGRESS_LINE.match(line) for line in lines), lines
        assert lines[0].startswith("kvsched plan: 0.0 s greedy: best max KVPR -, lower bound -")
        last = lines[-1]
        assert " done: " in last
        assert f"best max KVPR {float(document['maxKVPR']):.6g}," in last


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize("args, drawn", [
    pytest.param(["--progress"], True, id="--progress: drawn from the start, then cleared"),
    pytest.param([], False, id="default: nothing for a solve shorter than a second"),
])
def test_progress_on_a_terminal_is_one_line_cleared_at_the_end(
        monkeypatch: pytest.MonkeyPatch, write_cluster: Callable[..., Path], capsys: pytest.CaptureFixture[str],
        args: list[str], drawn: bool) -> None:
    from kvsched.cli import main

    terminal = _Terminal()
    monkeypatch.setattr("sys.stderr", terminal)
    path = write_cluster(_cluster_of(16))
    assert main(["plan", str(path), *args]) == 0
    err = terminal.getvalue()
    assert "\n" not in err, "in place: never a new line"
    assert bool(err) is drawn
    if drawn:
        assert err.startswith("\r") and err.endswith("\r")
        assert err.split("\r")[-2].strip() == "", "the last write blanks the line"
    assert capsys.readouterr().out.startswith("NODE")


@pytest.mark.parametrize("width", [20, 80, 200])
def test_progress_line_never_wraps(width: int) -> None:
    stream = _Terminal()
    line = ProgressLine(stream, in_place=True, width=width)
    for k in range(3):
        line(Progress("local search", 0.225845 - k * 1e-3, 0.225022, 10.0 + k))
    line.close()
    writes = stream.getvalue().split("\r")[1:]
    assert all(len(w) <= max(width - 1, 10) for w in writes)


@pytest.mark.parametrize("progress, expected", [
    pytest.param(Progress("greedy", float("inf"), 0.0, 0.0), "0.0 s greedy: best max KVPR -, lower bound -, gap -",
                 id="nothing known yet"),
    pytest.param(Progress("bisection", 0.5, 0.25, 1.26), "1.3 s bisection: best max KVPR 0.5, lower bound 0.25, "
                 "gap 100.00%", id="plan and bound"),
    pytest.param(Progress("done", float("inf"), 0.25, 2.0), "2.0 s done: best max KVPR inf, lower bound 0.25, "
                 "gap inf", id="done with a GPU full of weights"),
    pytest.param(Progress("re-plan", 0.3, 0.0, 0.5), "0.5 s re-plan: best max KVPR 0.3, lower bound -, gap -",
                 id="no bound yet"),
])
def test_progress_text(progress: Progress, expected: str) -> None:
    assert progress_text(progress) == expected


# --- the packer's progress callback -------------------------------------------------------------------------

class _FakeClock:
    """Advances by `step_s` seconds at every read."""

    def __init__(self, step_s: float) -> None:
        self.now = 0.0
        self.step_s = step_s

    def __call__(self) -> float:
        self.now += self.step_s
        return self.now


def _medium() -> tuple[list[Model], list[Gpu]]:
    models = [Model(f"m{j}", 8 + (j * 7) % 17, 1 + (j * 5) % 9, 1 + j % 4) for j in range(60)]
    gpus = [Gpu(f"node-{g // 8}", g % 8, 80) for g in range(20)]
    return models, gpus


@pytest.mark.parametrize("step_s, current", [
    pytest.param(0.001, False, id="fresh plan, slow fake clock"),
    pytest.param(0.05, False, id="fresh plan, fast fake clock (time budget cuts the search)"),
    pytest.param(0.001, True, id="re-plan"),
])
def test_progress_callback_is_monotone_and_ends_with_the_plan(step_s: float, current: bool) -> None:
    models, gpus = _medium()
    slots: list[Slot] = []
    if current:
        fresh = solve(models[:-6], gpus, options=NO_SEARCH)
        slots = [Slot(p.model, p.replica, p.gpu) for p in fresh.placements]
    seen: list[Progress] = []
    plan = solve(models, gpus, current=slots, options=PackOptions(time_budget_s=5), clock=_FakeClock(step_s),
                 progress=seen.append)
    assert len(seen) >= 2
    elapsed = [p.elapsed_s for p in seen]
    assert elapsed == sorted(elapsed), "elapsed never goes back"
    assert seen[0].phase == ("re-plan" if current else "greedy")
    assert seen[-1].phase == "done" and [p.phase for p in seen].count("done") == 1
    assert seen[-1].best_max_kvpr == plan.max_kvpr
    assert seen[-1].lower_bound == plan.lower_bound
    assert seen[-1].elapsed_s == plan.solve_seconds
    # Between phase boundaries the callback is throttled to one call per PROGRESS_INTERVAL_S.
    for before, after in zip(seen, seen[1:-1]):
        if after.phase == before.phase:
            assert after.elapsed_s - before.elapsed_s >= PROGRESS_INTERVAL_S - 1e-9
    if not current:  # a fresh plan's best only improves, and the bound never exceeds it
        bests = [p.best_max_kvpr for p in seen]
        assert bests == sorted(bests, reverse=True)
        assert all(p.lower_bound <= p.best_max_kvpr * (1 + 1e-9) for p in seen)


def test_progress_callback_does_not_change_the_plan() -> None:
    models, gpus = _medium()
    options = PackOptions(time_budget_s=5)
    quiet = solve(models, gpus, options=options, clock=_FakeClock(1e-6))
    calls: list[Progress] = []
    watched = solve(models, gpus, options=options, clock=_FakeClock(1e-6), progress=calls.append)
    assert calls
    assert watched.placements == quiet.placements
    assert watched.max_kvpr == quiet.max_kvpr
