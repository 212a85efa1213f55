"""`kvsched plan` on good files: the table, the JSON, the plot, the example, help and the console script.

Plans come from the real packer, which changes under these tests: they check consistency (every replica once,
table agrees with JSON, numbers recomputed from the placement), never particular placements or KVPR values.
"""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable

import pytest

from kvsched import __version__
from kvsched.settings import DEFAULT_ENGINE_CONTEXT_GIB, DEFAULT_ENGINE_OVERHEAD_GIB, DEFAULT_GPU_MEMORY_RESERVE_GIB

RunCli = Callable[..., Any]
WriteCluster = Callable[..., Path]

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "cluster.yaml"
GIB = 2**30
# The memory a GPU of one 16Gi model leaves for KV cache with the default headroom, out of 80Gi.
KV_OF_16_ON_80 = 80 - DEFAULT_GPU_MEMORY_RESERVE_GIB - 16 - DEFAULT_ENGINE_OVERHEAD_GIB - DEFAULT_ENGINE_CONTEXT_GIB
# Clusters whose figures were worked out by hand for weights and KV cache alone.
NO_HEADROOM = {"gpuMemoryReserve": 0, "engineOverhead": 0, "engineContext": "0Gi"}


def plan_json(run_cli: RunCli, file: Path, *flags: str) -> dict[str, Any]:
    result = run_cli("plan", str(file), "--output", "-", "--time-budget", "0", *flags)
    assert result.code == 0, result.err
    document: dict[str, Any] = json.loads(result.out)
    return document


def one_model_one_gpu(memory: Any) -> dict[str, Any]:
    return {
        "gpus": [{"node": "n1", "index": 0, "memory": memory}],
        "models": [{"name": "llama-8b", "size": "16Gi", "requestRate": 4, "sloSeconds": 1}],
    }


@pytest.mark.parametrize(
    "memory",
    [
        pytest.param("80Gi", id="binary suffix"),
        pytest.param(80, id="plain int is GiB"),
        pytest.param(80.0, id="plain float is GiB"),
        pytest.param("81920Mi", id="MiB"),
        pytest.param("85899345920", id="bytes as a string"),
        pytest.param("0.078125Ti", id="fractional TiB"),
    ],
)
@pytest.mark.parametrize("name", ["cluster.yaml", "cluster.json"])
def test_memory_quantities_all_mean_80_gib(
    run_cli: RunCli, write_cluster: WriteCluster, memory: Any, name: str
) -> None:
    document = plan_json(run_cli, write_cluster(one_model_one_gpu(memory), name))
    (gpu,) = document["gpus"]
    assert gpu["memory"] == 80.0
    assert document["placements"][0]["node"] == "n1"
    assert gpu["kvpr"] == pytest.approx(4 / KV_OF_16_ON_80, rel=1e-5)


def test_decimal_quantity_is_decimal(run_cli: RunCli, write_cluster: WriteCluster) -> None:
    document = plan_json(run_cli, write_cluster(one_model_one_gpu("80G")))
    assert document["gpus"][0]["memory"] == round(80e9 / GIB, 3)


def test_nodes_shorthand_expands_and_mixes_with_gpus(run_cli: RunCli, write_cluster: WriteCluster) -> None:
    document = plan_json(run_cli, write_cluster({
        "nodes": [{"name": "n2", "gpus": 3, "gpuMemory": "40Gi"}],
        "gpus": [{"node": "n1", "index": 5, "memory": 80}],
        "models": [],
    }))
    gpus = [(g["node"], g["gpu"], g["memory"]) for g in document["gpus"]]
    assert sorted(gpus) == [("n1", 5, 80.0), ("n2", 0, 40.0), ("n2", 1, 40.0), ("n2", 2, 40.0)]
    assert document["placements"] == [] and document["unplaced"] == []


@pytest.mark.parametrize(
    ("slo", "seconds"),
    [pytest.param(2, 2.0, id="number"), pytest.param("500ms", 0.5, id="ms"), pytest.param("2s", 2.0, id="s"),
     pytest.param("1m", 60.0, id="minutes"), pytest.param("1.5", 1.5, id="numeric string")],
)
def test_slo_durations(run_cli: RunCli, write_cluster: WriteCluster, slo: Any, seconds: float) -> None:
    doc = one_model_one_gpu(80)
    doc["models"][0]["sloSeconds"] = slo
    document = plan_json(run_cli, write_cluster(doc))
    assert document["gpus"][0]["kvpr"] == pytest.approx(4 / seconds / KV_OF_16_ON_80, rel=1e-5)


