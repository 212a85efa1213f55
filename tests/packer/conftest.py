"""Shared hypothesis strategies for packer tests: tiny random instances with heterogeneous GPUs."""

from __future__ import annotations

from hypothesis import strategies as st

from kvsched.packer import Gpu, Model


@st.composite
def tiny_cluster(draw: st.DrawFn, max_models: int = 4, max_gpus: int = 3,
                 max_replicas: int = 2) -> tuple[list[Model], list[Gpu]]:
    """1-4 models (1-2 replicas each, at most 6 replicas) on 1-3 GPUs of 24-80 GiB; sizes 1-40 GiB."""
    n_gpus = draw(st.integers(1, max_gpus))
    gpus = [Gpu(f"n{g % 2}", g, float(draw(st.sampled_from([24, 40, 48, 80])))) for g in range(n_gpus)]
    n_models = draw(st.integers(1, max_models))
    models = []
    total = 0
    for j in range(n_models):
        replicas = draw(st.integers(1, max_replicas)) if total < 5 else 1
        total += replicas
        models.append(Model(
            f"m{j}",
            float(draw(st.integers(1, 40))),
            float(draw(st.integers(0, 20))),
            float(draw(st.sampled_from([0.5, 1.0, 2.0, 5.0]))),
            replicas,
        ))
    return models, gpus
