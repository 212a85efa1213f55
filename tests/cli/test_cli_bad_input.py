"""Every bad cluster file gives exit code 2 and one line on stderr naming the file and the field path."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Callable

import pytest

RunCli = Callable[..., Any]
WriteCluster = Callable[..., Path]


DELETE = object()
Edit = tuple[tuple[str | int, ...], Any]


def changed(*edits: Edit) -> tuple[Edit, ...]:
    """A row's edits to the small valid cluster: each (path, value) is set; value DELETE removes the key."""
    return edits


def apply_edits(doc: dict[str, Any], edits: tuple[Edit, ...]) -> dict[str, Any]:
    doc = copy.deepcopy(doc)
    for path, value in edits:
        parent: Any = doc
        for key in path[:-1]:
            parent = parent[key]
        if value is DELETE:
            del parent[path[-1]]
        else:
            parent[path[-1]] = value
    return doc


BAD_DOCUMENTS = [
    # quantities
    pytest.param(changed((("models", 0, "size"), "16Qi")), "models[0].size", "not a Kubernetes quantity",
                 id="size is not a quantity"),
    pytest.param(changed((("models", 1, "size"), "-40Gi")), "models[1].size", "greater than zero",
                 id="negative size"),
    pytest.param(changed((("models", 1, "size"), 0)), "models[1].size", "greater than zero", id="zero size"),
    pytest.param(changed((("models", 1, "size"), "80")), "models[1].size", "bytes", id="quantity without unit"),
    pytest.param(changed((("models", 1, "size"), "inf")), "models[1].size", "not a Kubernetes quantity",
                 id="infinite size"),
    pytest.param(changed((("models", 1, "size"), [16])), "models[1].size", "quantity", id="size is a list"),
    pytest.param(changed((("gpus", 0, "memory"), "0Gi")), "gpus[0].memory", "greater than zero",
                 id="zero GPU memory"),
    pytest.param(changed((("nodes", 0, "gpuMemory"), "80GB!")), "nodes[0].gpuMemory", "quantity",
                 id="node memory garbage"),
    # missing and mistyped fields
    pytest.param(changed((("models", 2, "requestRate"), DELETE)), "models[2].requestRate", "required",
                 id="missing request rate"),
    pytest.param(changed((("models", 2, "requestRate"), -1)), "models[2].requestRate", ">= 0",
                 id="negative request rate"),
    pytest.param(changed((("models", 2, "requestRate"), "fast")), "models[2].requestRate", "number",
                 id="request rate is a string"),
    pytest.param(changed((("models", 2, "requestRate"), True)), "models[2].requestRate", "number",
                 id="request rate is a boolean"),
    pytest.param(changed((("models", 0, "sloSeconds"), 0)), "models[0].sloSeconds", "greater than zero",
                 id="zero SLO"),
    pytest.param(changed((("models", 0, "sloSeconds"), "soon")), "models[0].sloSeconds", "duration",
                 id="SLO not a duration"),
    pytest.param(changed((("models", 0, "replicas"), 0)), "models[0].replicas", ">= 1", id="zero replicas"),
    pytest.param(changed((("models", 0, "replicas"), 10**9)), "models[0].replicas", "at most",
                 id="a billion replicas, caught by the packer's own check"),
    pytest.param(changed((("models", 0, "replicas"), 1.5)), "models[0].replicas", "integer",
                 id="fractional replicas"),
    pytest.param(changed((("models", 0, "name"), "")), "models[0].name", "non-empty", id="empty model name"),
    pytest.param(changed((("models", 0, "name"), DELETE)), "models[0].name", "required", id="missing model name"),
    pytest.param(changed((("models", 0), "llama")), "models[0]", "mapping", id="model is a string"),
    pytest.param(changed((("models",), {"llama": 1})), "models", "list", id="models is a mapping"),
    pytest.param(changed((("gpus", 0, "index"), -1)), "gpus[0].index", ">= 0", id="negative GPU index"),
    pytest.param(changed((("gpus", 0, "node"), 7)), "gpus[0].node", "string", id="node name is a number"),
    pytest.param(changed((("nodes", 0, "gpus"), 0)), "nodes[0].gpus", ">= 1", id="node without GPUs"),
    # unknown keys (typos must not be ignored)
    pytest.param(changed((("models", 0, "sloSecond"), 1)), "models[0]", "sloSeconds", id="typo in model key"),
    pytest.param(changed((("model",), [])), "", "unknown key 'model'", id="typo in top-level key"),
    pytest.param(changed((("options", "timeBudget"), 1)), "options", "timeBudgetSeconds", id="typo in option"),
    pytest.param(changed((("gpus", 0, "memoryGiB"), 80)), "gpus[0]", "unknown key", id="unknown GPU key"),
    # duplicates and references
    pytest.param(changed((("models", 1, "name"), "llama-8b")), "models[1].name", "already used by models[0]",
                 id="duplicate model name"),
    pytest.param(changed((("gpus", 1, "index"), 0)), "gpus[1]", "already listed at gpus[0]",
                 id="duplicate GPU in gpus"),
    pytest.param(changed((("nodes", 0, "name"), "n1")), "nodes[0]", "n1/0 is already listed",
                 id="node shorthand repeats a listed GPU"),
    pytest.param(changed((("current", 0, "model"), "llama-9b")), "current[0].model", "not a model",
                 id="current names an unknown model"),
    pytest.param(changed((("current", 0, "replica"), 2)), "current[0].replica", "out of range",
                 id="current replica out of range"),
    pytest.param(changed((("current", 0, "gpu"), 5)), "current[0]", "n1/5 is not listed",
                 id="current on an unknown GPU"),
    pytest.param(changed((("current", 0, "memoryFraction"), 1.5)), "current[0].memoryFraction", "(0, 1]",
                 id="current share above 1"),
    pytest.param(changed((("current", 0, "memoryFraction"), 0)), "current[0].memoryFraction", "(0, 1]",
                 id="current share of 0"),
    pytest.param(changed((("current", 0, "memoryFraction"), "lots")), "current[0].memoryFraction", "lots",
                 id="current share not a number"),
    pytest.param(changed((("current",), [{"model": "llama-8b", "replica": 0, "node": "n1", "gpu": 0},
                                          {"model": "llama-8b", "replica": 0, "node": "n2", "gpu": 0}])),
                 "current[1]", "already placed", id="current places a replica twice"),
    # memory headroom (issue 15)
    pytest.param(changed((("gpuMemoryReserve",), "-1Gi")), "gpuMemoryReserve", "must not be negative",
                 id="negative GPU memory reserve"),
    pytest.param(changed((("engineOverhead",), "lots")), "engineOverhead", "not a Kubernetes quantity",
                 id="engine overhead not a quantity"),
    pytest.param(changed((("engineContext",), [1])), "engineContext", "quantity", id="engine context is a list"),
    pytest.param(changed((("engineContext",), "3")), "engineContext", "add a unit",
                 id="engine context quantity without unit"),
    pytest.param(changed((("gpus", 0, "memoryReserve"), "80Gi")), "gpus[0].memoryReserve", "must be less than",
                 id="a GPU's reserve equals its memory"),
    pytest.param(changed((("nodes", 0, "memoryReserve"), -1)), "nodes[0].memoryReserve", "must not be negative",
                 id="negative node reserve"),
    pytest.param(changed((("gpuMemoryReserve",), "40Gi")), "gpus[1]", "(40Gi, from gpuMemoryReserve) must be less",
                 id="the top-level reserve leaves a 40Gi GPU nothing"),
    pytest.param(changed((("models", 1, "engineOverhead"), "-2Gi")), "models[1].engineOverhead",
                 "must not be negative", id="negative model overhead"),
    pytest.param(changed((("models", 1, "engineOverhead"), float("nan"))), "models[1].engineOverhead", "finite",
                 id="NaN model overhead"),
    pytest.param(changed((("models", 0, "engineContext"), "1Gi")), "models[0]", "unknown key 'engineContext'",
                 id="engine context is cluster-wide, not per model"),
    pytest.param(changed((("gpus", 0, "reserve"), "1Gi")), "gpus[0]", "memoryReserve", id="typo in GPU reserve"),
    # options
    pytest.param(changed((("options", "stabilityThreshold"), -0.1)), "options.stabilityThreshold", ">= 0",
                 id="negative stability threshold"),
    pytest.param(changed((("options", "timeBudgetSeconds"), "later")), "options.timeBudgetSeconds", "duration",
                 id="time budget not a duration"),
    # whole document
    pytest.param(changed((("models",), DELETE)), "models", "required", id="no models key"),
    pytest.param(changed((("gpus",), DELETE), (("nodes",), DELETE)), "gpus", "required", id="no GPUs key"),
    pytest.param(changed((("gpus",), []), (("nodes",), []), (("current",), [])), "gpus", "no GPUs",
                 id="empty GPU lists"),
    pytest.param("", "", "empty", id="empty file"),
    pytest.param("# only a comment\n", "", "empty", id="only a comment"),
    pytest.param("- just\n- a list\n", "", "mapping", id="not a mapping"),
    pytest.param("models: [\n  {name: a, size: 1Gi\n", "", "line", id="YAML syntax error"),
    pytest.param("models: []\nmodels: []\ngpus: []\n", "", "line 2", id="YAML key twice"),
]