def every_replica(document: dict[str, Any]) -> list[tuple[str, int]]:
    return sorted([(p["model"], p["replica"]) for p in document["placements"]]
                  + [(u["model"], u["replica"]) for u in document["unplaced"]])


CLUSTERS = [
    pytest.param("small", id="small mixed cluster"),
    pytest.param("example", id="examples/cluster.yaml"),
    pytest.param("overfull", id="more weights than memory"),
    pytest.param("empty", id="no models"),
    pytest.param("full", id="weights fill the GPU exactly"),
]


@pytest.fixture
def cluster_file(request: pytest.FixtureRequest, write_cluster: WriteCluster, small_cluster: dict[str, Any]) -> Path:
    kind = request.param
    if kind == "example":
        return EXAMPLE
    if kind == "small":
        return write_cluster(small_cluster)
    if kind == "overfull":
        return write_cluster({
            "gpus": [{"node": "n1", "index": 0, "memory": "40Gi"}],
            "models": [{"name": f"m{i}", "size": "16Gi", "requestRate": i, "sloSeconds": 1} for i in range(5)],
        })
    if kind == "empty":
        return write_cluster({"nodes": [{"name": "n", "gpus": 2, "gpuMemory": "80Gi"}], "models": []})
    assert kind == "full"
    return write_cluster({
        "gpus": [{"node": "n1", "index": 0, "memory": "16Gi"}],
        "models": [{"name": "idle", "size": "16Gi", "requestRate": 0, "sloSeconds": 1}],
        **NO_HEADROOM,
    })


def models_of(file: Path) -> dict[str, dict[str, Any]]:
    import yaml

    return {m["name"]: m for m in yaml.safe_load(file.read_text())["models"]}


@pytest.mark.parametrize("cluster_file", CLUSTERS, indirect=True)
def test_every_replica_appears_once(run_cli: RunCli, cluster_file: Path) -> None:
    document = plan_json(run_cli, cluster_file)
    expected = sorted((name, r) for name, m in models_of(cluster_file).items() for r in range(m.get("replicas", 1)))
    assert every_replica(document) == expected


@pytest.mark.parametrize("cluster_file", CLUSTERS, indirect=True)
def test_json_structure_and_numbers_are_consistent(run_cli: RunCli, cluster_file: Path) -> None:
    document = plan_json(run_cli, cluster_file)
    assert set(document) == {"maxKVPR", "lowerBound", "gapPercent", "retunes", "solveSeconds", "keptCurrent",
                             "moves", "shareRestarts", "nextMoveGain", "memoryUnit", "placements", "gpus",
                             "unplaced", "steps"}
    assert document["memoryUnit"] == "GiB"
    assert isinstance(document["retunes"], int) and document["retunes"] >= 0
    assert document["solveSeconds"] >= 0
    for p in document["placements"]:
        assert set(p) == {"model", "replica", "node", "gpu", "memoryFraction", "kvMemory"}
        assert 0 < p["memoryFraction"] <= 1 + 1e-9
        assert p["kvMemory"] >= 0
    for u in document["unplaced"]:
        assert set(u) == {"model", "replica", "cause", "reason"} and u["reason"]
    for m in document["steps"]:
        assert set(m) == {"model", "replica", "fromNode", "fromGpu", "toNode", "toGpu", "stopFirst", "kind"}
        assert m["kind"] == ("start" if m["fromNode"] is None else "resize" if (m["fromNode"], m["fromGpu"]) == (
            m["toNode"], m["toGpu"]) else "move")

    top = headroom_of(cluster_file)
    models = models_of(cluster_file)
    by_gpu = {(g["node"], g["gpu"]): g for g in document["gpus"]}
    for (node, index), g in by_gpu.items():
        assert set(g) == {"node", "gpu", "kvpr", "memory", "usedMemory", "reserve", "engineMemory", "kvMemory",
                          "models"}
        here = [p for p in document["placements"] if (p["node"], p["gpu"]) == (node, index)]
        assert sorted(g["models"]) == sorted(p["model"] for p in here)
        used = sum(_gib(models[name]["size"]) for name in g["models"])
        assert g["usedMemory"] == pytest.approx(used, abs=1e-3)
        assert g["reserve"] == pytest.approx(top["gpuMemoryReserve"], abs=1e-3)
        overheads = {name: _gib(models[name].get("engineOverhead", top["engineOverhead"])) for name in g["models"]}
        context = top["engineContext"]
        assert g["engineMemory"] == pytest.approx(sum(overheads.values()) + context * len(here), abs=1e-3)
        # The GPU's memory is its weights, reserve, engines and KV cache; the KV cache is its replicas'.
        assert g["memory"] == pytest.approx(g["usedMemory"] + g["reserve"] + g["engineMemory"] + g["kvMemory"],
                                            abs=5e-3)
        if here:  # an empty GPU's KV memory is nobody's
            assert g["kvMemory"] == pytest.approx(sum(p["kvMemory"] for p in here), abs=1e-3 * (1 + len(here)))
        # Each fraction holds its replica's weights, overhead and KV cache; the reserve and one CUDA context per
        # replica stay outside the fractions.
        for p in here:
            inside = _gib(models[p["model"]]["size"]) + overheads[p["model"]] + p["kvMemory"]
            assert p["memoryFraction"] * g["memory"] == pytest.approx(inside, abs=1e-3)
        if here:
            outside = g["reserve"] + context * len(here)
            assert sum(p["memoryFraction"] for p in here) == pytest.approx(1 - outside / g["memory"], abs=1e-4)
    kvprs = [math.inf if g["kvpr"] is None else g["kvpr"] for g in document["gpus"]]
    max_kvpr = math.inf if document["maxKVPR"] is None else document["maxKVPR"]
    assert max_kvpr == pytest.approx(max(kvprs, default=0.0), rel=1e-5)
    if document["lowerBound"] is not None:
        assert document["lowerBound"] <= max_kvpr * (1 + 1e-9)


