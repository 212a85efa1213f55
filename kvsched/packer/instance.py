"""The packer's internal view of a problem: one item per replica, as numpy arrays, plus the GPUs.

`build_instance` validates the inputs (names unique, GPUs unique) and expands each model of k replicas into k
items of load n/k that may not share a GPU. Items and GPUs keep the input order so ties break by it.
Called by: `planner` (`build_instance`); every packer module uses `Instance`; tests.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import numpy.typing as npt

from kvsched.packer.domain import Gpu, GpuId, Model
from kvsched.packer.errors import InvalidInput

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]


@dataclass(frozen=True, eq=False)
class Instance:
    """Items (replicas) and GPUs as arrays. item i is replica `item_replica[i]` of model `item_model[i]`.

    Invariants: item_load >= 0, item_size > 0, gpu_memory > 0; items of one model share `item_group`.
    """

    models: tuple[Model, ...]
    gpus: tuple[Gpu, ...]
    item_model: tuple[str, ...]
    item_replica: tuple[int, ...]
    item_group: IntArray
    item_load: FloatArray
    item_size: FloatArray
    gpu_memory: FloatArray
    # The GpuId of every GPU, built once by build_instance (Gpu.id builds a new one per call); may be empty.
    gpu_ids: tuple[GpuId, ...] = ()

    @property
    def n_items(self) -> int:
        return len(self.item_model)

    @property
    def n_gpus(self) -> int:
        return len(self.gpus)

    def gpu_id(self, g: int) -> GpuId:
        return self.gpu_ids[g] if self.gpu_ids else self.gpus[g].id

    def subset(self, keep: Sequence[int]) -> Instance:
        """The same GPUs with only items `keep` (in that order); groups keep their numbers."""
        idx = np.asarray(keep, dtype=np.int64)
        return Instance(
            models=self.models,
            gpus=self.gpus,
            item_model=tuple(self.item_model[i] for i in keep),
            item_replica=tuple(self.item_replica[i] for i in keep),
            item_group=_frozen_int(self.item_group[idx]),
            item_load=_frozen_float(self.item_load[idx]),
            item_size=_frozen_float(self.item_size[idx]),
            gpu_memory=self.gpu_memory,
            gpu_ids=self.gpu_ids,
        )


def _frozen_float(a: npt.ArrayLike) -> FloatArray:
    out = np.array(a, dtype=np.float64, copy=True)
    out.setflags(write=False)
    return out


def _frozen_int(a: npt.ArrayLike) -> IntArray:
    out = np.array(a, dtype=np.int64, copy=True)
    out.setflags(write=False)
    return out


def build_instance(models: Sequence[Model], gpus: Sequence[Gpu]) -> Instance:
    """Validate names and ids, then expand replicas. Raises InvalidInput on a duplicate model name or GPU id.

    O(total replicas + GPUs).
    """
    seen_models: set[str] = set()
    for m in models:
        if not isinstance(m, Model):
            raise InvalidInput("models", "item", m, "must be a Model")
        if m.name in seen_models:
            raise InvalidInput(f"model {m.name!r}", "name", m.name, "is used by more than one model")
        seen_models.add(m.name)
    seen_gpus: set[GpuId] = set()
    for g in gpus:
        if not isinstance(g, Gpu):
            raise InvalidInput("gpus", "item", g, "must be a Gpu")
        if g.id in seen_gpus:
            raise InvalidInput(f"gpu {g.id}", "index", g.index, "is listed more than once on this node")
        seen_gpus.add(g.id)
    names: list[str] = []
    replicas: list[int] = []
    groups: list[int] = []
    loads: list[float] = []
    sizes: list[float] = []
    for group, m in enumerate(models):
        for r in range(m.replicas):
            names.append(m.name)
            replicas.append(r)
            groups.append(group)
            loads.append(m.replica_load)
            sizes.append(float(m.size_gib))
    return Instance(
        models=tuple(models),
        gpus=tuple(gpus),
        item_model=tuple(names),
        item_replica=tuple(replicas),
        item_group=_frozen_int(groups),
        item_load=_frozen_float(loads),
        item_size=_frozen_float(sizes),
        gpu_memory=_frozen_float([g.memory_gib for g in gpus]),
        gpu_ids=tuple(g.id for g in gpus),
    )
