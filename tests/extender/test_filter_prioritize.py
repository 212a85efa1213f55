"""Filter and prioritize through create_app(...) with an in-memory cache: who passes, who fails with which
reason, resolvable or not, and the scores; in both cache modes (names, or whole Node objects)."""
from __future__ import annotations

from typing import Any

import pytest
from fastapi.testclient import TestClient

from kvsched.extender.app import create_app
from kvsched.metrics import Metrics
from kvsched.settings import ExtenderSettings

from .world import FakeBinder, args, model, node, pod, world

Obj = dict[str, Any]
LLAMA = pod("llama-new", "llama")


def client_for(nodes: list[Obj], models: list[Obj], pods: list[Obj]) -> TestClient:
    return TestClient(create_app(ExtenderSettings(), world(nodes, models, pods), FakeBinder(), Metrics()))


# (nodes, models, holders, pod, candidates, passed, failed {node: substrings}, unresolvable {node: substrings})
FILTER_CASES = [
    pytest.param([node("n1")], [model("llama", "16Gi", [("n1", 0)])], [], LLAMA, [], [], {}, {},
                 id="empty node list"),
    pytest.param([node("n1")], [], [], pod("p", "ghost"), ["n1"], [],
                 {"n1": ["no ModelServing ml/ghost"]}, {}, id="unknown model: everything waits, resolvable"),
    pytest.param([node("n1"), node("n2")], [model("llama", "16Gi", [("n1", 0)])], [], LLAMA, ["n1", "n2"],
                 ["n1"], {}, {"n2": ["no slot of llama planned on this node"]},
                 id="free slot passes, unplanned node is unresolvable"),
    pytest.param([node("n1")], [model("llama", "16Gi", [("n1", 3)])], [pod("llama-old", "llama", "n1", 3)],
                 LLAMA, ["n1"], [], {"n1": ["GPU 3 planned for llama is held by pod ml/llama-old"]}, {},
                 id="slot held by another replica"),
    pytest.param([node("n1")], [model("llama", "16Gi", [("n1", 0)])],
                 [pod("llama-old", "llama", "n1", 0, terminating=True)], LLAMA, ["n1"], [],
                 {"n1": ["held by pod ml/llama-old (terminating)"]}, {},
                 id="a terminating replica still holds its slot"),
    pytest.param([node("n1")], [model("llama", "16Gi", [("n1", 0)]), model("qwen", "70Gi", [("n2", 0)])],
                 [pod("qwen-0", "qwen", "n1", 0)], LLAMA, ["n1"], [],
                 {"n1": ["10.0 GiB of 80.0 GiB free and needs 16.0 GiB", "pod ml/qwen-0 (70.0 GiB) must move"]},
                 {}, id="memory blocked by a pod that must move first"),
    pytest.param([node("n1")], [model("llama", "16Gi", [("n1", 0, 0.2)]), model("qwen", "64Gi", [("n2", 0)])],
                 [pod("qwen-0", "qwen", "n1", 0)], LLAMA, ["n1"], ["n1"], {}, {},
                 id="weights fill the GPU exactly: fits"),
    pytest.param([node("n1")], [model("llama", "16Gi", [("n1", 0, 0.5)]), model("qwen", "16Gi", [("n1", 0, 0.5)])],
                 [pod("qwen-0", "qwen", "n1", 0, fraction="0.600")], LLAMA, ["n1"], [],
                 {"n1": ["GPU 0 planned for llama needs 0.500 of its memory and 0.400 is free",
                         "pod ml/qwen-0 runs with 0.600"]}, {},
                 id="a holder running with a larger share than planned blocks the slot until it restarts"),
    pytest.param([node("n1")], [model("llama", "16Gi", [("n1", 0, 0.4)]), model("qwen", "16Gi", [("n1", 0, 0.6)])],
                 [pod("qwen-0", "qwen", "n1", 0, fraction="0.600")], LLAMA, ["n1"], ["n1"], {}, {},
                 id="planned shares that add up to exactly 1 fit"),
    pytest.param([node("n1")], [model("llama", "16Gi", [("n1", 0, 0.5)]), model("qwen", "48Gi", [("n1", 0, 0.5)])],
                 [pod("qwen-0", "qwen", "n1", 0, fraction="bogus")], LLAMA, ["n1"], [],
                 {"n1": ["pod ml/qwen-0 runs with 0.600"]}, {},
                 id="an unreadable share counts as the holder's weights (48 of 80 GiB)"),
    pytest.param([node("n1")], [model("llama", "16Gi", [("n1", 0)])],
                 [pod("odd", None, "n1", 0)], LLAMA, ["n1"], [],
                 {"n1": ["pod ml/odd (size unknown)"]}, {},
                 id="zero free memory: a holder of unknown size fills the GPU"),
    pytest.param([node("n1")], [model("llama", "16Gi", [("n1", 0), ("n1", 1)])],
                 [pod("llama-a", "llama", "n1", 0)], LLAMA, ["n1"], ["n1"], {}, {},
                 id="one of two planned slots free"),
    pytest.param([node("n2", gpus=2)], [model("llama", "16Gi", [("n2", 5)])], [], LLAMA, ["n2"], [], {},
                 {"n2": ["past the node's 2 GPU(s)"]}, id="plan names a GPU past the node's count"),
    pytest.param([], [model("llama", "16Gi", [("gone", 0)])], [], LLAMA, ["gone"], [], {},
                 {"gone": ["does not know"]}, id="planned node unknown to the cache"),
    pytest.param([node("n1")], [model("llama", "16Gi", [("n1", 0)])],
                 [pod("llama-old", "llama", "n1", 0, phase="Failed")], LLAMA, ["n1"], ["n1"], {}, {},
                 id="a Failed (evicted) pod holds nothing"),
    pytest.param([node("n1")], [model("llama", "16Gi", [("n1", 0)])],
                 [pod("llama-new", "llama", "n1", 0)], LLAMA, ["n1"], ["n1"], {}, {},
                 id="the pod's own slot does not block it (retry)"),
    pytest.param([node("n1"), node("n2")], [], [], pod("web"), ["n1", "n2"], ["n1", "n2"], {}, {},
                 id="unmanaged pod passes everywhere"),
    pytest.param([node("n1")], [model("llama", "16Gi", [("n2", 0)])], [], pod("p", "llama", scheduler="other"),
                 ["n1"], ["n1"], {}, {}, id="model label but another scheduler: unmanaged"),
    pytest.param([node("n1"), node("n2")], [model("llama", "16Gi", [("n1", 0)])], [], LLAMA,
                 ["n1", "n2", "n1", "n2"], ["n1"], {}, {"n2": ["no slot of llama"]}, id="duplicate names answered once"),
]


