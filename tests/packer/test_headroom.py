"""Memory headroom on a real GPU (issue 15): a per-GPU reserve, a per-replica engine overhead inside the engine's
memory fraction and a per-replica CUDA context outside it.

The invariants, over random plans (docs/packer.md, "Memory on a real GPU"):
- on every GPU, in every order in which its replicas could start, each engine's start-up check passes: the free
  memory it sees (the device's reported total, minus the driver's reservation, minus what the engines already
  running hold and its own CUDA context) is at least its fraction of the reported total, for any split of the
  reserve into a driver reservation and a gap between the GPU's memory and the total its device reports;
- each replica's share minus its weights is at least its engine overhead;
- the fractions on a GPU sum to at most (M - R - contexts) / M;
- KVPR is the load over the memory really left for KV cache, recomputed here from the definitions.
"""

from __future__ import annotations

import itertools
import math

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from kvsched.packer import Gpu, GpuId, InvalidInput, Model, PackOptions, Plan, solve
from kvsched.packer.instance import build_instance
from tests.packer.brute import brute_force_optimum, oracle_kvpr

# Sums of GiB in another order differ by a few ulps: a check may miss by this share of the GPU's memory (86 bytes
# of 80 GiB), never by more. The packer's own MEMORY_TOLERANCE_RATIO.
TOLERANCE_RATIO = 1e-9
# Tiny instances keep every start order enumerable (k! orders for k replicas on a GPU).
FAST = PackOptions(time_budget_s=0.5)


@st.composite
def headroom_cluster(draw: st.DrawFn, max_models: int = 4, max_gpus: int = 3) -> tuple[list[Model], list[Gpu]]:
    """1-4 models (1-2 replicas each) with engine overheads of 0-4 GiB and CUDA contexts of 0-1 GiB, on 1-3 GPUs
    of 24-80 GiB with reserves of 0-3 GiB. Figures are quarters of a GiB or arbitrary floats."""
    gib = st.one_of(st.sampled_from([0.0, 0.25, 0.5, 1.0, 2.0]), st.floats(0.0, 3.0, allow_nan=False))
    n_gpus = draw(st.integers(1, max_gpus))
    gpus = [Gpu(f"n{g % 2}", g, float(draw(st.sampled_from([24, 40, 48, 80]))), reserve_gib=draw(gib))
            for g in range(n_gpus)]
    context = draw(gib) / 3
    models = []
    for j in range(draw(st.integers(1, max_models))):
        models.append(Model(
            f"m{j}",
            float(draw(st.integers(1, 40))),
            float(draw(st.integers(0, 20))),
            float(draw(st.sampled_from([0.5, 1.0, 2.0, 5.0]))),
            draw(st.integers(1, 2)),
            overhead_gib=draw(gib) * 4 / 3,
            context_gib=context,
        ))
    return models, gpus


def on_each_gpu(models: list[Model], gpus: list[Gpu], plan: Plan) -> list[tuple[Gpu, list[tuple[Model, float]]]]:
    """Every GPU of the plan with its replicas as (model, memory fraction)."""
    by_name = {m.name: m for m in models}
    by_id: dict[GpuId, list[tuple[Model, float]]] = {g.id: [] for g in gpus}
    for p in plan.placements:
        by_id[p.gpu].append((by_name[p.model], p.memory_fraction))
    return [(g, by_id[g.id]) for g in gpus]


def start_up_checks_pass(gpu: Gpu, replicas: list[tuple[Model, float]], driver_gib: float, gap_gib: float) -> bool:
    """Whether every engine on `gpu`, started one after another in the order given, passes its start-up check.

    The device reports M - gap in all and holds `driver_gib` before any engine starts; engine k first creates its
    CUDA context (c_k), then checks free >= f_k * reported total (vLLM: "Free memory on device ... is less than
    desired GPU memory utilization"), then takes f_k * reported total, which it never exceeds.
    """
    reported = gpu.memory_gib - gap_gib
    free = reported - driver_gib
    slack = TOLERANCE_RATIO * gpu.memory_gib
    for model, fraction in replicas:
        free -= model.context_gib
        if free < fraction * reported - slack:
            return False
        free -= fraction * reported
    return True


