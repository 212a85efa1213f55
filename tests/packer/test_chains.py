"""Ejection chains (`place_by_chain`): an item that fits no GPU at a target placed by taking one or two replicas
off, the fewest running ones; checked against KVPRs computed here, at T = 1 where a replica of size 1 GiB and load
w - 1 weighs w (a GPU of M GiB is within T while its weights sum to at most M)."""

from __future__ import annotations

import numpy as np
import pytest

from kvsched.packer import Gpu, Model
from kvsched.packer.instance import build_instance
from kvsched.packer.replan.chains import place_by_chain
from kvsched.packer.replan.fewest import fewest_moves
from kvsched.packer.state import GpuState
from tests.packer.brute import oracle_kvpr

TARGET = 1.0


def _model(name: str, weights: list[float]) -> Model:
    """A model of one replica per weight (all equal): size 1 GiB, load (w - 1) per replica, SLO 1 s."""
    return Model(name, 1.0, (weights[0] - 1.0) * len(weights), 1.0, len(weights))


# Each case: models as (name, replica weight, replicas), where each replica sits now (GPU, -1: unplaced), where
# it runs (-1: new), the GPUs' memory (GiB), the item to place, and the moves the chain may make (None: no chain).
CASES = [
    pytest.param([("a", 6, 1), ("b", 6, 1), ("c", 6, 1), ("d", 5, 2)], [0, 1, 2, 3, -1], [0, 1, 2, 3, -1],
                 [10, 10, 10, 20], 4, 1, id="one running replica leaves to make room"),
    pytest.param([("a", 3, 1), ("f", 3, 1), ("b", 6, 1), ("c", 6, 1), ("d", 5, 2)], [0, 0, 1, 2, 3, -1],
                 [0, -1, 1, 2, 3, -1], [10, 10, 10, 20], 5, 0, id="a free replica leaves first, at no move"),
    pytest.param([("a", 6, 1), ("b", 6, 1), ("d", 5, 2)], [0, 1, 2, -1], [0, 1, 2, -1], [10, 10, 10], 3, None,
                 id="full cluster: no chain"),
    pytest.param([("d", 5, 2)], [0, -1], [0, -1], [10], 1, None, id="one GPU, same model: no chain"),
]


@pytest.mark.parametrize(("spec", "now", "runs", "memory", "x", "moves"), CASES)
def test_place_by_chain(spec: list[tuple[str, float, int]], now: list[int], runs: list[int], memory: list[float],
                        x: int, moves: int | None) -> None:
    models = [_model(name, [w] * n) for name, w, n in spec]
    n_gpus = len(memory)
    gpus = [Gpu("n", g, float(m)) for g, m in enumerate(memory)]
    inst = build_instance(models, gpus)
    start = np.asarray(now, dtype=np.int64)
    run = np.asarray(runs, dtype=np.int64)
    state = GpuState.totals_only(inst, start)
    found = place_by_chain(state, x, run, TARGET)
    out = state.assign
    if moves is None:
        assert not found
        assert (out == start).all(), "a failed chain leaves the assignment as it was"
        return
    assert found and out[x] >= 0
    assert int(((run >= 0) & (out != run)).sum()) == moves
    for g in range(n_gpus):
        on = np.nonzero(out == g)[0]
        assert len({int(inst.item_group[i]) for i in on}) == len(on), "two replicas of one model on one GPU"
        kvpr = oracle_kvpr(float(inst.item_load[on].sum()), float(inst.item_size[on].sum()), float(memory[g]))
        assert kvpr <= TARGET * (1 + 1e-9), (g, kvpr)
    assert ((out >= 0) | (start < 0)).all(), "every placed replica stays placed"


@pytest.mark.parametrize(("spec", "now", "runs", "memory", "x", "moves"), CASES)
def test_fewest_moves_without_repair_places_by_chains_alone(spec: list[tuple[str, float, int]], now: list[int],
                                                            runs: list[int], memory: list[float], x: int,
                                                            moves: int | None) -> None:
    """The quick form `reduce_moves` uses on large re-plans: the shed route and chains, nothing else."""
    models = [_model(name, [w] * n) for name, w, n in spec]
    inst = build_instance(models, [Gpu("n", g, float(m)) for g, m in enumerate(memory)])
    start = np.asarray(now, dtype=np.int64)
    run = np.asarray(runs, dtype=np.int64)
    out = fewest_moves(inst, list(range(inst.n_items)), run, start, TARGET, with_repair=False)
    if moves is None:
        assert out is None
        return
    assert out is not None and (out >= 0).all()
    assert int(((run >= 0) & (out != run)).sum()) == moves
