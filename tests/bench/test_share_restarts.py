"""bench/share_restarts.py counts the pods the controller's share rule restarts after a re-plan."""
from __future__ import annotations

import pytest

from bench.share_restarts import share_restarts
from kvsched.packer import Gpu, Model, PackOptions, Slot, solve

GPU = [Gpu("n1", 0, 80.0)]
A, B, C = Model("a", 16.0, 4.0, 1.0), Model("b", 16.0, 2.0, 1.0), Model("c", 16.0, 4.0, 1.0)


@pytest.mark.parametrize("after_models, rate_b, restarted", [
    pytest.param([A, B], 2.0, 0, id="nothing changed: no restart"),
    pytest.param([A, B, C], 2.0, 2, id="a third model on the GPU: both holders shrink and restart"),
    pytest.param([A], 2.0, 1, id="a model removed: the one left runs at twice its planned pressure: restarts"),
    pytest.param([A, B], 40.0, 2, id="b's rate x20: b is starved, then a is in the way of b's new share"),
])
def test_share_restarts(after_models: list[Model], rate_b: float, restarted: int) -> None:
    before = solve([A, B], GPU, options=PackOptions(time_budget_s=0.0))
    models = [Model("b", 16.0, rate_b, 1.0) if m.name == "b" else m for m in after_models]
    current = [Slot(p.model, p.replica, p.gpu) for p in before.placements if p.model in {m.name for m in models}]
    after = solve(models, GPU, current=current, options=PackOptions(time_budget_s=0.0))
    assert share_restarts(models, GPU, before, after, 0.05) == restarted
