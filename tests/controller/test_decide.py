"""The decision core against a fake world: what it writes, what it leaves alone, and how bad input ends up."""
from __future__ import annotations

import dataclasses

import pytest

from kvsched.api.names import (
    DEFAULT_SCHEDULER_NAME,
    GPU_MEMORY_LABEL,
    MODEL_LABEL,
    PLANNED_SLOTS_ANNOTATION,
    RATE_ANNOTATION,
    SIZE_ANNOTATION,
    SLO_ANNOTATION,
)
from kvsched.api.objects import ObjectKey, World
from kvsched.controller import Blocked, DecisionConfig, parse_selector

from .fake import EVICT_FIRST, LATER, NO_HOLDERS, apply, bind_planned, condition, deployment, node, pod, run, serving, settle


def _servings(world: World) -> dict[str, object]:
    return {ms.name: ms for ms in world.model_servings}


def three_models() -> World:
    return World(
        nodes=(node("big", gpus=2, memory_mib=81920), node("small", gpus=2, memory_mib=40960)),
        deployments=(deployment("llama", size="16Gi", rate="4", replicas=2),
                     deployment("qwen", size="30Gi", rate="2", replicas=1),
                     deployment("phi", size="8Gi", rate="6", slo="500ms", replicas=1)),
    )


def test_annotated_deployments_get_owned_modelservings_then_statuses() -> None:
    world = three_models()
    first = run(world)
    assert [(c.action, c.key.name) for c in first.owned_changes] == [
        ("create", "llama"), ("create", "phi"), ("create", "qwen")]
    body = next(c.body for c in first.owned_changes if c.key.name == "phi")
    assert body["spec"] == {"workloadRef": {"kind": "Deployment", "name": "phi"}, "modelSize": "8Gi",
                            "requestRate": 6, "sloSeconds": 0.5, "replicas": 1, "fromAnnotations": True}
    assert body["metadata"]["ownerReferences"][0] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "phi",
                                                      "uid": "uid-phi", "controller": True,
                                                      "blockOwnerDeletion": True}
    settled, _ = settle(world)
    llama = _servings(settled)["llama"]
    assert llama.status["placedReplicas"] == 2 and len(llama.status["slots"]) == 2  # type: ignore[attr-defined]
    assert condition(llama, "Placed")["status"] == "True"  # type: ignore[arg-type]
    assert len({(s["node"], s["gpu"]) for s in llama.status["slots"]}) == 2  # type: ignore[attr-defined]


@pytest.mark.parametrize("with_pods", [pytest.param(False, id="nothing running yet"),
                                       pytest.param(True, id="every planned replica running")])
def test_an_unchanged_world_writes_nothing(with_pods: bool) -> None:
    world, _ = settle(three_models())
    if with_pods:
        world, _ = settle(bind_planned(world))
    again = run(world, now=LATER)
    assert again.writes == 0, again
    assert again.events == ()


def test_running_pods_are_kept_where_they_are() -> None:
    world, _ = settle(three_models())
    world = bind_planned(world)
    before = {ms.name: ms.status["slots"] for ms in world.model_servings}
    world, decisions = settle(world)
    assert {ms.name: ms.status["slots"] for ms in world.model_servings} == before
    assert all(d.eviction is None for d in decisions)
    assert all(ms.status["readyReplicas"] == ms.status["replicas"] for ms in world.model_servings)


GOOD = {SIZE_ANNOTATION: "16Gi", RATE_ANNOTATION: "1", SLO_ANNOTATION: "1"}
GOOD_SPEC = {"modelSize": "16Gi", "requestRate": 1, "sloSeconds": 1}


def _with(**changes: str | None) -> dict[str, str]:
    """GOOD with some annotations changed (`model_size="lots"`) or removed (None)."""
    notes = dict(GOOD)
    for key, value in changes.items():
        name = {"model_size": SIZE_ANNOTATION, "request_rate": RATE_ANNOTATION, "slo_seconds": SLO_ANNOTATION}[key]
        if value is None:
            notes.pop(name)
        else:
            notes[name] = value
    return notes


def _add(world: World, *deployments: object) -> World:
    return dataclasses.replace(world, deployments=(*world.deployments, *deployments))  # type: ignore[arg-type]