def splits_of(reserve: float, u: float, v: float) -> list[tuple[float, float]]:
    """(driver, gap) splits of a reserve: the corners (all driver, all gap, neither) and one drawn (u, v in
    [0, 1]): driver = u * R, gap = v * (R - driver), so that driver + gap <= R always."""
    driver = u * reserve
    return [(reserve, 0.0), (0.0, reserve), (0.0, 0.0), (driver, v * (reserve - driver))]


@settings(max_examples=150, deadline=None)
@given(headroom_cluster(), st.floats(0, 1), st.floats(0, 1))
@example(([Model("a", 16, 4, 1, overhead_gib=3, context_gib=0.5), Model("b", 23, 0.3, 10, overhead_gib=3,
                                                                        context_gib=0.5)],
          [Gpu("n", 0, 80, reserve_gib=1)]), 1.0, 0.0)
@example(([Model("idle", 20, 0, 1, overhead_gib=2.5, context_gib=0.5)], [Gpu("n", 0, 24, reserve_gib=1)]), 1.0, 0.0)
def test_every_start_order_passes_every_engines_start_up_check(
    cluster: tuple[list[Model], list[Gpu]], u: float, v: float,
) -> None:
    models, gpus = cluster
    plan = solve(models, gpus, options=FAST)
    for gpu, replicas in on_each_gpu(models, gpus, plan):
        for driver, gap in splits_of(gpu.reserve_gib, u, v):
            for order in itertools.permutations(replicas):
                assert start_up_checks_pass(gpu, list(order), driver, gap), (gpu, order, driver, gap)


@settings(max_examples=150, deadline=None)
@given(headroom_cluster())
@example(([Model("a", 16, 4, 1, overhead_gib=3, context_gib=0.5), Model("b", 23, 0.3, 10, overhead_gib=3,
                                                                        context_gib=0.5)],
          [Gpu("n", 0, 80, reserve_gib=1)]))
def test_each_share_holds_weights_and_overhead_and_the_headroom_stays_outside(
    cluster: tuple[list[Model], list[Gpu]],
) -> None:
    models, gpus = cluster
    plan = solve(models, gpus, options=FAST)
    by_model_gpu = {(p.model, p.gpu): p for p in plan.placements}
    for gpu, replicas in on_each_gpu(models, gpus, plan):
        slack = TOLERANCE_RATIO * gpu.memory_gib
        for model, fraction in replicas:
            assert 0 < fraction <= 1
            assert fraction * gpu.memory_gib - model.size_gib >= model.overhead_gib - slack
            kv = by_model_gpu[model.name, gpu.id].kv_memory_gib
            assert kv >= 0
            assert fraction * gpu.memory_gib == pytest.approx(model.size_gib + model.overhead_gib + kv, abs=slack)
        contexts = sum(m.context_gib for m, _ in replicas)
        assert sum(f for _, f in replicas) <= (gpu.memory_gib - gpu.reserve_gib - contexts) / gpu.memory_gib + 1e-12


@settings(max_examples=120, deadline=None)
@given(headroom_cluster())
def test_kvpr_is_the_load_over_the_kv_memory_really_left(cluster: tuple[list[Model], list[Gpu]]) -> None:
    models, gpus = cluster
    plan = solve(models, gpus, options=FAST)
    usage = {g.gpu: g for g in plan.gpus}
    for gpu, replicas in on_each_gpu(models, gpus, plan):
        load = sum(m.replica_load for m, _ in replicas)
        footprint = sum(m.size_gib + m.overhead_gib + m.context_gib for m, _ in replicas)
        assert footprint <= gpu.memory_gib - gpu.reserve_gib + TOLERANCE_RATIO * gpu.memory_gib, "over memory"
        g = usage[gpu.id]
        assert g.kvpr == pytest.approx(oracle_kvpr(load, footprint, gpu.memory_gib - gpu.reserve_gib), rel=1e-9)
        assert g.reserve_gib == gpu.reserve_gib
        assert g.used_memory_gib == pytest.approx(sum(m.size_gib for m, _ in replicas))
        assert g.engine_gib == pytest.approx(sum(m.overhead_gib + m.context_gib for m, _ in replicas))
        assert g.memory_gib == gpu.memory_gib
        assert g.memory_gib == pytest.approx(g.reserve_gib + g.used_memory_gib + g.engine_gib + g.kv_memory_gib)


