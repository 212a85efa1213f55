"""bench/waves.py's pure parts (the bench itself runs a control plane: too slow here): budgets from the command
line, the world, the pod counts it measures with, and the medians and table it reports."""
from __future__ import annotations

import pytest

from bench.waves import (
    START_DELAY_ANNOTATION, PodView, RunFigures, Variant, check_duration, deployment, format_table, metric,
    on_slots, parse_args, parse_variants, pod_view, snapshot, summarise, world,
)
from kvsched.api.names import DEFAULT_SCHEDULER_NAME, GPU_ANNOTATION, MODEL_LABEL, SIZE_ANNOTATION


@pytest.mark.parametrize("text, per_node, expected", [
    pytest.param("1", 1, [Variant(1, 1)], id="one step at a time"),
    pytest.param("1,4,8", 1, [Variant(1, 1), Variant(4, 1), Variant(8, 1)], id="cluster-wide budgets"),
    pytest.param("4, 8:2", 3, [Variant(4, 3), Variant(8, 2)], id="per node from --per-node or the pair"),
])
def test_parse_variants(text: str, per_node: int, expected: list[Variant]) -> None:
    assert parse_variants(text, per_node) == expected


@pytest.mark.parametrize("text, per_node, says", [
    pytest.param("", 1, "''", id="empty"),
    pytest.param("0", 1, "'0'", id="zero"),
    pytest.param("4,x", 1, "'x'", id="not a number"),
    pytest.param("4:1:2", 1, "'4:1:2'", id="three parts"),
    pytest.param("4,4:1", 1, "listed twice", id="the same budget twice"),
    pytest.param("4", 0, "--per-node", id="per node zero"),
])
def test_parse_variants_names_the_bad_item(text: str, per_node: int, says: str) -> None:
    with pytest.raises(ValueError, match=says):
        parse_variants(text, per_node)


def test_variant_args_and_name() -> None:
    v = Variant(8, 2)
    assert v.name == "8/2"
    assert v.args() == ["--max-restarting=8", "--max-restarting-per-node=2"]


@pytest.mark.parametrize("text, ok", [("5s", True), ("1m30s", True), ("500ms", True), ("5", False), ("", False),
                                      ("five", False)])
def test_check_duration(text: str, ok: bool) -> None:
    if ok:
        assert check_duration(text) == text
    else:
        with pytest.raises(ValueError, match="--start-delay"):
            check_duration(text)


def test_parse_args_refuses_bad_input_with_the_field(capsys: pytest.CaptureFixture[str]) -> None:
    for argv, field in ((["--budgets", "a"], "--budgets"), (["--start-delay", "5"], "--start-delay"),
                        (["--runs", "0"], "--runs")):
        with pytest.raises(SystemExit):
            parse_args(argv)
        assert field in capsys.readouterr().err
    assert [v.name for v in parse_args([]).variants] == ["1/1", "4/1", "8/1"]


def test_world_is_seeded_and_fills_about_sixty_percent_of_128_gpus() -> None:
    specs = world(160, seed=0)
    assert specs == world(160, seed=0) and specs != world(160, seed=1)
    assert len({s.name for s in specs}) == 160
    assert all(8 <= s.size_gib <= 40 and 1 <= s.rate_rps <= 10 and 1 <= s.slo_s <= 5 for s in specs)
    weights = sum(s.size_gib * s.replicas for s in specs)
    assert 0.45 < weights / (128 * 80) < 0.75
    assert {s.replicas for s in specs} == {1, 2}


def test_deployment_is_annotated_for_kvsched_with_the_start_delay() -> None:
    spec = world(1)[0]
    d = deployment(spec, "5s")
    assert d["metadata"]["annotations"][SIZE_ANNOTATION] == f"{spec.size_gib}Gi"
    assert d["spec"]["replicas"] == spec.replicas
    template = d["spec"]["template"]
    assert template["metadata"]["annotations"] == {START_DELAY_ANNOTATION: "5s"}
    assert template["spec"]["schedulerName"] == DEFAULT_SCHEDULER_NAME


def _pod(name: str, model: str, node: str | None = None, gpu: int | None = None, ready: bool = False,
         deleting: bool = False) -> PodView:
    return PodView(name, model, node, gpu, ready, deleting)


def test_pod_view_reads_the_served_json() -> None:
    served = {"metadata": {"name": "a-1", "labels": {MODEL_LABEL: "a"}, "annotations": {GPU_ANNOTATION: "3"},
                           "deletionTimestamp": "2026-01-01T00:00:00Z"},
              "spec": {"nodeName": "n1"},
              "status": {"conditions": [{"type": "Ready", "status": "True"}]}}
    assert pod_view(served) == _pod("a-1", "a", "n1", 3, ready=True, deleting=True)
    assert pod_view({"metadata": {"name": "p"}, "spec": {}, "status": {}}) == _pod("p", "")


