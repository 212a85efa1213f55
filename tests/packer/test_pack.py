"""try_pack and the mid-pack retune; repair, local search and the exact stage as separate units."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import assume, example, given, settings

from kvsched.packer import Gpu, Model
from kvsched.packer.bounds import lower_bound
from kvsched.packer.exact import pack_exactly, prove_or_improve
from kvsched.packer.greedy import greedy
from kvsched.packer.improve import descend, improve
from kvsched.packer.instance import Instance, build_instance
from kvsched.packer.pack import ORDERS, POLICIES, residual_bound, try_pack
from kvsched.packer.repair import repair
from tests.packer.brute import brute_force_optimum, oracle_max_kvpr, valid
from tests.packer.conftest import tiny_cluster

# Two 80 GiB GPUs; two 40 GiB models of load 4 and three 10 GiB models of load 1. The fluid bound is
# 11 / 50 = 0.22; the optimum is 0.3 (a 40 + two 10s on one GPU: 6 / 20). At T = 0.22 the two big models take
# a GPU each and one small one fits beside them; after 75% of the items no GPU can take the last small model
# at T, and the residual bound (the small model on the GPU holding one big model and nothing else) is exactly
# (4 + 2) / (40 - 20) = 0.3.
RETUNE_CASE = (
    [Model("a", 40, 4, 1), Model("b", 40, 4, 1), Model("c", 10, 1, 1), Model("d", 10, 1, 1),
     Model("e", 10, 1, 1)],
    [Gpu("n", 0, 80.0), Gpu("n", 1, 80.0)],
)


@pytest.mark.parametrize("policy", POLICIES)
def test_retune_fires_on_a_pass_headed_for_failure_and_finishes_at_the_optimum(policy: str) -> None:
    inst = build_instance(*RETUNE_CASE)
    items = range(inst.n_items)
    off = try_pack(inst, items, 0.22, policy=policy, retune=False)  # type: ignore[arg-type]
    assert not off.complete and off.retunes == 0
    on = try_pack(inst, items, 0.22, policy=policy)  # type: ignore[arg-type]
    assert on.complete
    assert on.retunes == 1
    assert on.target == pytest.approx(0.3)
    assert oracle_max_kvpr(inst, on.assign) == pytest.approx(0.3)
    assert valid(inst, on.assign)


def test_retune_does_not_fire_when_t_is_reachable() -> None:
    inst = build_instance(*RETUNE_CASE)
    res = try_pack(inst, range(inst.n_items), 0.31)
    assert res.complete and res.retunes == 0 and res.target == 0.31


@pytest.mark.parametrize(
    ("checkpoints", "threshold", "fires"),
    [
        pytest.param((0.4, 0.75), 0.02, True, id="seed checkpoints"),
        pytest.param((), 0.02, False, id="no checkpoints"),
        pytest.param((0.4,), 0.02, False, id="only 40%: nothing proves T too low yet"),
        pytest.param((0.4, 0.75), 0.5, False, id="threshold above the raise needed"),
    ],
)
def test_checkpoints_and_threshold_are_parameters(checkpoints: tuple[float, ...], threshold: float,
                                                  fires: bool) -> None:
    inst = build_instance(*RETUNE_CASE)
    res = try_pack(inst, range(inst.n_items), 0.22, checkpoints=checkpoints, retune_threshold_ratio=threshold)
    assert (res.retunes > 0) == fires
    assert res.checkpoints == len(checkpoints)


def test_residual_bound_is_computed_on_the_partial_placement() -> None:
    inst = build_instance(*RETUNE_CASE)
    gpu_load = np.array([5.0, 4.0])  # a + c on GPU 0, b on GPU 1
    gpu_weights = np.array([50.0, 40.0])
    bound = residual_bound(inst, [3, 4], gpu_load, gpu_weights, {0: [0], 1: [1], 2: [0]}, 0.22)
    assert bound == pytest.approx(0.3)
    # the same items with nothing placed: the bound on the remaining alone cannot exceed T
    empty = residual_bound(inst, [3, 4], np.zeros(2), np.zeros(2), {}, 0.22)
    assert empty <= 0.22


@settings(max_examples=80, deadline=None)
@given(tiny_cluster())
# Found by hypothesis: least-KVPR put a zero-load model into a loaded GPU's last free GiB (its KVPR formula
# divided by a stand-in 1 where the free memory was 0).
@example(([Model("m0", 2, 1, 0.5), Model("m1", 11, 20, 0.5), Model("m2", 38, 0, 0.5)],
          [Gpu("n0", 0, 40.0), Gpu("n1", 1, 40.0)]))
def test_every_pass_respects_the_t_it_reports(cluster: tuple[list[Model], list[Gpu]]) -> None:
    inst = build_instance(*cluster)
    items = list(range(inst.n_items))
    bound = lower_bound(inst.item_load, inst.item_size, inst.gpu_memory)
    assume(math.isfinite(bound) and bound > 0)  # no load, or weights that fill every GPU: no T to pack at
    for order in ORDERS:
        for policy in POLICIES:
            for target in (bound, bound * 1.3):
                res = try_pack(inst, items, target, order=order, policy=policy)
                assert res.target >= target
                if res.retunes == 0:
                    assert res.target == target
                if res.complete:
                    assert valid(inst, res.assign)
                    assert oracle_max_kvpr(inst, res.assign) <= res.target * (1 + 1e-9)


def _place(inst: Instance, target: float) -> np.ndarray:
    res = try_pack(inst, range(inst.n_items), target, retune=False)
    assert res.complete
    return res.assign


@settings(max_examples=80, deadline=None)
@given(tiny_cluster())
def test_repair_local_search_and_exact_never_break_validity(cluster: tuple[list[Model], list[Gpu]]) -> None:
    inst = build_instance(*cluster)
    start = greedy(inst)
    assume((start >= 0).all() and valid(inst, start))  # the phases start from a complete, valid placement
    value = oracle_max_kvpr(inst, start)
    assume(math.isfinite(value) and value > 0)
    better = improve(inst, start)
    assert valid(inst, better.assign) and better.max_kvpr <= value * (1 + 1e-12)
    assert better.max_kvpr == pytest.approx(oracle_max_kvpr(inst, better.assign), rel=1e-9)
    down = descend(inst, better.assign, 0.0)
    assert valid(inst, down.assign) and down.max_kvpr <= better.max_kvpr * (1 + 1e-12)
    assert down.max_kvpr == pytest.approx(oracle_max_kvpr(inst, down.assign), rel=1e-9)
    fixed = repair(inst, start, value * 0.9)
    if fixed is not None:
        assert valid(inst, fixed)
        assert oracle_max_kvpr(inst, fixed) <= value * 0.9 * (1 + 1e-9)
    optimum = brute_force_optimum(inst)
    exact = prove_or_improve(inst, list(range(inst.n_items)), start, 0.0, 1_000_000)
    assert exact.optimal
    assert exact.max_kvpr == pytest.approx(optimum, rel=1e-9)
    assert oracle_max_kvpr(inst, exact.assign) == pytest.approx(optimum, rel=1e-9)
    assert valid(inst, exact.assign)


def test_exact_search_says_no_below_the_optimum() -> None:
    inst = build_instance(*RETUNE_CASE)
    items = list(range(inst.n_items))
    below, _ = pack_exactly(inst, items, 0.3 * (1 - 1e-6), 10_000)
    at, _ = pack_exactly(inst, items, 0.3, 10_000)
    assert below is None
    assert at is not None and oracle_max_kvpr(inst, at) == pytest.approx(0.3)


def test_exact_search_stops_at_the_first_arrangement_good_enough() -> None:
    inst = build_instance(*RETUNE_CASE)
    items = list(range(inst.n_items))
    start = np.array([0, 1, 0, 0, 0])  # 7 / 10 = 0.7
    full = prove_or_improve(inst, items, start, 0.0, 10_000)
    assert full.optimal and full.max_kvpr == pytest.approx(0.3)
    first = prove_or_improve(inst, items, start, 0.0, 10_000, good_enough=0.7 * (1 - 1e-9))
    assert valid(inst, first.assign)
    assert first.max_kvpr < 0.7 and first.nodes < full.nodes
    assert first.max_kvpr == pytest.approx(oracle_max_kvpr(inst, first.assign))


def test_repair_fixes_a_placement_over_t_by_moving_the_excess() -> None:
    inst = build_instance(*RETUNE_CASE)
    # everything small on GPU 0 next to a: 7 / 10 = 0.7; b alone: 0.1
    crowded = np.array([0, 1, 0, 0, 0])
    fixed = repair(inst, crowded, 0.3)
    assert fixed is not None
    assert oracle_max_kvpr(inst, fixed) <= 0.3 * (1 + 1e-9)
    assert valid(inst, fixed)
    assert repair(inst, crowded, 0.29) is None  # below the optimum nothing can work


def test_repack_peak_finds_what_single_moves_and_swaps_cannot() -> None:
    from kvsched.packer.lns import repack_peak

    # Found by random search over 3-GPU, 6-model cases: local search from the greedy stops at 0.714
    # (load 5 on a GPU with 7 GiB free) while the optimum is 0.412; re-packing three GPUs at once reaches it.
    sizes_rates = [(15, 1), (37, 3), (37, 3), (29, 7), (26, 4), (27, 1)]
    models = [Model(f"m{j}", s, r, 1.0) for j, (s, r) in enumerate(sizes_rates)]
    inst = build_instance(models, [Gpu("n", g, 80.0) for g in range(3)])
    stuck = improve(inst, greedy(inst))
    optimum = brute_force_optimum(inst)
    assert stuck.max_kvpr > optimum * 1.5  # single moves and swaps are stuck
    repacked = repack_peak(inst, stuck.assign, np.random.default_rng(0))
    assert valid(inst, repacked.assign)
    assert repacked.max_kvpr == pytest.approx(optimum, rel=1e-9)
    again = repack_peak(inst, stuck.assign, np.random.default_rng(0))
    assert again.assign.tolist() == repacked.assign.tolist()  # deterministic for the same generator state


@settings(max_examples=60, deadline=None)
@given(tiny_cluster(max_models=4, max_gpus=3))
def test_kicks_keep_plans_valid(cluster: tuple[list[Model], list[Gpu]]) -> None:
    from kvsched.packer.lns import kick

    inst = build_instance(*cluster)
    start = greedy(inst)
    assume((start >= 0).all() and valid(inst, start))
    rng = np.random.default_rng(0)
    for _ in range(5):
        kicked = kick(inst, start, rng, 4)
        assert valid(inst, kicked)