@pytest.mark.parametrize("annotations, kept, fragments", [
    pytest.param(_with(model_size="lots"), ["requestRate", "sloSeconds"],
                 ["annotation kvsched.io/model-size: 'lots' is not a Kubernetes quantity"], id="unparsable size"),
    pytest.param(_with(model_size="16"), ["requestRate", "sloSeconds"], [SIZE_ANNOTATION, "add a unit"],
                 id="size without a unit"),
    pytest.param(_with(request_rate="-3"), ["modelSize", "sloSeconds"],
                 ["annotation kvsched.io/request-rate: must be a finite number >= 0, got '-3'"], id="negative rate"),
    pytest.param(_with(request_rate="fast"), ["modelSize", "sloSeconds"], ["'fast' is not a number"],
                 id="rate not a number"),
    pytest.param(_with(slo_seconds="0"), ["modelSize", "requestRate"],
                 ["annotation kvsched.io/slo-seconds: must be greater than zero, got '0'"], id="SLO zero"),
    pytest.param(_with(slo_seconds=None), ["modelSize", "requestRate"], [f"{SLO_ANNOTATION} is missing"],
                 id="SLO annotation missing"),
    pytest.param(_with(model_size="lots", request_rate="-3", slo_seconds="0"), [],
                 [f"{SIZE_ANNOTATION}: 'lots'", f"{RATE_ANNOTATION}: must be a finite number >= 0, got '-3'",
                  f"{SLO_ANNOTATION}: must be greater than zero, got '0'"], id="all three bad, all named"),
])
def test_bad_annotations_get_an_owned_invalid_modelserving_and_leave_the_others_planned(
        annotations: dict[str, str], kept: list[str], fragments: list[str]) -> None:
    world = _add(three_models(), deployment("bad", annotations=annotations, replicas=2))
    first = run(world)
    (create,) = [c for c in first.owned_changes if c.key.name == "bad"]
    assert create.action == "create"
    assert create.body["metadata"]["ownerReferences"] == [{
        "apiVersion": "apps/v1", "kind": "Deployment", "name": "bad", "uid": "uid-bad", "controller": True,
        "blockOwnerDeletion": True}]
    assert create.body["spec"] == {"workloadRef": {"kind": "Deployment", "name": "bad"}, "replicas": 2,
                                   "fromAnnotations": True, **{k: GOOD_SPEC[k] for k in kept}}
    (event,) = [e for e in first.events if e.target.name == "bad" and e.type == "Warning"]
    assert (event.reason, event.target.kind) == ("InvalidAnnotation", "Deployment")
    assert all(f in event.message for f in fragments), event.message
    assert first.model_states["invalid"] == 1

    settled, decisions = settle(world)
    assert decisions[-1].writes == 0
    assert all(d.model_states["invalid"] == 1 for d in decisions), [d.model_states for d in decisions]
    bad = _servings(settled)["bad"]
    invalid, placed = condition(bad, "Invalid"), condition(bad, "Placed")  # type: ignore[arg-type]
    assert (invalid["status"], invalid["reason"]) == ("True", "InvalidAnnotation")
    assert all(f in invalid["message"] for f in fragments), invalid["message"]
    assert (placed["status"], placed["reason"]) == ("False", "InvalidAnnotation")
    status = bad.status  # type: ignore[attr-defined]
    assert (status["replicas"], status["placedReplicas"], status["slots"]) == (2, 0, [])
    assert all(p.key.name != "bad" for d in decisions for p in d.deployment_patches)
    ms_events = [e for d in decisions for e in d.events if e.target.kind == "ModelServing" and e.target.name == "bad"]
    assert [(e.type, e.reason) for e in ms_events] == [("Warning", "InvalidAnnotation")]
    others = [ms for ms in settled.model_servings if ms.name != "bad"]
    assert sorted(ms.name for ms in others) == ["llama", "phi", "qwen"]
    assert all(condition(ms, "Placed")["status"] == "True" for ms in others)


