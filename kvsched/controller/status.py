"""A ModelServing's status from the plan: slots, KVPR, counts and the four conditions, and whether it changed.

Conditions (docs/architecture.md): `Invalid` (reasons InvalidSpec, InvalidAnnotation, WorkloadNotFound),
`Placed` (True/Planned when every wanted replica has a slot), `Unschedulable` (True with the packer's cause:
ModelTooLarge, NoRoomForEngine, NoRoomForKVCache, TooFewGPUs, InsufficientCapacity: `Unplaced.cause`),
`Migrating` (True while the plan moves a replica of the model, with why it waits or is blocked). A condition
keeps its lastTransitionTime unless its status changes. Numbers are rounded (KVPR to 4 decimals, memory fractions
to kvsched.api.names.SHARE_DECIMALS per GPU by `headroom.plan_shares`, which keeps the headroom's invariants) so
that the same plan always gives the same status and an unchanged world writes nothing.
Called by: kvsched.controller.decide; `planned_slots` also by kvsched.extender.cache.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from kvsched.api.names import share_of
from kvsched.controller.slots import PlannedSlot
from kvsched.packer import GpuId, Placement, Unplaced
from kvsched.units import timestamp_s

KVPR_DECIMALS = 4
CONDITION_TYPES = ("Placed", "Invalid", "Unschedulable", "Migrating")


@dataclass(frozen=True)
class Condition:
    type: str
    status: str
    reason: str
    message: str = ""


def slots_of(placements: Sequence[Placement], shares: Mapping[tuple[str, GpuId], float] | None = None
             ) -> list[dict[str, Any]]:
    """Status slots of one model, ordered by node then GPU (replicas are interchangeable). A slot's
    memoryFraction is its share in `shares` (`headroom.plan_shares`), else its fraction rounded down."""
    shares = shares or {}
    return [{"node": p.gpu.node, "gpu": p.gpu.index,
             "memoryFraction": shares.get((p.model, p.gpu), share_of(p.memory_fraction))}
            for p in sorted(placements, key=lambda p: p.gpu)]


def planned_slots(status: Mapping[str, Any]) -> tuple[list[PlannedSlot], list[int]]:
    """The slots in a ModelServing status as `slots_of` writes them (a node name, a GPU index >= 0, a
    `memoryFraction` in [0, 1], 0 when absent), and the positions in `status.slots` of the entries that are not
    such a slot (the controller writes them, a person may have edited them: callers skip them). No slots when
    `status.slots` is not a list. The one reader of status slots: the controller's `current_slots` and the
    extender's cache. O(slots)."""
    raw_slots = status.get("slots")
    if not isinstance(raw_slots, list):
        return [], []
    slots: list[PlannedSlot] = []
    malformed: list[int] = []
    for i, raw in enumerate(raw_slots):
        try:
            node, gpu = raw["node"], raw["gpu"]
            fraction = float(raw.get("memoryFraction", 0.0))
            if not isinstance(node, str) or isinstance(gpu, bool) or not isinstance(gpu, int) or gpu < 0 \
                    or not 0.0 <= fraction <= 1.0:
                raise ValueError
        except (KeyError, TypeError, ValueError, AttributeError, OverflowError):
            malformed.append(i)
            continue
        slots.append(PlannedSlot(node, gpu, fraction))
    return slots, malformed


def model_kvpr(kvprs: Sequence[float]) -> float | None:
    """The largest KVPR over the model's GPUs, rounded; None when unknown (no GPU, or infinite)."""
    if not kvprs:
        return None
    worst = max(kvprs)
    return round(worst, KVPR_DECIMALS) if math.isfinite(worst) else None


def placement_conditions(wanted: int, placed: int, unplaced: Sequence[Unplaced], planned: bool,
                         invalid: tuple[str, str] | None, migrating: tuple[str, str] | None) -> list[Condition]:
    """The four conditions of one model. `invalid`/`migrating` are (reason, message) when True."""
    conditions: list[Condition] = []
    if not planned and invalid is not None:
        placed_c = Condition("Placed", "False", invalid[0], "not planned: " + invalid[1])
    elif unplaced:
        placed_c = Condition("Placed", "False", unplaced[0].cause,
                             f"{placed} of {wanted} replicas planned")
    else:
        placed_c = Condition("Placed", "True", "Planned", f"{placed} of {wanted} replicas planned")
    conditions.append(placed_c)
    conditions.append(Condition("Invalid", "True", invalid[0], invalid[1]) if invalid is not None
                      else Condition("Invalid", "False", "Valid"))
    if unplaced:
        cause = unplaced[0].cause
        conditions.append(Condition("Unschedulable", "True", cause,
                                    f"{len(unplaced)} of {wanted} replicas cannot be placed: {unplaced[0].reason}"))
    else:
        conditions.append(Condition("Unschedulable", "False", "Schedulable"))
    conditions.append(Condition("Migrating", "True", migrating[0], migrating[1]) if migrating is not None
                      else Condition("Migrating", "False", "Stable"))
    return conditions


def conditions_by_type(stored: object) -> dict[str, Mapping[str, Any]]:
    """The stored `status.conditions` by type, whatever their shape (a person may have edited them): entries that
    are not mappings with a string `type` are ignored. Never raises. O(conditions)."""
    return {c["type"]: c for c in _list(stored) if isinstance(c, dict) and isinstance(c.get("type"), str)}


def merge_conditions(new: Sequence[Condition], old: object, generation: int, now: str) -> list[dict[str, Any]]:
    """Condition dicts: lastTransitionTime carried over from `old` (the stored `status.conditions`, whatever its
    shape: entries that are not conditions are ignored) unless the status flipped or the time is unreadable."""
    old_by_type = conditions_by_type(old)
    out = []
    for c in new:
        previous = old_by_type.get(c.type)
        since = previous.get("lastTransitionTime") if previous and previous.get("status") == c.status else None
        if not isinstance(since, str) or timestamp_s(since) is None:
            since = None
        out.append({"type": c.type, "status": c.status, "reason": c.reason, "message": c.message,
                    "observedGeneration": generation, "lastTransitionTime": since or now})
    return out


def _list(value: object) -> list[Any]:
    return value if isinstance(value, list) else []


def _number(value: object) -> object:
    """A JSON number as a float (4 == 4.0); anything else (or an int too large for a float) as it is."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        try:
            return float(value)
        except OverflowError:
            return value
    return value


def _normalised(status: Mapping[str, Any]) -> dict[str, Any]:
    """Status without transition times, absent kvpr as None, numbers as floats: what a 'real change' compares.
    Takes a stored status of any shape (a person may have edited it): never raises."""
    out: dict[str, Any] = {}
    for key in ("observedGeneration", "replicas", "placedReplicas", "readyReplicas", "kvpr"):
        out[key] = _number(status.get(key))
    out["slots"] = [(s.get("node"), s.get("gpu"), _number(s.get("memoryFraction", 0)))
                    for s in _list(status.get("slots")) if isinstance(s, dict)]
    out["conditions"] = sorted(((c.get("type"), c.get("status"), c.get("reason"), c.get("message") or "",
                                 _number(c.get("observedGeneration")))
                                for c in _list(status.get("conditions")) if isinstance(c, dict)), key=repr)
    return out


def status_changed(old: Mapping[str, Any], new: Mapping[str, Any]) -> bool:
    """Whether writing `new` over `old` changes anything but timestamps."""
    return _normalised(old) != _normalised(new)