@pytest.mark.parametrize("nodes, models, holders, p, names, passed, failed, unresolvable", FILTER_CASES)
@pytest.mark.parametrize("cache_mode", ["NodeNames", "Nodes"])
def test_filter(nodes: list[Obj], models: list[Obj], holders: list[Obj], p: Obj, names: list[str],
                passed: list[str], failed: dict[str, list[str]], unresolvable: dict[str, list[str]],
                cache_mode: str) -> None:
    by_name = {n["metadata"]["name"]: n for n in nodes}
    sent = [by_name.get(n, {"metadata": {"name": n}}) for n in names]
    body = args(p, names=names) if cache_mode == "NodeNames" else args(p, nodes=sent)
    response = client_for(nodes, models, holders).post("/filter", json=body)
    assert response.status_code == 200, response.text
    result = response.json()
    if cache_mode == "NodeNames":
        assert result["NodeNames"] == passed and "Nodes" not in result
    else:
        assert [n["metadata"]["name"] for n in result["Nodes"]["items"]] == passed and "NodeNames" not in result
        assert all(n in sent for n in result["Nodes"]["items"])  # whole objects echoed, not rebuilt
    assert set(result["FailedNodes"]) == set(failed)
    for name, parts in failed.items():
        for part in parts:
            assert part in result["FailedNodes"][name]
    assert set(result["FailedAndUnresolvableNodes"]) == set(unresolvable)
    for name, parts in unresolvable.items():
        for part in parts:
            assert part in result["FailedAndUnresolvableNodes"][name]
    assert result.get("Error", "") == ""


LLAMA_N1_N2 = [model("llama", "16Gi", [("n1", 0), ("n2", 0)]), model("qwen", "40Gi", [("n4", 0)])]
LLAMA_N1_N2_N2 = [model("llama", "16Gi", [("n1", 0), ("n2", 0), ("n2", 1)]), model("qwen", "40Gi", [("n4", 0)])]