@pytest.mark.parametrize("steps, spec, invalid, placed", [
    pytest.param([_with(model_size="lots"), GOOD], GOOD_SPEC, None, 2, id="never valid, then fixed: placed"),
    pytest.param([_with(model_size="lots", request_rate="-3"), _with(request_rate="-3")],
                 {"modelSize": "16Gi", "sloSeconds": 1}, RATE_ANNOTATION, 0,
                 id="never valid, size fixed: size written, rate still left out"),
    pytest.param([GOOD, _with(request_rate="-3")], GOOD_SPEC, RATE_ANNOTATION, 2,
                 id="valid, rate turns bad: last good rate kept, still placed"),
    pytest.param([GOOD, _with(model_size="30Gi", request_rate="-3")],
                 {**GOOD_SPEC, "modelSize": "30Gi"}, RATE_ANNOTATION, 2,
                 id="valid, size changed and rate bad: new size, last good rate"),
    pytest.param([GOOD, _with(slo_seconds=None)], GOOD_SPEC, f"{SLO_ANNOTATION} is missing", 2,
                 id="valid, SLO annotation removed: last good SLO kept"),
])
def test_owned_spec_follows_each_good_annotation_and_keeps_the_last_good_value(
        steps: list[dict[str, str]], spec: dict[str, object], invalid: str | None, placed: int) -> None:
    world = _add(three_models(), deployment("m", replicas=2, annotations=steps[0]))
    for notes in steps:
        world = dataclasses.replace(world, deployments=tuple(
            dataclasses.replace(d, annotations=notes) if d.name == "m" else d for d in world.deployments))
        world, decisions = settle(world)
        assert decisions[-1].writes == 0
        assert not [e for d in decisions for e in d.events if e.reason == "InvalidSpec"]
    m = _servings(world)["m"]
    assert m.spec == {"workloadRef": {"kind": "Deployment", "name": "m"}, "replicas": 2,  # type: ignore[attr-defined]
                      "fromAnnotations": True, **spec}
    cond = condition(m, "Invalid")  # type: ignore[arg-type]
    if invalid is None:
        assert (cond["status"], cond["reason"]) == ("False", "Valid")
        assert condition(m, "Placed")["status"] == "True"  # type: ignore[arg-type]
    else:
        assert (cond["status"], cond["reason"]) == ("True", "InvalidAnnotation")
        assert invalid in cond["message"]
    assert m.status["placedReplicas"] == placed  # type: ignore[attr-defined]
    assert decisions[0].model_states["invalid"] == (0 if invalid is None else 1)


def test_annotations_turning_bad_keep_the_last_good_spec_and_placement() -> None:
    world, _ = settle(three_models())
    before = _servings(world)["qwen"].status["slots"]  # type: ignore[attr-defined]
    world = dataclasses.replace(world, deployments=tuple(
        dataclasses.replace(d, annotations={**d.annotations, RATE_ANNOTATION: "-1"}) if d.name == "qwen"
        else d for d in world.deployments))
    decision = run(world, now=LATER)
    assert decision.owned_changes == ()
    world = apply(world, decision)
    qwen = _servings(world)["qwen"]
    invalid = condition(qwen, "Invalid")  # type: ignore[arg-type]
    assert (invalid["status"], invalid["reason"]) == ("True", "InvalidAnnotation")
    assert RATE_ANNOTATION in invalid["message"]
    assert qwen.status["slots"] == before  # type: ignore[attr-defined]
    assert [e.reason for e in decision.events if e.target.name == "qwen"] == ["InvalidAnnotation"]


def test_cordoned_node_replicas_are_replanned_and_evicted_one_at_a_time() -> None:
    world, _ = settle(three_models())
    world, _ = settle(bind_planned(world))
    on_big = sorted(p.name for p in world.pods if p.node == "big")
    assert on_big
    nodes = tuple(dataclasses.replace(n, unschedulable=True) if n.name == "big" else n for n in world.nodes)
    nodes = (*nodes, node("spare", gpus=2, memory_mib=81920))
    world = dataclasses.replace(world, nodes=nodes)
    decision = run(world, EVICT_FIRST, now=LATER)
    for ms in apply(world, decision).model_servings:
        assert all(s["node"] != "big" for s in ms.status["slots"])
    assert decision.eviction is not None and decision.eviction.pod.name in on_big
    assert decision.eviction.source.node == "big"
    migrating = [w for w in decision.statuses if any(
        c["type"] == "Migrating" and c["status"] == "True" for c in w.status["conditions"])]
    assert migrating