def headroom_of(file: Path) -> dict[str, float]:
    """The file's top-level headroom figures in GiB, the defaults where it gives none."""
    import yaml

    document = yaml.safe_load(file.read_text())
    defaults = {"gpuMemoryReserve": DEFAULT_GPU_MEMORY_RESERVE_GIB, "engineOverhead": DEFAULT_ENGINE_OVERHEAD_GIB,
                "engineContext": DEFAULT_ENGINE_CONTEXT_GIB}
    return {key: _gib(document.get(key, value)) for key, value in defaults.items()}


def _gib(size: Any) -> float:
    if isinstance(size, (int, float)):
        return float(size)
    if size.strip() in ("0", "0Gi"):
        return 0.0
    from kubernetes.utils.quantity import parse_quantity

    return float(parse_quantity(size)) / GIB  # type: ignore[no-untyped-call]


TABLE_ROW = re.compile(r"^(?P<node>\S+)\s+(?P<gpu>\d+)\s+(?P<models>.+?)\s+(?P<used>[\d.]+)/(?P<total>[\d.]+)Gi\s+"
                       r"(?P<reserve>[\d.]+)Gi\s+(?P<kvpr>\S+)$")
SUMMARY_LINE = re.compile(r"^(max KVPR|lower bound|gap|retunes|placed|memory|steps|solve time):\s")
MODEL_KV = re.compile(r"^(?P<name>\S+) \((?P<kv>[\d.]+)\)$")


@pytest.mark.parametrize("cluster_file", CLUSTERS, indirect=True)
def test_table_agrees_with_json(run_cli: RunCli, cluster_file: Path, tmp_path: Path) -> None:
    out = tmp_path / "placement.json"
    result = run_cli("plan", str(cluster_file), "--output", str(out), "--time-budget", "0")
    assert result.code == 0, result.err
    document = json.loads(out.read_text())
    lines = result.out.splitlines()
    assert lines[0].split() == ["NODE", "GPU", "MODELS", "(KV", "CACHE", "GiB)", "MEMORY", "RESERVE", "KVPR"]
    # A GPU whose models do not fit one line continues on the next ones, indented, with only models.
    table = lines[1:lines.index("")] if "" in lines else lines[1:]
    rows: list[tuple[re.Match[str], str]] = []
    for line in table:
        if line.startswith(" "):
            rows[-1] = (rows[-1][0], rows[-1][1] + " " + line.strip())
        else:
            row = TABLE_ROW.match(line)
            assert row is not None, line
            rows.append((row, row["models"]))
    assert len(rows) == len(document["gpus"])
    kv = {(p["node"], p["gpu"], p["model"]): p["kvMemory"] for p in document["placements"]}
    for (row, models), g in zip(rows, document["gpus"]):
        assert (row["node"], int(row["gpu"])) == (g["node"], g["gpu"])
        assert float(row["used"]) == pytest.approx(g["usedMemory"], abs=0.05)
        assert float(row["total"]) == pytest.approx(g["memory"], abs=0.05)
        assert float(row["reserve"]) == pytest.approx(g["reserve"], abs=0.05)
        if g["kvpr"] is None:
            assert row["kvpr"] == "inf"
        else:
            assert float(row["kvpr"]) == pytest.approx(g["kvpr"], rel=1e-5)
        if g["models"]:
            shown = [MODEL_KV.match(cell) for cell in models.split(", ")]
            assert all(shown), models
            assert [m["name"] for m in shown if m] == g["models"]
            for m in shown:
                assert m is not None
                assert float(m["kv"]) == pytest.approx(kv[g["node"], g["gpu"], m["name"]], abs=0.051)
        else:
            assert models == "-"
    summary = dict(line.split(":", 1) for line in lines if SUMMARY_LINE.match(line))
    max_kvpr = summary["max KVPR"].strip()
    assert max_kvpr == "inf" if document["maxKVPR"] is None else float(max_kvpr) == pytest.approx(
        document["maxKVPR"], rel=1e-5)
    assert int(summary["retunes"]) == document["retunes"]
    assert summary["placed"].strip().startswith(f"{len(document['placements'])}/")
    assert int(summary["steps"].split()[0]) == len(document["steps"])
    for u in document["unplaced"]:
        assert f"  {u['model']} replica {u['replica']}: {u['reason']}" in lines
    assert f"wrote {out}" in result.err