# (models, holders, gone: pods deleted before the request, pod, candidates, scores by node)
PRIORITIZE_CASES = [
    pytest.param(LLAMA_N1_N2, [], [], LLAMA, [], {}, id="empty node list"),
    pytest.param(LLAMA_N1_N2, [], [], LLAMA, ["n1", "n2"], {"n1": 5, "n2": 5},
                 id="exact tie: two cold empty slots score the same"),
    pytest.param(LLAMA_N1_N2, [], [pod("llama-old", "llama", "n2", 0)], LLAMA, ["n1", "n2", "n3"],
                 {"n1": 5, "n2": 10, "n3": 0}, id="back to the GPU its model's deleted pod left: 10"),
    pytest.param(LLAMA_N1_N2, [], [pod("llama-old", "llama", "n2", 0, phase="Failed")], LLAMA, ["n1", "n2"],
                 {"n1": 5, "n2": 10}, id="an evicted (Failed) pod of the model also left its GPU: 10"),
    pytest.param(LLAMA_N1_N2, [pod("llama-new", "llama", "n2", 0)], [], LLAMA, ["n1", "n2"],
                 {"n1": 5, "n2": 10}, id="the pod's own slot (a retried cycle): 10"),
    pytest.param(LLAMA_N1_N2_N2, [pod("llama-a", "llama", "n2", 1)], [], LLAMA, ["n1", "n2"],
                 {"n1": 5, "n2": 8}, id="warm node: another replica runs on another GPU there: 8"),
    pytest.param(LLAMA_N1_N2, [], [pod("llama-old", "llama", "n2", 3)], LLAMA, ["n1", "n2"],
                 {"n1": 5, "n2": 8}, id="warm node: the model ran on another GPU there: 8"),
    pytest.param(LLAMA_N1_N2, [pod("qwen-0", "qwen", "n1", 0)], [], LLAMA, ["n1", "n2"], {"n1": 4, "n2": 5},
                 id="an empty GPU beats one shared with a serving model"),
    pytest.param(LLAMA_N1_N2_N2, [pod("llama-a", "llama", "n2", 1), pod("qwen-0", "qwen", "n2", 0)], [], LLAMA,
                 ["n1", "n2"], {"n1": 5, "n2": 7}, id="warm node with a shared GPU: 7, still above cold"),
    pytest.param(LLAMA_N1_N2_N2, [pod("llama-a", "llama", "n2", 1)], [pod("llama-old", "llama", "n1", 0)], LLAMA,
                 ["n1", "n2"], {"n1": 10, "n2": 8}, id="the predecessor's GPU beats a warm node"),
    pytest.param(LLAMA_N1_N2, [], [pod("qwen-old", "qwen", "n2", 0)], LLAMA, ["n1", "n2"], {"n1": 5, "n2": 5},
                 id="another model's predecessor does not count"),
    pytest.param(LLAMA_N1_N2, [pod("llama-a", "llama", "n2", 0)], [], LLAMA, ["n1", "n2", "n3"],
                 {"n1": 5, "n2": 1, "n3": 0}, id="planned but held 1, unplanned 0"),
    pytest.param([model("llama", "16Gi", [("n1", 0)]), model("big", "80Gi", [("n4", 0)])],
                 [pod("big-0", "big", "n1", 0)], [], LLAMA, ["n1"], {"n1": 1},
                 id="zero free memory: the planned slot is blocked, 1"),
    pytest.param([model("big", "80Gi", [("n1", 0), ("n2", 0)])], [], [pod("big-old", "big", "n2", 0)],
                 pod("big-new", "big"), ["n1", "n2"], {"n1": 5, "n2": 10},
                 id="one huge model filling a GPU: same order"),
    pytest.param([model("llama", "16Gi", [("n1", 0), ("n3", 7)])], [], [], LLAMA, ["n1", "n3"],
                 {"n1": 5, "n3": 0}, id="a GPU past the node's count (stale plan): neutral"),
    pytest.param(LLAMA_N1_N2, [], [], pod("web"), ["n1", "n3"], {"n1": 0, "n3": 0}, id="unmanaged: neutral"),
    pytest.param(LLAMA_N1_N2, [], [], pod("p", "ghost"), ["n1"], {"n1": 0}, id="unknown model: neutral"),
]


@pytest.mark.parametrize("models, holders, gone, p, names, scores", PRIORITIZE_CASES)
def test_prioritize(models: list[Obj], holders: list[Obj], gone: list[Obj], p: Obj, names: list[str],
                    scores: dict[str, int]) -> None:
    cache = world([node("n1"), node("n2"), node("n3"), node("n4")], models, holders, gone=gone)
    response = TestClient(create_app(ExtenderSettings(), cache, FakeBinder(), Metrics())).post(
        "/prioritize", json=args(p, names=names))
    assert response.status_code == 200, response.text
    result = response.json()
    assert sorted(h["Host"] for h in result) == sorted(names)  # each host once (kube-scheduler reads by Host)
    assert {h["Host"]: h["Score"] for h in result} == scores


def test_filter_of_managed_pod_records_metrics() -> None:
    metrics = Metrics()
    app = create_app(ExtenderSettings(), world([node("n1")], [model("llama", "16Gi", [("n1", 0)])]),
                     FakeBinder(), metrics)
    client = TestClient(app)
    client.post("/filter", json=args(LLAMA, names=["n1"]))
    client.post("/filter", json=args(pod("web"), names=["n1"]))
    client.post("/prioritize", json=args(LLAMA, names=["n1"]))
    text = client.get("/metrics").text
    assert 'kvsched_extender_requests_total{outcome="managed",verb="filter"} 1.0' in text
    assert 'kvsched_extender_requests_total{outcome="unmanaged",verb="filter"} 1.0' in text
    assert 'kvsched_extender_requests_total{outcome="managed",verb="prioritize"} 1.0' in text
    assert 'kvsched_extender_request_duration_seconds_count{verb="filter"} 2.0' in text