def test_next_eviction_waits_for_the_replacement() -> None:
    world, _ = settle(three_models())
    world, _ = settle(bind_planned(world))
    nodes = tuple(dataclasses.replace(n, ready=False) if n.name == "big" else n for n in world.nodes)
    world = dataclasses.replace(world, nodes=(*nodes, node("spare", gpus=2, memory_mib=81920)))
    first = run(world, EVICT_FIRST, now=LATER)
    assert first.eviction is not None
    evicted = first.eviction.pod.key
    # The evicted pod is terminating and its replacement will start on node spare, which has its one start
    # (--max-restarting-per-node=1); with --max-restarting=1 the cluster has its one restart.
    world = apply(world, dataclasses.replace(first, evictions=()))
    world = dataclasses.replace(world, pods=tuple(dataclasses.replace(p, deleting=True) if p.key == evicted else p
                                                  for p in world.pods))
    second = run(world, EVICT_FIRST, now=LATER)
    assert second.eviction is None and second.waiting is not None
    assert "disruption budget" in second.waiting and "node spare" in second.waiting
    assert second.restarting == 1
    serial = run(world, dataclasses.replace(EVICT_FIRST, max_restarting=1), now=LATER)
    assert serial.eviction is None and serial.waiting is not None and "1 pod(s) restarting" in serial.waiting


def test_a_refused_eviction_is_reported_and_not_retried_before_its_backoff() -> None:
    world, _ = settle(three_models())
    world, _ = settle(bind_planned(world))
    nodes = tuple(dataclasses.replace(n, unschedulable=True) if n.name == "small" else n for n in world.nodes)
    world = dataclasses.replace(world, nodes=(*nodes, node("spare", gpus=2, memory_mib=40960)))
    first = run(world, EVICT_FIRST, now=LATER)
    assert first.eviction is not None
    pods_on_small = [p for p in world.pods if p.node == "small"]
    blocked = {p.key: Blocked("EvictionBlocked", "Cannot evict pod as it would violate the pod's disruption "
                              "budget.", retry_at=100.0) for p in pods_on_small}
    refused = run(world, EVICT_FIRST, now=LATER, clock_s=50.0, blocked=blocked)
    assert refused.eviction is None
    reasons = {c["reason"] for w in refused.statuses for c in w.status["conditions"] if c["type"] == "Migrating"}
    assert "EvictionBlocked" in reasons
    retried = run(world, EVICT_FIRST, now=LATER, clock_s=150.0, blocked=blocked)
    assert retried.eviction is not None


@pytest.mark.parametrize("size, cause", [
    pytest.param("100Gi", "ModelTooLarge", id="bigger than every GPU"),
    pytest.param("80Gi", "NoRoomForEngine", id="weights fill the largest GPU: no room for the engine's headroom"),
    # 75.5 + 3 (overhead) + 0.5 (context) = 80 - 1 (reserve): the default headroom fits exactly, no KV memory left
    pytest.param("75.5Gi", "NoRoomForKVCache", id="weights and engine fill the largest GPU but its reserve"),
])
def test_model_too_large_is_unschedulable_and_others_placed(size: str, cause: str) -> None:
    world = dataclasses.replace(three_models(), deployments=(*three_models().deployments,
                                                             deployment("huge", size=size)))
    world, decisions = settle(world)
    huge = _servings(world)["huge"]
    unschedulable = condition(huge, "Unschedulable")  # type: ignore[arg-type]
    assert (unschedulable["status"], unschedulable["reason"]) == ("True", cause)
    assert condition(huge, "Placed")["status"] == "False"  # type: ignore[arg-type]
    assert huge.status["placedReplicas"] == 0 and huge.status["kvpr"] is None  # type: ignore[attr-defined]
    assert any(e.reason == cause and e.type == "Warning" for d in decisions for e in d.events)
    others = [ms for ms in world.model_servings if ms.name != "huge"]
    assert all(condition(ms, "Placed")["status"] == "True" for ms in others)


