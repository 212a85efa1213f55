"""KVPR and lower bounds: hand-computed tables, then every bound against brute-force optima."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import assume, example, given, settings

from kvsched.packer import Gpu, Model
from kvsched.packer.bounds import (
    fluid_bound,
    l2_violated,
    memory_class_bound,
    lower_bound,
    per_model_bound,
    pigeonhole_violated,
)
from kvsched.packer.instance import build_instance
from kvsched.packer.kvpr import kvpr, kvpr_array
from tests.packer.brute import brute_force_optimum
from tests.packer.conftest import tiny_cluster


@pytest.mark.parametrize(
    ("load", "weights", "memory", "expected"),
    [
        pytest.param(0.0, 0.0, 80.0, 0.0, id="empty GPU"),
        pytest.param(4.0, 16.0, 80.0, 4.0 / 64.0, id="one 8B model on an H100"),
        pytest.param(0.0, 80.0, 80.0, 0.0, id="zero free memory, no load"),
        pytest.param(1.0, 80.0, 80.0, math.inf, id="zero free memory with load"),
        pytest.param(1.0, 90.0, 80.0, math.inf, id="over memory"),
        pytest.param(3.0, 20.0, 40.0, 0.15, id="heterogeneous: A100 40Gi"),
    ],
)
def test_kvpr_by_hand(load: float, weights: float, memory: float, expected: float) -> None:
    assert kvpr(load, weights, memory) == pytest.approx(expected)
    assert kvpr_array(np.array([load]), np.array([weights]), np.array([memory]))[0] == pytest.approx(expected)


def _arrays(models: list[Model], gpus: list[Gpu]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    inst = build_instance(models, gpus)
    return inst.item_load, inst.item_size, inst.gpu_memory


@pytest.mark.parametrize(
    ("models", "gpus", "fluid", "per_model"),
    [
        pytest.param([], [Gpu("n", 0, 80.0)], 0.0, 0.0, id="empty input"),
        pytest.param([Model("a", 16, 4, 1), Model("b", 16, 4, 1)], [Gpu("n", 0, 80.0), Gpu("n", 1, 80.0)],
                     8 / 128, 4 / 64, id="two equal models, two GPUs"),
        pytest.param([Model("a", 40, 2, 1)], [Gpu("n", 0, 40.0), Gpu("n", 1, 80.0)],
                     2 / 80, 2 / 40, id="heterogeneous: per-model uses the largest GPU"),
        pytest.param([Model("big", 79, 1, 1)], [Gpu("n", 0, 80.0)], 1.0, 1.0, id="one huge model"),
    ],
)
def test_bounds_by_hand(models: list[Model], gpus: list[Gpu], fluid: float, per_model: float) -> None:
    load, size, memory = _arrays(models, gpus)
    assert fluid_bound(load, size, memory) == pytest.approx(fluid)
    assert per_model_bound(load, size, memory) == pytest.approx(per_model)


def test_memory_class_bound_confines_large_models_to_large_gpus() -> None:
    # Two 30 GiB models of load 4 cannot use the 24 GiB GPUs: both sit on the 80 GiB GPU, 20 GiB free.
    models = [Model("a", 30, 4, 1), Model("b", 30, 4, 1)]
    load, size, memory = _arrays(models, [Gpu("n", 0, 24.0), Gpu("n", 1, 24.0), Gpu("n", 2, 80.0)])
    assert memory_class_bound(load, size, memory) == pytest.approx(8 / 20)
    assert fluid_bound(load, size, memory) == pytest.approx(8 / 68)
    assert per_model_bound(load, size, memory) == pytest.approx(4 / 50)
    assert lower_bound(load, size, memory) == pytest.approx(0.4)


def test_pigeonhole_pair_bound_fires_when_three_heavy_models_meet_two_gpus() -> None:
    # Three models of 30 GiB and load 10 on two 80 GiB GPUs: two must share, KVPR >= 20 / 20 = 1.
    load, size, memory = _arrays([Model(f"m{i}", 30, 10, 1) for i in range(3)],
                                 [Gpu("n", 0, 80.0), Gpu("n", 1, 80.0)])
    assert pigeonhole_violated(load, size, 2, 80.0, 0.99)
    assert not pigeonhole_violated(load, size, 2, 80.0, 1.01)
    assert lower_bound(load, size, memory) == pytest.approx(1.0, rel=1e-6)
    # the closed-form bounds alone are far lower
    assert max(fluid_bound(load, size, memory), per_model_bound(load, size, memory)) < 0.5


def test_l2_counts_bins_for_items_above_half_capacity() -> None:
    # At T = 1 the weights are 10 + 45 = 55 > C/2 = 40 for all three: three bins needed, two exist.
    load, size, _ = _arrays([Model(f"m{i}", 45, 10, 1) for i in range(3)], [Gpu("n", 0, 80.0)])
    assert l2_violated(load, size, 2, 80.0, 1.0)
    assert not l2_violated(load, size, 3, 80.0, 1.0)


@settings(max_examples=150, deadline=None)
@given(tiny_cluster())
@example(([Model("m0", 30, 10, 1), Model("m1", 30, 10, 1), Model("m2", 30, 10, 1)],
          [Gpu("n0", 0, 80.0), Gpu("n1", 1, 80.0)]))
def test_every_bound_is_below_the_brute_force_optimum(cluster: tuple[list[Model], list[Gpu]]) -> None:
    models, gpus = cluster
    inst = build_instance(models, gpus)
    optimum = brute_force_optimum(inst)
    assume(math.isfinite(optimum))  # nothing feasible: no bound to check against
    load, size, memory = inst.item_load, inst.item_size, inst.gpu_memory
    tol = 1 + 1e-9
    assert fluid_bound(load, size, memory) <= optimum * tol
    assert per_model_bound(load, size, memory) <= optimum * tol
    assert memory_class_bound(load, size, memory) <= optimum * tol
    assert lower_bound(load, size, memory) <= optimum * tol
    assert lower_bound(load, size, memory, upper=optimum * 2) <= optimum * tol
    # the T-tests must not declare the optimum itself infeasible
    assert not pigeonhole_violated(load, size, inst.n_gpus, float(memory.max()), optimum * tol)
    assert not l2_violated(load, size, inst.n_gpus, float(memory.max()), optimum * tol)