def assert_one_clean_line(err: str, file: Path, field_path: str, problem: str) -> None:
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert "Traceback" not in err
    line = lines[0]
    assert line.startswith(f"kvsched plan: {file}: "), line
    if field_path:
        assert f": {field_path}: " in line or f": {field_path}." in line, line
    assert problem in line, line


@pytest.mark.parametrize(("document", "field_path", "problem"), BAD_DOCUMENTS)
def test_bad_yaml_file_exits_2_naming_the_field(
    run_cli: RunCli, write_cluster: WriteCluster, small_cluster: dict[str, Any], document: Any, field_path: str,
    problem: str,
) -> None:
    file = write_cluster(document if isinstance(document, str) else apply_edits(small_cluster, document))
    result = run_cli("plan", str(file))
    assert result.code == 2
    assert result.out == ""
    assert_one_clean_line(result.err, file, field_path, problem)


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        pytest.param("", "line 1", id="empty JSON"),
        pytest.param('{"models": [,]}', "line 1, column 13", id="JSON syntax error"),
        pytest.param('{"models": [], "models": []}', "appears twice", id="JSON key twice"),
        pytest.param("[1, 2]", "mapping", id="JSON list"),
        pytest.param("null", "empty", id="JSON null"),
    ],
)
def test_bad_json_file_exits_2(run_cli: RunCli, write_cluster: WriteCluster, text: str, problem: str) -> None:
    file = write_cluster(text, "cluster.json")
    result = run_cli("plan", str(file))
    assert result.code == 2
    assert_one_clean_line(result.err, file, "", problem)