@pytest.mark.parametrize("labels, reason", [
    pytest.param({GPU_MEMORY_LABEL: "eighty"}, "InvalidGPUMemoryLabel", id="override not a quantity"),
    pytest.param({"nvidia.com/gpu.memory": "lots"}, "InvalidGPUMemoryLabel", id="GFD label not MiB"),
])
def test_a_bad_node_label_leaves_that_node_out_with_an_event(labels: dict[str, str], reason: str) -> None:
    bad = node("bad", gpus=4, memory_mib=81920)
    bad = dataclasses.replace(bad, labels={**bad.labels, **labels})
    world = dataclasses.replace(three_models(), nodes=(*three_models().nodes, bad))
    world, decisions = settle(world)
    assert all(s["node"] != "bad" for ms in world.model_servings for s in ms.status["slots"])
    (event,) = {(e.target.kind, e.target.name, e.reason) for d in decisions for e in d.events
                if e.target.kind == "Node"}
    assert event == ("Node", "bad", reason)


def test_missing_workload_is_invalid() -> None:
    world = World(nodes=(node("n"),), model_servings=(serving("ghost", workload="nowhere"),))
    decision = run(world)
    (write,) = decision.statuses
    invalid = next(c for c in write.status["conditions"] if c["type"] == "Invalid")
    assert (invalid["status"], invalid["reason"]) == ("True", "WorkloadNotFound")
    assert "nowhere" in invalid["message"]
    assert decision.deployment_patches == ()


def test_user_modelserving_with_bad_size_is_invalid_and_others_planned() -> None:
    world = World(nodes=(node("n"),),
                  deployments=(deployment("a", annotations={}), deployment("b", annotations={})),
                  model_servings=(serving("a", size=16), serving("b", size="16Gi")))
    world, _ = settle(world)
    a, b = _servings(world)["a"], _servings(world)["b"]
    assert condition(a, "Invalid")["reason"] == "InvalidSpec"  # type: ignore[arg-type]
    assert "spec.modelSize" in condition(a, "Invalid")["message"]  # type: ignore[arg-type]
    assert condition(b, "Placed")["status"] == "True"  # type: ignore[arg-type]


@pytest.mark.parametrize("rate, slo, via", [
    pytest.param("1e308", "0.5", "annotations", id="annotated rate 1e308, SLO 0.5 s: infinite load"),
    pytest.param("1e300", "0.000001", "annotations", id="annotated rate 1e300, SLO 1 us"),
    pytest.param(1e308, 0.5, "spec", id="ModelServing rate 1e308, SLO 0.5 s"),
    pytest.param(2e10, 0.001, "spec", id="ModelServing load above the packer's limit"),
])
def test_a_model_whose_load_is_too_large_is_invalid_and_the_others_still_placed(
        rate: object, slo: object, via: str) -> None:
    """Issue 16: an infinite load made the packer raise on every round, so nothing was planned for any tenant.
    Annotated, the rate is an InvalidAnnotation and left out of the owned ModelServing's spec (the CRD refuses a
    spec whose load is above 1e12, so writing it would fail on every round)."""
    if via == "annotations":
        bad = deployment("poison", namespace="tenant-a", rate=str(rate), slo=str(slo))
        world = World(nodes=(node("n", gpus=2),), deployments=(bad, deployment("good", namespace="tenant-b")))
    else:
        world = World(nodes=(node("n", gpus=2),),
                      deployments=(deployment("poison", namespace="tenant-a", annotations={}),
                                   deployment("good", namespace="tenant-b", annotations={})),
                      model_servings=(serving("poison", namespace="tenant-a", rate=rate, slo=slo),
                                      serving("good", namespace="tenant-b")))
    world, _ = settle(world)
    poison, good = _servings(world)["poison"], _servings(world)["good"]
    invalid = condition(poison, "Invalid")
    if via == "annotations":
        assert (invalid["status"], invalid["reason"]) == ("True", "InvalidAnnotation")  # type: ignore[index]
        assert f"annotation {RATE_ANNOTATION}: divided by {SLO_ANNOTATION}" in invalid["message"]  # type: ignore
        assert "requestRate" not in poison.spec and poison.spec["sloSeconds"] == float(slo)  # type: ignore
    else:
        assert (invalid["status"], invalid["reason"]) == ("True", "InvalidSpec")  # type: ignore[index]
        assert "spec.requestRate" in invalid["message"]  # type: ignore[index]
    assert condition(poison, "Placed")["status"] == "False"  # type: ignore[arg-type]
    assert condition(good, "Placed")["status"] == "True"  # type: ignore[arg-type]
    assert good.status["placedReplicas"] == 1  # type: ignore[attr-defined]