def test_output_dash_writes_only_json_to_stdout(
    run_cli: RunCli, write_cluster: WriteCluster, small_cluster: dict[str, Any]
) -> None:
    result = run_cli("plan", str(write_cluster(small_cluster)), "--output", "-", "--time-budget", "0")
    assert result.code == 0
    json.loads(result.out)
    assert "NODE" not in result.out


def test_unplaced_replicas_still_exit_0_and_are_reported(run_cli: RunCli, write_cluster: WriteCluster) -> None:
    file = write_cluster({
        "gpus": [{"node": "n1", "index": 0, "memory": "40Gi"}],
        "models": [{"name": "too-big", "size": "70Gi", "requestRate": 1, "sloSeconds": 1}],
    })
    result = run_cli("plan", str(file), "--time-budget", "0")
    assert result.code == 0
    assert "UNPLACED (1 replica(s)):" in result.out and "too-big replica 0:" in result.out
    result = run_cli("plan", str(file), "--output", "-", "--time-budget", "0")
    assert result.code == 0 and "could not be placed" in result.err
    assert json.loads(result.out)["unplaced"][0]["model"] == "too-big"


# Two 80 GiB GPUs where the fluid bound (0.22) is below the optimum (0.3): only the exact stage, which runs when
# the time budget allows, raises the reported lower bound to the optimum and so closes the gap.
# With a budget, local search and the exact stage reach the bound (max KVPR 0.25 = lower bound); the first valid
# plan of `--time-budget 0` stops at 0.3125. (Found by a random search over small clusters; the item-value bound
# already proves 0.25 at budget 0, so the difference is in the plan, not the bound.)
GAP_CLOSED_BY_EXACT = {
    **NO_HEADROOM,
    "gpus": [{"node": "n1", "index": 0, "memory": "48Gi"}, {"node": "n1", "index": 1, "memory": "80Gi"}],
    "models": [{"name": n, "size": s, "requestRate": r, "sloSeconds": 1}
               for n, s, r in [("a", "24Gi", 1), ("b", "8Gi", 1), ("c", "8Gi", 4), ("d", "16Gi", 4),
                               ("e", "8Gi", 5)]],
}
# The best plan puts a alone (3/64) and b + c together (4/48 = 0.083); `current` has a + b together (5/48 =
# 0.104), 25% worse: kept under a threshold of 0.5, moved under 0.
KEPT_WITHIN_HALF = {
    **NO_HEADROOM,
    "gpus": [{"node": "n1", "index": 0, "memory": "80Gi"}, {"node": "n1", "index": 1, "memory": "80Gi"}],
    "models": [{"name": "a", "size": "16Gi", "requestRate": 3, "sloSeconds": 1},
               {"name": "b", "size": "16Gi", "requestRate": 2, "sloSeconds": 1},
               {"name": "c", "size": "16Gi", "requestRate": 2, "sloSeconds": 1}],
    "current": [{"model": "a", "replica": 0, "node": "n1", "gpu": 0},
                {"model": "b", "replica": 0, "node": "n1", "gpu": 0},
                {"model": "c", "replica": 0, "node": "n1", "gpu": 1}],
}