@pytest.mark.parametrize("pods, wanted, expected", [
    pytest.param([], {}, dict(down=0, starting=0, restarting=0, pending=0), id="empty"),
    pytest.param([], {"a": 2}, dict(down=2, starting=0, restarting=0, pending=0), id="nothing runs"),
    pytest.param([_pod("a1", "a", "n1", 0, ready=True), _pod("a2", "a", "n1", 1, ready=True)], {"a": 2},
                 dict(down=0, starting=0, restarting=0, pending=0), id="all Ready"),
    pytest.param([_pod("a1", "a", "n1", 0, deleting=True), _pod("a2", "a", "n2", 0)], {"a": 1},
                 dict(down=1, starting=1, restarting=1, pending=0, starting_per_node=1),
                 id="a stop and its replacement starting are one restart"),
    pytest.param([_pod("a1", "a", "lost", 0, ready=True), _pod("a2", "a")], {"a": 1},
                 dict(down=1, starting=0, restarting=1, pending=1), id="the lost node's pods count for nothing"),
    pytest.param([_pod("a1", "a", "n1", 0), _pod("b1", "b", "n1", 0), _pod("c1", "c", "n2", 1)],
                 {"a": 1, "b": 1, "c": 1},
                 dict(down=3, starting=3, restarting=3, starting_per_node=2, starting_per_gpu=2),
                 id="two starting on one GPU"),
])
def test_snapshot(pods: list[PodView], wanted: dict[str, int], expected: dict[str, int]) -> None:
    snap = snapshot(pods, wanted, lost="lost")
    assert {k: getattr(snap, k) for k in expected} == expected


@pytest.mark.parametrize("pods, done", [
    pytest.param([_pod("a1", "a", "n1", 0, ready=True), _pod("a2", "a", "n2", 0, ready=True)], True,
                 id="on its slots"),
    pytest.param([_pod("a1", "a", "n1", 0, ready=True), _pod("a2", "a", "n2", 0, ready=True),
                  _pod("a0", "a", "lost", 0, ready=True)], True, id="the lost node's pod left out"),
    pytest.param([_pod("a1", "a", "n1", 0, ready=True), _pod("a2", "a", "n1", 1, ready=True)], False,
                 id="one off its slots"),
    pytest.param([_pod("a1", "a", "n1", 0, ready=True), _pod("a2", "a", "n2", 0)], False, id="one starting"),
    pytest.param([_pod("a1", "a", "n1", 0, ready=True), _pod("a2", "a", "n2", 0, ready=True),
                  _pod("a3", "a", "n2", 1, ready=True, deleting=True)], False, id="one stopping"),
    pytest.param([_pod("a1", "a", "n1", 0, ready=True)], False, id="one missing"),
    pytest.param([_pod("a1", "a", "n1", 0, ready=True), _pod("a2", "a", "n2", 0, ready=True),
                  _pod("a3", "a")], False, id="one pending (a surge)"),
])
def test_on_slots(pods: list[PodView], done: bool) -> None:
    assert on_slots(pods, {"a": {("n1", 0), ("n2", 0)}}, {"a": 2}, lost="lost") is done


def test_metric_sums_the_samples_with_the_labels() -> None:
    m = {'kvsched_migrations_total{reason="Rebalance"}': 3.0, 'kvsched_migrations_total{reason="Resize"}': 2.0,
         "kvsched_restarting_pods": 4.0, "kvsched_restarting_pods_x": 9.0}
    assert metric(m, "kvsched_migrations_total") == 5.0
    assert metric(m, "kvsched_migrations_total", reason="Resize") == 2.0
    assert metric(m, "kvsched_restarting_pods") == 4.0
    assert metric(m, "kvsched_nothing") == 0.0


def test_summary_takes_medians_and_a_timeout_is_no_time() -> None:
    runs = [RunFigures("1/1", 0, ready_s=30.0, settled_s=40.0, moves=10, evictions={"Rebalance": 4}),
            RunFigures("4/1", 0, ready_s=9.0, settled_s=12.0, moves=11),
            RunFigures("1/1", 1, ready_s=50.0, settled_s=None, moves=12, evictions={"Rebalance": 6},
                       error="not settled"),
            RunFigures("1/1", 2, ready_s=40.0, settled_s=60.0, moves=14, evictions={"Rebalance": 8})]
    summary = summarise(runs)
    assert [s["variant"] for s in summary] == ["1/1", "4/1"]
    seq = summary[0]
    assert (seq["runs"], seq["failed"], seq["ready_s"], seq["settled_s"], seq["moves"], seq["evictions"]) == \
        (3, 1, 40.0, None, 12, 6)
    text = format_table(summary)
    lines = text.splitlines()
    assert lines[0].startswith("budget") and lines[2].startswith("1/1") and "(1 failed)" in lines[2]
    assert lines[3].split()[:5] == ["4/1", "1", "-", "9.0", "12.0"]