@pytest.mark.parametrize("length, planned", [(63, True), (64, False), (120, False)])
def test_a_deployment_whose_name_cannot_be_a_label_value_is_invalid_and_its_template_untouched(
        length: int, planned: bool) -> None:
    """Issue 16: a Deployment name of 64 characters or more made the model label invalid; the template patch was
    refused on every round while the status said Placed. The CRD refuses a ModelServing of that name, so none is
    created: the Deployment carries the problem (a Warning event, counted invalid) and the others are planned."""
    name = ("m" * length)[:length]
    world, decisions = settle(World(nodes=(node("n", gpus=2),),
                                    deployments=(deployment(name), deployment("good"))))
    good = _servings(world)["good"]
    patched = {p.key.name for d in decisions for p in d.deployment_patches}
    assert condition(good, "Placed")["status"] == "True"  # type: ignore[arg-type]
    if planned:
        assert condition(_servings(world)[name], "Placed")["status"] == "True"  # type: ignore[arg-type]
        assert name in patched
    else:
        assert name not in _servings(world)
        assert not [c for d in decisions for c in d.owned_changes if c.key.name == name]
        [event] = {e for e in decisions[-1].events if e.target.name == name}
        assert (event.type, event.reason) == ("Warning", "InvalidName")
        assert f"{length} characters" in event.message and "63" in event.message
        assert decisions[-1].model_states["invalid"] == 1
        assert name not in patched and "good" in patched


def test_a_model_serving_whose_name_cannot_be_a_label_value_is_invalid() -> None:
    """A ModelServing of 64 characters (the CRD refuses it; an older CRD did not) is InvalidName, not planned,
    and its Deployment's template is left alone."""
    name = "m" * 64
    world, decisions = settle(World(nodes=(node("n", gpus=2),),
                                    deployments=(deployment(name, annotations={}), deployment("good")),
                                    model_servings=(serving(name),)))
    invalid = condition(_servings(world)[name], "Invalid")
    assert (invalid["status"], invalid["reason"]) == ("True", "InvalidName")  # type: ignore[index]
    assert "64 characters" in invalid["message"]  # type: ignore[index]
    assert condition(_servings(world)[name], "Placed")["status"] == "False"  # type: ignore[arg-type]
    assert name not in {p.key.name for d in decisions for p in d.deployment_patches}


def test_unmanaged_gpu_pods_withhold_whole_gpus() -> None:
    world = World(nodes=(node("n", gpus=2),), deployments=(deployment("m", replicas=2),),
                  pods=(pod("other", "", "n", None, scheduler="default-scheduler", gpu_request=1),))
    world, decisions = settle(world)
    ms = _servings(world)["m"]
    assert ms.status["placedReplicas"] == 1  # type: ignore[attr-defined]
    assert condition(ms, "Unschedulable")["reason"] == "TooFewGPUs"  # type: ignore[arg-type]
    assert decisions[-1].inventory is not None and decisions[-1].inventory.withheld == {"n": (1,)}


