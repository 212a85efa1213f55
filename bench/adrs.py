"""ADRS-50: the 50 random Prism cases with proven optima (../shared/bench/adrs50_optima.json).

numpy.random.seed(42); per case gpu_num = randint(5, 10); then 2 * gpu_num models, each drawing size =
randint(10, 30) GB, req_rate = randint(1, 10), slo = randint(5, 10) in that order; every GPU has 80 GB.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from kvsched.packer import Gpu, Model

OPTIMA_PATHS = (
    Path(__file__).resolve().parent.parent.parent / "shared" / "bench" / "adrs50_optima.json",
    Path(__file__).resolve().parent / "adrs50_optima.json",
)


def adrs_cases(count: int = 50) -> list[tuple[list[Model], list[Gpu]]]:
    """The ADRS cases as packer inputs, in case order."""
    np.random.seed(42)
    cases = []
    for _ in range(count):
        gpu_num = np.random.randint(5, 10)
        models = []
        for j in range(2 * gpu_num):
            size = np.random.randint(10, 30)
            rate = np.random.randint(1, 10)
            slo = np.random.randint(5, 10)
            models.append(Model(f"m{j}", float(size), float(rate), float(slo)))
        gpus = [Gpu("node", g, 80.0) for g in range(gpu_num)]
        cases.append((models, gpus))
    return cases


def adrs_optima() -> list[float] | None:
    """Proven optimal max KVPR per case, or None when the file is not found."""
    for path in OPTIMA_PATHS:
        if path.exists():
            data = json.loads(path.read_text())
            return [float(c["optimalMaxKVPR"]) for c in sorted(data["cases"], key=lambda c: c["case"])]
    return None