def test_time_budget_flag_overrides_the_file(run_cli: RunCli, write_cluster: WriteCluster) -> None:
    file = write_cluster({**GAP_CLOSED_BY_EXACT, "options": {"timeBudgetSeconds": 3600}})
    from_file = run_cli("plan", str(file), "--output", "-")
    assert from_file.code == 0, from_file.err
    planned = json.loads(from_file.out)
    assert planned["gapPercent"] == 0.0 and planned["maxKVPR"] == pytest.approx(0.25)  # the file's budget
    overridden = plan_json(run_cli, file)  # --time-budget 0: the first valid plan, no search after it
    assert overridden["maxKVPR"] == pytest.approx(0.3125)
    assert overridden["lowerBound"] == pytest.approx(0.25)
    assert overridden["gapPercent"] > 20


def test_stability_threshold_flag_overrides_the_file(run_cli: RunCli, write_cluster: WriteCluster) -> None:
    file = write_cluster({**KEPT_WITHIN_HALF, "options": {"stabilityThreshold": 0.5}})
    from_file = plan_json(run_cli, file)
    assert from_file["keptCurrent"] is True and from_file["moves"] == 0
    overridden = plan_json(run_cli, file, "--stability-threshold", "0")
    assert overridden["keptCurrent"] is False and overridden["moves"] > 0
    assert overridden["maxKVPR"] == pytest.approx(4 / 48)


def test_plot_svg_and_png(run_cli: RunCli, tmp_path: Path) -> None:
    svg = tmp_path / "placement.svg"
    png = tmp_path / "placement.PNG"
    for path in (svg, png):
        result = run_cli("plan", str(EXAMPLE), "--plot", str(path), "--time-budget", "0")
        assert result.code == 0, result.err
        assert f"wrote {path}" in result.err
    text = svg.read_text()
    assert text.lstrip().startswith(("<?xml", "<svg")) and text.rstrip().endswith("</svg>")
    assert png.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")


def test_plot_with_legend_and_inf_kvpr(run_cli: RunCli, write_cluster: WriteCluster, tmp_path: Path) -> None:
    file = write_cluster({
        "gpus": [{"node": "n1", "index": 0, "memory": "16Gi"}, {"node": "n1", "index": 1, "memory": "80Gi"}],
        "models": [{"name": "full", "size": "16Gi", "requestRate": 0, "sloSeconds": 1},
                   {"name": "busy", "size": "8Gi", "requestRate": 5, "sloSeconds": 1}],
    })
    svg = tmp_path / "p.svg"
    assert run_cli("plan", str(file), "--plot", str(svg), "--time-budget", "0").code == 0
    assert svg.stat().st_size > 1000


def test_example_plans_with_flags_of_make_demo(run_cli: RunCli, tmp_path: Path) -> None:
    result = run_cli("plan", str(EXAMPLE), "--output", str(tmp_path / "placement.json"),
                     "--plot", str(tmp_path / "placement.svg"), "--time-budget", "0")
    assert result.code == 0, result.err
    document = json.loads((tmp_path / "placement.json").read_text())
    assert len(models_of(EXAMPLE)) >= 25
    assert len(document["gpus"]) == 20


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        pytest.param(["--help"], ["plan", "Exit codes"], id="main help"),
        pytest.param(["plan", "--help"], ["gpuMemory", "sloSeconds", "80Gi", "GiB", "Exit codes", "--time-budget",
                                          "--stability-threshold", "memoryFraction"], id="plan help"),
        pytest.param(["--version"], [__version__], id="version"),
    ],
)
def test_help_and_version(run_cli: RunCli, argv: list[str], expected: list[str]) -> None:
    result = run_cli(*argv)
    assert result.code == 0
    for word in expected:
        assert word in result.out


def test_no_command_is_a_usage_error(run_cli: RunCli) -> None:
    result = run_cli()
    assert result.code == 2 and "COMMAND" in result.err


def test_console_script(tmp_path: Path) -> None:
    script = Path(sys.executable).parent / "kvsched"
    if not script.exists():
        pytest.skip(f"{script} not installed (run `make unit` to install the console script)")
    out = tmp_path / "p.json"
    done = subprocess.run([str(script), "plan", str(EXAMPLE), "--output", str(out), "--time-budget", "0"],
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    assert "max KVPR:" in done.stdout and json.loads(out.read_text())["gpus"]
    bad = subprocess.run([str(script), "plan", str(tmp_path / "missing.yaml")],
                         capture_output=True, text=True, timeout=60, check=False)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "no such file" in bad.stderr


def test_plan_help_states_the_packers_default_time_budget(run_cli: RunCli) -> None:
    from kvsched.packer import PackOptions

    result = run_cli("plan", "--help")
    assert f"default {PackOptions().time_budget_s:g})" in " ".join(result.out.split())