@pytest.mark.parametrize("config, gt_mib, overrides", [
    # 40 GiB of weights + 3 GiB overhead + 0.5 GiB context + 1 GiB reserve = 44.5 GiB = 45568 MiB
    pytest.param(DecisionConfig(), "45568", ["45Gi", "48Gi"], id="default headroom: M - R > weights + o + c"),
    pytest.param(DecisionConfig(gpu_memory_reserve_gib=0.0, engine_overhead_gib=0.0, engine_context_gib=0.0),
                 "40960", ["44Gi", "45Gi", "48Gi"], id="no headroom: a GPU larger than the weights"),
])
def test_template_patch_sets_scheduler_label_env_affinity_and_strategy_once(config: DecisionConfig, gt_mib: str,
                                                                            overrides: list[str]) -> None:
    world = World(nodes=(node("big", memory_mib=81920), node("small", memory_mib=40960),
                         dataclasses.replace(node("over"), labels={GPU_MEMORY_LABEL: "48Gi"}),
                         dataclasses.replace(node("over45"), labels={GPU_MEMORY_LABEL: "45Gi"}),
                         dataclasses.replace(node("over44"), labels={GPU_MEMORY_LABEL: "44Gi"})),
                  deployments=(deployment("m", size="40Gi"),))
    world, decisions = settle(world, config=config)
    patches = [p for d in decisions for p in d.deployment_patches]
    assert len(patches) == 1 and patches[0].rollout
    dep = world.deployments[0]
    spec = dep.template["spec"]
    assert spec["schedulerName"] == DEFAULT_SCHEDULER_NAME
    assert dep.template["metadata"]["labels"] == {"app": "m", MODEL_LABEL: "m"}
    terms = spec["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
    assert terms == [
        {"matchExpressions": [{"key": "nvidia.com/gpu.memory", "operator": "Gt", "values": [gt_mib]},
                              {"key": GPU_MEMORY_LABEL, "operator": "DoesNotExist"}]},
        {"matchExpressions": [{"key": GPU_MEMORY_LABEL, "operator": "In", "values": overrides}]},
    ]
    env = {e["name"]: e["valueFrom"]["fieldRef"]["fieldPath"] for e in spec["containers"][0]["env"]}
    assert env == {"NVIDIA_VISIBLE_DEVICES": "metadata.annotations['kvsched.io/visible-devices']",
                   "KVSCHED_GPU_MEMORY_FRACTION": "metadata.annotations['kvsched.io/gpu-memory-fraction']"}
    assert dep.strategy == {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 0, "maxUnavailable": 1}}
    allowed = {"big", "over", "over45"} | ({"over44"} if "44Gi" in overrides else set())
    assert all(s["node"] in allowed for s in world.model_servings[0].status["slots"])


