"""The controller plans with the memory headroom (issue 15, part 1): settings -> DecisionConfig, the reserve on every
GPU of the inventory, each model's engine overhead (default, ModelServing spec.engineOverhead, Deployment
annotation kvsched.io/engine-overhead), the written shares, and the causes and problems the headroom brings."""
from __future__ import annotations

import dataclasses
from collections import defaultdict

import pytest

from kvsched.api.names import ENGINE_OVERHEAD_ANNOTATION, RATE_ANNOTATION, SIZE_ANNOTATION, SLO_ANNOTATION
from kvsched.api.objects import World
from kvsched.controller import DecisionConfig
from kvsched.controller.headroom import least_share, rounded_shares, share_bound
from kvsched.controller.inventory import build_inventory
from kvsched.runtime.controller import decision_config
from kvsched.settings import ControllerSettings
from kvsched.units import memory_gib

from .fake import condition, deployment, node, run, serving, settle

NO_HEADROOM = DecisionConfig(gpu_memory_reserve_gib=0.0, engine_overhead_gib=0.0, engine_context_gib=0.0)


def overhead_deployment(name: str, overhead: str | None, size: str = "16Gi", rate: str = "4"):  # type: ignore[no-untyped-def]
    notes = {SIZE_ANNOTATION: size, RATE_ANNOTATION: rate, SLO_ANNOTATION: "1"}
    if overhead is not None:
        notes[ENGINE_OVERHEAD_ANNOTATION] = overhead
    return deployment(name, annotations=notes)


@pytest.mark.parametrize("settings, fields", [
    pytest.param(ControllerSettings(), (1.0, 3.0, 0.5), id="defaults"),
    pytest.param(ControllerSettings(gpu_memory_reserve_gib=2.0, engine_overhead_gib=0.0, engine_context_gib=0.25),
                 (2.0, 0.0, 0.25), id="set"),
])
def test_decision_config_carries_the_headroom_settings(settings: ControllerSettings,
                                                       fields: tuple[float, float, float]) -> None:
    config = decision_config(settings)
    assert (config.gpu_memory_reserve_gib, config.engine_overhead_gib, config.engine_context_gib) == fields
    assert config.headroom() == type(config.headroom())(*fields)


@pytest.mark.parametrize("field, flag", [
    ("gpu_memory_reserve_gib", "--gpu-memory-reserve-gib"),
    ("engine_overhead_gib", "--engine-overhead-gib"),
    ("engine_context_gib", "--engine-context-gib"),
])
@pytest.mark.parametrize("value", [-1.0, float("nan"), float("inf")])
def test_a_negative_or_non_finite_headroom_setting_is_refused_naming_its_flag(field: str, flag: str,
                                                                              value: float) -> None:
    with pytest.raises(ValueError, match=flag):
        decision_config(ControllerSettings(**{field: value}))


def slots_by_gpu(world: World) -> dict[tuple[str, int], list[tuple[str, float]]]:
    out: dict[tuple[str, int], list[tuple[str, float]]] = defaultdict(list)
    for ms in world.model_servings:
        for s in ms.status.get("slots") or []:
            out[(s["node"], s["gpu"])].append((ms.name, s["memoryFraction"]))
    return out


@pytest.mark.parametrize("config", [
    pytest.param(DecisionConfig(), id="default headroom"),
    pytest.param(DecisionConfig(gpu_memory_reserve_gib=4.0, engine_overhead_gib=6.0, engine_context_gib=1.0),
                 id="large headroom"),
])
def test_status_shares_leave_the_reserve_and_contexts_and_hold_each_overhead(config: DecisionConfig) -> None:
    # Six models of different sizes and loads on two 80 GiB and two 40 GiB GPUs: shared GPUs.
    sizes = {"a": ("16Gi", "8"), "b": ("4Gi", "0.3"), "c": ("30Gi", "2"), "d": ("7Gi", "5"), "e": ("2Gi", "0"),
             "f": ("13Gi", "1")}
    world = World(nodes=(node("big", gpus=2, memory_mib=81920), node("small", gpus=2, memory_mib=40960)),
                  deployments=tuple(deployment(n, size=s, rate=r) for n, (s, r) in sizes.items()))
    world, _ = settle(world, config=config)
    memory = {"big": 80.0, "small": 40.0}
    by_gpu = slots_by_gpu(world)
    assert sum(len(v) for v in by_gpu.values()) == len(sizes)
    shared = 0
    for (node_name, _), slots in by_gpu.items():
        m = memory[node_name]
        bound = share_bound(m, config.gpu_memory_reserve_gib, len(slots) * config.engine_context_gib)
        assert sum(share for _, share in slots) <= bound + 1e-9
        for name, share in slots:
            assert share * m - memory_gib(sizes[name][0]) >= config.engine_overhead_gib - 1e-9, (name, share)
        shared += len(slots) > 1
    assert shared >= 1, "the case should put two models on one GPU"


def test_the_engine_overhead_annotation_sets_the_spec_and_the_share_leaves_it() -> None:
    # One 80 GiB GPU, two models; b's engine needs 10 GiB: its share holds 16 + 10 GiB at least, and with the
    # annotation gone it plans with the default again.
    world = World(nodes=(node("n", gpus=1),),
                  deployments=(overhead_deployment("a", None, rate="40"), overhead_deployment("b", "10Gi", rate="0")))
    world, _ = settle(world)
    specs = {ms.name: ms.spec for ms in world.model_servings}
    assert specs["b"]["engineOverhead"] == "10Gi" and "engineOverhead" not in specs["a"]
    shares = {name: share for slots in slots_by_gpu(world).values() for name, share in slots}
    assert shares["b"] * 80 >= 16 + 10 - 1e-9
    assert shares["b"] * 80 < 16 + 10 + 80 * 0.001 + 1e-9  # no load: nothing beyond weights and overhead
    world = dataclasses.replace(world, deployments=(world.deployments[0], overhead_deployment("b", None, rate="0")))
    world, _ = settle(world)
    b = next(ms for ms in world.model_servings if ms.name == "b")
    assert "engineOverhead" not in b.spec
    assert b.status["slots"][0]["memoryFraction"] * 80 < 16 + 10 - 1