def test_missing_file_exits_2(run_cli: RunCli, tmp_path: Path) -> None:
    file = tmp_path / "nope.yaml"
    result = run_cli("plan", str(file))
    assert result.code == 2
    assert_one_clean_line(result.err, file, "", "no such file")


def test_directory_exits_2(run_cli: RunCli, tmp_path: Path) -> None:
    result = run_cli("plan", str(tmp_path))
    assert result.code == 2
    assert_one_clean_line(result.err, tmp_path, "", "directory")


def test_bad_plot_suffix_exits_2_before_solving(
    run_cli: RunCli, write_cluster: WriteCluster, small_cluster: dict[str, Any], tmp_path: Path
) -> None:
    result = run_cli("plan", str(write_cluster(small_cluster)), "--plot", str(tmp_path / "plan.pdf"))
    assert result.code == 2
    assert result.out == ""
    assert result.err.count("\n") == 1 and "--plot" in result.err and ".svg or .png" in result.err


@pytest.mark.parametrize(
    "flags",
    [
        pytest.param(["--time-budget", "-1"], id="negative time budget"),
        pytest.param(["--time-budget", "soon"], id="time budget not a number"),
        pytest.param(["--stability-threshold", "nan"], id="threshold nan"),
        pytest.param(["--stability-threshold", "inf"], id="threshold inf"),
    ],
)
def test_bad_flag_is_a_usage_error(
    run_cli: RunCli, write_cluster: WriteCluster, small_cluster: dict[str, Any], flags: list[str]
) -> None:
    result = run_cli("plan", str(write_cluster(small_cluster)), *flags)
    assert result.code == 2
    assert "Traceback" not in result.err
    assert flags[0] in result.err


def test_unwritable_output_exits_1(
    run_cli: RunCli, write_cluster: WriteCluster, small_cluster: dict[str, Any], tmp_path: Path
) -> None:
    out = tmp_path / "no-such-dir" / "placement.json"
    result = run_cli("plan", str(write_cluster(small_cluster)), "--output", str(out))
    assert result.code == 1
    assert result.err.strip().splitlines()[-1].startswith("kvsched plan: --output: cannot write")
    assert "Traceback" not in result.err


def test_packer_validation_error_exits_2_in_one_line(
    run_cli: RunCli, write_cluster: WriteCluster, small_cluster: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The reader checks everything the packer does today; if the packer adds a rule, its error still reads well."""
    import kvsched.packer
    from kvsched.packer import InvalidInput

    def reject(*args: Any, **kwargs: Any) -> Any:
        raise InvalidInput("model 'llama-8b'", "size", 16.0, "must fit the largest GPU")

    monkeypatch.setattr(kvsched.packer, "solve", reject)
    file = write_cluster(small_cluster)
    result = run_cli("plan", str(file))
    assert result.code == 2
    assert_one_clean_line(result.err, file, "", "model 'llama-8b': size: must fit the largest GPU (got 16.0)")
