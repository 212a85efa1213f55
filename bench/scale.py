"""Scale instances: homogeneous 80 GiB GPUs, about 3 models per GPU filling about 60% of the memory.

Sizes uniform in [8, 24] GiB (mean 16: three per GPU take 48 of 80 GiB), request rates uniform in [1, 10] req/s,
SLOs uniform in [1, 5] s (so no single model binds: the fluid bound is the reference). Seeded, so every run sees the same instances. The reference is the fluid bound.
"""

from __future__ import annotations

import numpy as np

from kvsched.packer import Gpu, Model


def scale_case(n_gpus: int, seed: int = 0, models_per_gpu: int = 3) -> tuple[list[Model], list[Gpu]]:
    """n_gpus GPUs of 80 GiB on nodes of 8, and models_per_gpu * n_gpus single-replica models."""
    rng = np.random.default_rng(seed)
    n_models = models_per_gpu * n_gpus
    sizes = rng.uniform(8.0, 24.0, n_models)
    rates = rng.uniform(1.0, 10.0, n_models)
    slos = rng.uniform(1.0, 5.0, n_models)
    models = [Model(f"m{j}", float(sizes[j]), float(rates[j]), float(slos[j])) for j in range(n_models)]
    gpus = [Gpu(f"node-{g // 8}", g % 8, 80.0) for g in range(n_gpus)]
    return models, gpus