@pytest.mark.parametrize("where, value, reason, says", [
    pytest.param("annotation", "lots", "InvalidAnnotation", ENGINE_OVERHEAD_ANNOTATION, id="bad annotation"),
    pytest.param("annotation", "-2Gi", "InvalidAnnotation", ENGINE_OVERHEAD_ANNOTATION, id="negative annotation"),
    pytest.param("spec", "lots", "InvalidSpec", "spec.engineOverhead", id="bad spec field"),
    pytest.param("spec", "-1Gi", "InvalidSpec", "spec.engineOverhead", id="negative spec field"),
])
def test_a_bad_engine_overhead_makes_the_model_invalid_naming_the_field(where: str, value: str, reason: str,
                                                                        says: str) -> None:
    if where == "annotation":
        world = World(nodes=(node("n"),), deployments=(overhead_deployment("m", value),))
    else:
        ms = serving("m")
        ms = dataclasses.replace(ms, spec={**ms.spec, "engineOverhead": value})
        world = World(nodes=(node("n"),), deployments=(deployment("m", annotations={}),), model_servings=(ms,))
    world, _ = settle(world)
    ms = next(m for m in world.model_servings if m.name == "m")
    invalid = condition(ms, "Invalid")
    assert (invalid["status"], invalid["reason"]) == ("True", reason)
    assert says in invalid["message"] and value in invalid["message"]


def test_weights_plus_overhead_larger_than_every_gpu_less_its_reserve_is_no_room_for_engine() -> None:
    world = World(nodes=(node("n", gpus=2),), deployments=(overhead_deployment("small", None),
                                                           overhead_deployment("fat", "70Gi")))
    world, decisions = settle(world)
    fat = next(ms for ms in world.model_servings if ms.name == "fat")
    unschedulable = condition(fat, "Unschedulable")
    assert (unschedulable["status"], unschedulable["reason"]) == ("True", "NoRoomForEngine")
    assert any(e.reason == "NoRoomForEngine" and e.type == "Warning" for d in decisions for e in d.events)
    small = next(ms for ms in world.model_servings if ms.name == "small")
    assert condition(small, "Placed")["status"] == "True"
    # Without headroom the same model fits (16 + 70 > 80 only with the overhead).
    world, _ = settle(World(nodes=(node("n", gpus=2),), deployments=(overhead_deployment("fat", "0"),)))
    assert condition(world.model_servings[0], "Placed")["status"] == "True"


def test_a_node_whose_gpus_are_not_larger_than_the_reserve_is_left_out_with_an_event() -> None:
    tiny = node("tiny", gpus=1, memory_mib=512)
    decision = run(World(nodes=(node("n", gpus=1), tiny), deployments=(deployment("m"),)))
    assert decision.inventory is not None
    assert [g.node for g in decision.inventory.gpus] == ["n"]
    assert all(g.reserve_gib == 1.0 for g in decision.inventory.gpus)
    assert [(e.target.name, e.reason) for e in decision.events if e.target.kind == "Node"] == [
        ("tiny", "GPUMemoryBelowReserve")]
    # With no reserve, it is planned on.
    inventory = build_inventory([node("n", gpus=1), tiny], [], NO_HEADROOM)
    assert [g.node for g in inventory.gpus] == ["n", "tiny"]


@pytest.mark.parametrize("fractions, least, bound, shares", [
    pytest.param([0.4567, 0.3333], [0.2, 0.2], 0.79, [0.456, 0.333], id="rounded down when that keeps the least"),
    pytest.param([0.25, 0.6], [0.25, 0.2], 0.85, [0.25, 0.6], id="exact values stay"),
    # b's fraction is its least share exactly (no KV): rounded down it would be below; raised, a gives back.
    pytest.param([0.6495, 0.2005], [0.2, 0.2005], 0.85, [0.649, 0.201], id="raised to the least, sum still fits"),
    pytest.param([0.6504, 0.2001], [0.2, 0.2001], 0.8505, [0.649, 0.201], id="raised, and another gives back a step"),
    pytest.param([0.3, 0.2], [0.35, 0.1], 0.9, [0.3, 0.2], id="a fraction below its least is left as it is"),
    # Less than a step of KV memory per replica: raising both cannot fit, so both are rounded down.
    pytest.param([0.4005, 0.4005], [0.4002, 0.4002], 0.801, [0.4, 0.4], id="no room to raise: rounded down"),
])
def test_rounded_shares(fractions: list[float], least: list[float], bound: float, shares: list[float]) -> None:
    got = rounded_shares(fractions, least, bound)
    assert got == pytest.approx(shares)
    assert sum(got) <= bound + 1e-9


@pytest.mark.parametrize("memory, reserve, contexts, bound", [
    (80.0, 1.0, 1.5, 1 - 2.5 / 80), (40.0, 0.0, 0.0, 1.0), (0.0, 1.0, 1.0, 0.0)])
def test_share_bound(memory: float, reserve: float, contexts: float, bound: float) -> None:
    assert share_bound(memory, reserve, contexts) == pytest.approx(bound)


def test_least_share() -> None:
    assert least_share(19.0, 80.0) == pytest.approx(19.0 / 80.0)
    assert least_share(1.0, 0.0) == 1.0