@settings(max_examples=60, deadline=None)
@given(headroom_cluster(max_models=3, max_gpus=3))
def test_the_plan_is_the_optimum_of_the_instance_with_the_headroom_taken_out(
    cluster: tuple[list[Model], list[Gpu]],
) -> None:
    """Brute force over the same models with sizes m + o + c on GPUs of M - R, built here by hand."""
    models, gpus = cluster
    plan = solve(models, gpus)
    bare = build_instance([Model(m.name, m.size_gib + m.overhead_gib + m.context_gib, m.rate_rps, m.slo_s,
                                 m.replicas) for m in models],
                          [Gpu(g.node, g.index, g.memory_gib - g.reserve_gib) for g in gpus])
    if plan.unplaced:
        return  # the brute force knows no unplaced replicas; test_solve covers them without headroom
    assert plan.max_kvpr == pytest.approx(brute_force_optimum(bare), rel=1e-7)


def test_no_headroom_plans_exactly_as_before() -> None:
    """Zero reserve, overhead and context: the fractions on a GPU sum to 1 and each replica gets its weights plus
    a share of the free memory proportional to its load (the packer's behaviour before issue 15)."""
    plan = solve([Model("a", 16, 4, 1), Model("b", 24, 2, 1)], [Gpu("n", 0, 80)], options=FAST)
    (gpu,) = plan.gpus
    assert gpu.kvpr == pytest.approx(6 / 40)
    fractions = {p.model: p.memory_fraction for p in plan.placements}
    assert fractions == pytest.approx({"a": (16 + 40 * 4 / 6) / 80, "b": (24 + 40 * 2 / 6) / 80})
    assert gpu.reserve_gib == gpu.engine_gib == 0 and gpu.kv_memory_gib == pytest.approx(40)


def test_a_quiet_model_gets_its_overhead_beside_a_busy_one() -> None:
    """The issue's case: falcon-40b-gptq (0.3 req/s, SLO 10 s) next to phi-3-mini (12 req/s, SLO 0.5 s) on an
    80Gi GPU. Without headroom its share held 0.06 GiB beyond its weights; now it holds its 3 GiB overhead."""
    falcon = Model("falcon-40b-gptq", 23, 0.3, 10, overhead_gib=3, context_gib=0.5)
    phi = Model("phi-3-mini-4k", 7782 / 1024, 12, 0.5, overhead_gib=3, context_gib=0.5)
    plan = solve([falcon, phi], [Gpu("n", 0, 80, reserve_gib=1)], options=FAST)
    share = {p.model: p for p in plan.placements}
    assert share[falcon.name].memory_fraction * 80 - falcon.size_gib >= 3
    left = 80 - 1 - (23 + 3.5) - (7782 / 1024 + 3.5)
    assert share[falcon.name].kv_memory_gib == pytest.approx(left * 0.03 / (0.03 + 24))
    assert plan.gpus[0].kvpr == pytest.approx((0.03 + 24) / left)


H100 = 80.0


