"""Why a replica is unplaced: set aside before the search (no GPU can ever hold it), or left over by it (no room
next to the others), each with a cause of `UNPLACED_CAUSES` and a sentence.
Called by: `kvsched.packer.planner.solve`.
"""

from __future__ import annotations

import numpy as np

from kvsched.packer.domain import UnplacedCause
from kvsched.packer.instance import Instance, IntArray


def unplaceable(inst: Instance) -> dict[int, tuple[UnplacedCause, str]]:
    """Replicas no GPU can ever hold, with cause and sentence: weights too large for every GPU, weights plus
    engine overhead and CUDA context too large for what every GPU offers after its reserve, no room for KV
    cache on any, or more replicas than GPUs that fit one.

    A GPU can hold a replica alone when its usable memory (memory - reserve) exceeds the replica's footprint
    (weights + overhead + context; equals it, for a replica with no load). O(n log G).
    """
    if inst.n_gpus == 0:
        return {i: ("TooFewGPUs", "the cluster has no GPUs") for i in range(inst.n_items)}
    memory = np.sort(inst.gpu_memory)
    usable = float(memory[-1])
    strict = np.searchsorted(memory, inst.item_size, side="right")  # GPUs with M <= m cannot take a loaded one
    loose = np.searchsorted(memory, inst.item_size, side="left")  # GPUs with M < m cannot take any
    capable = inst.n_gpus - np.where(inst.item_load > 0, strict, loose)
    total = inst.total_memory()
    largest = float(total.max())
    headroom = inst.gpu_reserve is not None
    out: dict[int, tuple[UnplacedCause, str]] = {}
    for i in np.nonzero((capable == 0) | (np.asarray(inst.item_replica) >= capable))[0].tolist():
        m = float(inst.weights()[i])
        if capable[i] == 0 and m > largest:
            out[i] = ("ModelTooLarge",
                      f"its weights ({m:g}Gi) exceeds the largest GPU ({largest:g}Gi)")
        elif capable[i] == 0 and float(inst.item_size[i]) > usable:
            out[i] = ("NoRoomForEngine", no_engine_room_reason(inst, i))
        elif capable[i] == 0 and headroom:
            out[i] = ("NoRoomForKVCache",
                      f"{_footprint(inst, i)} leave no room for KV cache on any GPU; {_most_usable(inst)}")
        elif capable[i] == 0:
            out[i] = ("NoRoomForKVCache",
                      f"its weights ({m:g}Gi) leaves no room for KV cache on the largest GPU ({largest:g}Gi)")
        else:
            out[i] = ("TooFewGPUs",
                      f"only {capable[i]} GPUs can hold it and replicas of one model never share a GPU")
    return out


def _footprint(inst: Instance, i: int) -> str:
    """`its weights, engine overhead and CUDA context (23Gi + 2Gi + 0.5Gi = 25.5Gi)`."""
    m, o, c = float(inst.weights()[i]), float(inst.overheads()[i]), float(inst.contexts()[i])
    return (f"its weights, engine overhead and CUDA context ({m:g}Gi + {o:g}Gi + {c:g}Gi = "
            f"{float(inst.item_size[i]):g}Gi)")


def _most_usable(inst: Instance) -> str:
    """`the most a GPU offers is 79Gi (n1/0: 80Gi minus a 1Gi reserve)`."""
    g = int(np.argmax(inst.gpu_memory))
    return (f"the most a GPU offers is {float(inst.gpu_memory[g]):g}Gi ({inst.gpu_id(g)}: "
            f"{float(inst.total_memory()[g]):g}Gi minus a {float(inst.reserves()[g]):g}Gi reserve)")


def no_engine_room_reason(inst: Instance, i: int) -> str:
    """The sentence of `NoRoomForEngine`: the footprint against the most any GPU offers after its reserve."""
    return f"{_footprint(inst, i)} exceed every GPU's memory after its reserve; {_most_usable(inst)}"


def spare_running(inst: Instance, run: IntArray,
                  causes: dict[int, tuple[UnplacedCause, str]]) -> dict[int, tuple[UnplacedCause, str]]:
    """When only some replicas of a model are set aside (more replicas than capable GPUs), set aside ones that
    are not running, so that the search counts moving a running one as a move."""
    out = dict(causes)
    by_group: dict[int, list[int]] = {}
    for i in range(inst.n_items):
        by_group.setdefault(int(inst.item_group[i]), []).append(i)
    for members in by_group.values():
        aside = [i for i in members if i in out]
        if not aside or len(aside) == len(members):
            continue
        order = sorted(members, key=lambda i: (run[i] < 0, i))  # running first: they are kept
        spare = order[len(members) - len(aside):]
        reasons = [out.pop(i) for i in aside]
        for i, reason in zip(spare, reasons):
            out[i] = reason
    return out


def carry_causes(inst: Instance, before: IntArray, after: IntArray,
                 causes: dict[int, tuple[UnplacedCause, str]]) -> dict[int, tuple[UnplacedCause, str]]:
    """The causes of each model's unplaced items in `before`, given in item order to its unplaced items in
    `after` (the same number: `align` only permutes a model's GPUs among its replicas)."""
    lost: dict[int, list[tuple[UnplacedCause, str]]] = {}
    for i in np.nonzero(before < 0)[0].tolist():
        lost.setdefault(int(inst.item_group[i]), []).append(causes[i])
    out: dict[int, tuple[UnplacedCause, str]] = {}
    for i in np.nonzero(after < 0)[0].tolist():
        out[i] = lost[int(inst.item_group[i])].pop(0)
    return out


def no_room_reason(inst: Instance, i: int) -> str:
    if inst.gpu_reserve is None:
        return (f"not enough free GPU memory: its weights ({float(inst.item_size[i]):g}Gi) fit no GPU next to the "
                "replicas placed before it")
    return (f"not enough free GPU memory: {_footprint(inst, i)} fit no GPU next to the replicas placed before it "
            "(after each GPU's reserve)")
