"""What `make cluster` (hack/cluster.py) builds from a cluster file: KWOK GPU nodes and annotated Deployments."""
from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest

from hack.cluster import EXAMPLE, example_deployments, example_nodes, exited, kvsched_component, parse_args
from kvsched.api.names import GPU_MEMORY_LABEL, RATE_ANNOTATION, SIZE_ANNOTATION, SLO_ANNOTATION
from kvsched.cluster_file import ClusterFileError


def test_example_nodes_carry_the_gpus_of_the_file() -> None:
    nodes = {n["metadata"]["name"]: n for n in example_nodes(EXAMPLE)}
    assert set(nodes) == {"h100-node-a", "h100-node-b", "a100-node-c"}
    assert nodes["h100-node-b"]["status"]["capacity"]["nvidia.com/gpu"] == "8"
    assert nodes["h100-node-b"]["metadata"]["labels"]["nvidia.com/gpu.memory"] == "81920"
    assert nodes["a100-node-c"]["status"]["capacity"]["nvidia.com/gpu"] == "4"
    assert nodes["a100-node-c"]["metadata"]["labels"][GPU_MEMORY_LABEL] == "40960Mi"
    assert all(n["metadata"]["annotations"]["kwok.x-k8s.io/node"] == "fake" for n in nodes.values())


def test_example_deployments_are_annotated_as_written() -> None:
    deployments = {d["metadata"]["name"]: d for d in example_deployments(EXAMPLE)}
    assert len(deployments) == 30
    llama = deployments["llama-3.1-8b-instruct"]
    assert llama["spec"]["replicas"] == 3
    assert llama["metadata"]["annotations"] == {SIZE_ANNOTATION: "16Gi", RATE_ANNOTATION: "24",
                                                SLO_ANNOTATION: "1"}
    assert deployments["phi-3-mini-4k"]["metadata"]["annotations"][SLO_ANNOTATION] == "500ms"
    assert deployments["gemma-2-9b-it"]["metadata"]["annotations"][SIZE_ANNOTATION] == "18944Mi"
    assert sum(d["spec"]["replicas"] for d in deployments.values()) == 38


@pytest.mark.parametrize("text, size", [
    pytest.param("models: [{name: m, size: 40, requestRate: 1, sloSeconds: 1}]", "40Gi", id="plain number is GiB"),
    pytest.param("models: [{name: m, size: 7.5, requestRate: 1, sloSeconds: 1}]", "7.5Gi", id="fraction of GiB"),
    pytest.param("models: [{name: m, size: 512Mi, requestRate: 1, sloSeconds: 1}]", "512Mi", id="quantity kept"),
])
def test_model_size_becomes_a_quantity(tmp_path: Path, text: str, size: str) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("gpus: [{node: n, index: 0, memory: 80Gi}]\n" + text + "\n")
    [deployment] = example_deployments(path)
    assert deployment["metadata"]["annotations"][SIZE_ANNOTATION] == size


def test_a_bad_cluster_file_is_refused_with_the_field(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("gpus: [{node: n, index: 0, memory: 80Gi}]\nmodels: [{name: m, size: 16Qi, requestRate: 1, "
                    "sloSeconds: 1}]\n")
    with pytest.raises(ClusterFileError, match=r"models\[0\]\.size"):
        example_deployments(path)


@pytest.mark.parametrize("delay, annotations", [
    pytest.param("", {}, id="no start delay: Ready at once, as before"),
    pytest.param("10s", {"e2e.kvsched.io/start-delay": "10s"}, id="every pod starts for 10 s"),
])
def test_a_start_delay_annotates_every_example_pod(delay: str, annotations: dict[str, str]) -> None:
    for d in example_deployments(EXAMPLE, delay):
        assert d["spec"]["template"]["metadata"]["annotations"] == annotations


@pytest.mark.parametrize("argv, env, delay", [
    pytest.param([], {}, "", id="default: none"),
    pytest.param(["--start-delay", "1m30s"], {}, "1m30s", id="flag"),
    pytest.param([], {"KVSCHED_CLUSTER_START_DELAY": "10s"}, "10s", id="environment"),
])
def test_start_delay_option(argv: list[str], env: dict[str, str], delay: str,
                            monkeypatch: pytest.MonkeyPatch) -> None:
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    assert parse_args(argv).start_delay == delay


def test_a_start_delay_that_is_not_a_go_duration_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        parse_args(["--start-delay", "10"])
    assert "--start-delay '10' is not a Go duration" in capsys.readouterr().err


def test_kvsched_is_restarted_when_it_exits_and_counts_as_up_meanwhile(tmp_path: Path) -> None:
    """kvsched exits on a lost lease; `make cluster` restarts it (as the kubelet would) instead of stopping."""
    kubeconfig = tmp_path / "kubeconfig"
    component = kvsched_component([sys.executable, "-c", "import os, sys; print(os.environ['KUBECONFIG']); "
                                   "sys.exit(1)"], tmp_path / "kvsched.log", kubeconfig).start()
    try:
        deadline = time.monotonic() + 10.0
        while component.restarts < 1 and time.monotonic() < deadline:
            assert exited([component]) == []  # exited, but coming back: make cluster keeps running
            time.sleep(0.05)
        assert component.restarts >= 1 and component.exit_codes[0] == 1
    finally:
        component.stop()
    assert exited([component]) == ["kvsched"]  # stopped for good
    log = (tmp_path / "kvsched.log").read_text()
    assert str(kubeconfig) in log and "exited with code 1; restarting in 1s" in log