@pytest.mark.parametrize(
    ("model", "gpu", "cause", "words"),
    [
        pytest.param(Model("huge", 90, 1, 1, overhead_gib=3, context_gib=0.5), Gpu("n", 0, H100, 1.0),
                     "ModelTooLarge", ["90Gi", "80Gi"], id="weights over the largest GPU"),
        pytest.param(Model("tight", 77, 1, 1, overhead_gib=3, context_gib=0.5), Gpu("n", 0, H100, 1.0),
                     "NoRoomForEngine", ["77Gi + 3Gi + 0.5Gi = 80.5Gi", "79Gi", "n/0", "1Gi reserve"],
                     id="weights fit, weights plus overhead do not"),
        pytest.param(Model("reserve", 79.5, 0, 1), Gpu("n", 0, H100, 1.0),
                     "NoRoomForEngine", ["79.5Gi + 0Gi + 0Gi = 79.5Gi", "79Gi"],
                     id="weights fit the GPU but not beside its reserve"),
        pytest.param(Model("exact", 75.5, 1, 1, overhead_gib=3, context_gib=0.5), Gpu("n", 0, H100, 1.0),
                     "NoRoomForKVCache", ["75.5Gi + 3Gi + 0.5Gi = 79Gi", "no room for KV cache"],
                     id="footprint fills the GPU exactly while loaded"),
        pytest.param(Model("exact", 80, 1, 1), Gpu("n", 0, H100),
                     "NoRoomForKVCache", ["80Gi", "no room for KV cache"], id="no headroom: zero free memory"),
    ],
)
def test_unplaced_causes_name_the_numbers(model: Model, gpu: Gpu, cause: str, words: list[str]) -> None:
    plan = solve([model], [gpu], options=FAST)
    (unplaced,) = plan.unplaced
    assert unplaced.cause == cause
    for word in words:
        assert word in unplaced.reason, unplaced.reason


def test_an_idle_replica_may_fill_what_the_reserve_leaves_exactly() -> None:
    plan = solve([Model("idle", 75.5, 0, 1, overhead_gib=3, context_gib=0.5)], [Gpu("n", 0, H100, 1.0)],
                 options=FAST)
    assert not plan.unplaced and plan.max_kvpr == 0
    (p,) = plan.placements
    assert p.memory_fraction * H100 == pytest.approx(75.5 + 3) and p.kv_memory_gib == 0


def test_no_room_next_to_others_names_the_footprint() -> None:
    models = [Model("a", 40, 1, 1, overhead_gib=3, context_gib=0.5), Model("b", 40, 1, 1, overhead_gib=3,
                                                                           context_gib=0.5)]
    plan = solve(models, [Gpu("n", 0, H100, 1.0)], options=FAST)
    (unplaced,) = plan.unplaced
    assert unplaced.cause == "InsufficientCapacity"
    assert "40Gi + 3Gi + 0.5Gi = 43.5Gi" in unplaced.reason


@pytest.mark.parametrize(
    ("make", "field", "why"),
    [
        pytest.param(lambda: Gpu("n", 0, 80, reserve_gib=80), "reserve_gib", "less than", id="reserve = memory"),
        pytest.param(lambda: Gpu("n", 0, 80, reserve_gib=81), "reserve_gib", "less than", id="reserve > memory"),
        pytest.param(lambda: Gpu("n", 0, 80, reserve_gib=-1), "reserve_gib", "negative", id="negative reserve"),
        pytest.param(lambda: Model("a", 16, 1, 1, overhead_gib=-0.5), "overhead_gib", "negative",
                     id="negative overhead"),
        pytest.param(lambda: Model("a", 16, 1, 1, context_gib=math.nan), "context_gib", "finite", id="NaN context"),
        pytest.param(lambda: Model("a", 16, 1, 1, overhead_gib=math.inf), "overhead_gib", "finite",
                     id="infinite overhead"),
    ],
)
def test_bad_headroom_names_the_object_and_field(make: object, field: str, why: str) -> None:
    with pytest.raises(InvalidInput) as err:
        make()  # type: ignore[operator]
    assert err.value.field == field and why in err.value.why
    assert err.value.obj.startswith(("gpu n/0", "model 'a'"))