def test_affinity_follows_the_node_selector_and_does_not_change_when_a_node_is_cordoned() -> None:
    config = DecisionConfig(node_selector=parse_selector("pool=gpu"), gpu_holders=False)
    pool = {"pool": "gpu"}
    world = World(nodes=(node("a", labels=pool), node("b", labels=pool), node("outside")),
                  deployments=(deployment("m", replicas=2),))
    world, _ = settle(world, config=config)
    slots = world.model_servings[0].status["slots"]
    assert {s["node"] for s in slots} <= {"a", "b"}
    terms = world.deployments[0].template["spec"]["affinity"]["nodeAffinity"][
        "requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
    assert terms[0]["matchExpressions"][0] == {"key": "pool", "operator": "In", "values": ["gpu"]}
    cordoned = dataclasses.replace(world, nodes=tuple(dataclasses.replace(n, unschedulable=True) if n.name == "a"
                                                      else n for n in world.nodes))
    decision = run(cordoned, config=config, now=LATER)
    assert decision.deployment_patches == ()


def test_deployment_without_annotations_deletes_its_owned_modelserving() -> None:
    world, _ = settle(three_models())
    world = dataclasses.replace(world, deployments=tuple(dataclasses.replace(d, annotations={}) if d.name == "phi"
                                                         else d for d in world.deployments))
    decision = run(world, now=LATER)
    assert [(c.action, c.key) for c in decision.owned_changes] == [("delete", ObjectKey("ns", "phi"))]


def test_replica_count_follows_the_deployment() -> None:
    world, _ = settle(three_models())
    scaled = dataclasses.replace(next(d for d in world.deployments if d.name == "llama"), replicas=3)
    world = dataclasses.replace(world, deployments=tuple(scaled if d.name == "llama" else d
                                                         for d in world.deployments))
    world, decisions = settle(world)
    assert [(c.action, c.body["spec"]["replicas"]) for c in decisions[0].owned_changes] == [("patch", 3)]
    assert _servings(world)["llama"].status["placedReplicas"] == 3  # type: ignore[attr-defined]


def test_empty_world_writes_nothing() -> None:
    decision = run(World())
    assert decision.writes == 0 and decision.plan is None and decision.events == ()


@pytest.mark.parametrize("first", [pytest.param("a", id="plan orders a first"),
                                   pytest.param("b", id="plan orders b first")])
def test_evictions_follow_the_plans_ordered_steps(first: str) -> None:
    from kvsched.packer import GpuId, GpuUsage, MigrationStep, Placement, Plan

    world = World(nodes=(node("n", gpus=4),), deployments=(deployment("a"), deployment("b")))
    world, _ = settle(world)
    world = dataclasses.replace(world, pods=(pod("a-0", "a", "n", 2), pod("b-0", "b", "n", 3)))
    moves = {"a": MigrationStep("ns/a", 0, GpuId("n", 2), GpuId("n", 0)),
             "b": MigrationStep("ns/b", 0, GpuId("n", 3), GpuId("n", 1))}
    order = (moves[first], moves["b" if first == "a" else "a"])
    plan = Plan(max_kvpr=0.1, lower_bound=0.1, retunes=0, solve_seconds=0.0,
                placements=(Placement("ns/a", 0, GpuId("n", 0), 0.5), Placement("ns/b", 0, GpuId("n", 1), 0.5)),
                gpus=tuple(GpuUsage(GpuId("n", i), 80.0, 0.1, 16.0, ()) for i in range(4)), steps=order)
    from kvsched.controller import decide

    decision = decide(world, EVICT_FIRST, lambda m, g, c, p: plan, now=LATER)
    assert decision.eviction is not None and decision.eviction.pod.name == f"{first}-0"
    assert [s.pod.name for s in decision.steps] == [f"{first}-0", f"{'b' if first == 'a' else 'a'}-0"]


def test_pending_pods_are_nudged_when_their_model_has_a_usable_slot_and_only_once() -> None:
    world, _ = settle(three_models())
    pending = (pod("llama-x", "llama", None, None), pod("qwen-x", "qwen", None, None))
    world = dataclasses.replace(world, pods=pending)
    decision = run(world, now=LATER)
    assert {n.pod.name for n in decision.nudges} == {"llama-x", "qwen-x"}
    assert decision.writes == len(decision.nudges)  # nothing else changed
    digests = {n.pod: n.digest for n in decision.nudges}
    nudged = tuple(dataclasses.replace(p, annotations={PLANNED_SLOTS_ANNOTATION: digests[p.key]})
                   for p in pending)
    assert run(dataclasses.replace(world, pods=nudged), now=LATER).writes == 0
    # A pod whose model has no free slot (every slot held) is not nudged: the scheduler could not place it.
    world, _ = settle(bind_planned(world))
    extra = pod("llama-y", "llama", None, None)
    assert run(dataclasses.replace(world, pods=(*world.pods, extra)), now=LATER).nudges == ()


def test_a_terminating_pod_on_a_deleted_node_holds_up_no_step() -> None:
    """A deleted Node's pods never finish terminating (no kubelet; PodGC deletes them about 40 s later): they
    count neither as restarting nor as holding a GPU busy, while one on a live node does."""
    world, _ = settle(three_models())
    world, _ = settle(bind_planned(world))
    stopping = next(p for p in world.pods if p.node == "big")
    pods = tuple(dataclasses.replace(p, deleting=True) if p.key == stopping.key else p for p in world.pods)
    nodes = tuple(dataclasses.replace(n, unschedulable=True) if n.name == "small" else n for n in world.nodes)
    world = dataclasses.replace(world, pods=pods, nodes=(*nodes, node("spare", gpus=2, memory_mib=81920)))
    serial = dataclasses.replace(EVICT_FIRST, max_restarting=1)
    held = run(world, serial, now=LATER)
    assert held.eviction is None and held.waiting is not None and "1 pod(s) restarting" in held.waiting
    lost = dataclasses.replace(world, nodes=tuple(n for n in world.nodes if n.name != "big"))
    freed = run(lost, serial, now=LATER)
    assert freed.eviction is not None and freed.eviction.source.node == "small"
