"""The packer's internal view of a problem: one item per replica, as numpy arrays, plus the GPUs.

`build_instance` validates the inputs (names unique, GPUs unique) and expands each model of k replicas into k
items of load n/k that may not share a GPU. Items and GPUs keep the input order so ties break by it.

Memory headroom is folded in here, once: an item's size is its replica's footprint m + o + c (weights, engine
overhead, CUDA context) and a GPU's memory is M - R (memory minus reserve). Every search module works on those
and never sees the headroom; KVPR_g = N_g / (M_g - R_g - sum (m + o + c)). The raw values are kept for
reporting (`memory_fractions`, the plan's GPUs).
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
    item_size is the replica's footprint (weights + engine overhead + CUDA context) and gpu_memory the GPU's
    usable memory (memory - reserve): what the search packs. The raw parts, for reports: item_weight (weights),
    item_overhead, item_context, gpu_reserve; None means zero headroom (item_weight = item_size).
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
    item_weight: FloatArray | None = None
    item_overhead: FloatArray | None = None
    item_context: FloatArray | None = None
    gpu_reserve: FloatArray | None = None

    def weights(self) -> FloatArray:
        """Per item, the replica's weights m (GiB)."""
        return self.item_size if self.item_weight is None else self.item_weight

    def overheads(self) -> FloatArray:
        """Per item, the engine overhead o inside the replica's memory fraction (GiB)."""
        return np.zeros(self.n_items) if self.item_overhead is None else self.item_overhead

    def contexts(self) -> FloatArray:
        """Per item, the CUDA context c outside the replica's memory fraction (GiB)."""
        return np.zeros(self.n_items) if self.item_context is None else self.item_context

    def reserves(self) -> FloatArray:
        """Per GPU, the reserve R (GiB)."""
        return np.zeros(self.n_gpus) if self.gpu_reserve is None else self.gpu_reserve

    def total_memory(self) -> FloatArray:
        """Per GPU, its memory M (GiB): usable memory plus reserve, exactly as given."""
        return self.gpu_memory if self.gpu_reserve is None else _frozen_float([g.memory_gib for g in self.gpus])

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
            item_weight=None if self.item_weight is None else _frozen_float(self.item_weight[idx]),
            item_overhead=None if self.item_overhead is None else _frozen_float(self.item_overhead[idx]),
            item_context=None if self.item_context is None else _frozen_float(self.item_context[idx]),
            gpu_reserve=self.gpu_reserve,
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

    Item sizes are footprints (m + o + c) and GPU memories usable memory (M - R), see the module. O(total
    replicas + GPUs).
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
    weights: list[float] = []
    overheads: list[float] = []
    contexts: list[float] = []
    for group, m in enumerate(models):
        for r in range(m.replicas):
            names.append(m.name)
            replicas.append(r)
            groups.append(group)
            loads.append(m.replica_load)
            weights.append(float(m.size_gib))
            overheads.append(float(m.overhead_gib))
            contexts.append(float(m.context_gib))
    headroom = any(overheads) or any(contexts) or any(g.reserve_gib for g in gpus)
    return Instance(
        models=tuple(models),
        gpus=tuple(gpus),
        item_model=tuple(names),
        item_replica=tuple(replicas),
        item_group=_frozen_int(groups),
        item_load=_frozen_float(loads),
        # Exactly the weights when nothing else is asked for, so plans without headroom stay bit for bit.
        item_size=_frozen_float([m + o + c for m, o, c in zip(weights, overheads, contexts)]
                                if headroom else weights),
        gpu_memory=_frozen_float([g.usable_gib if headroom else g.memory_gib for g in gpus]),
        gpu_ids=tuple(g.id for g in gpus),
        item_weight=_frozen_float(weights) if headroom else None,
        item_overhead=_frozen_float(overheads) if headroom else None,
        item_context=_frozen_float(contexts) if headroom else None,
        gpu_reserve=_frozen_float([float(g.reserve_gib) for g in gpus]) if headroom else None,
    )
