"""`repair`: turn an assignment that breaks target T into one that meets it, by moves between GPUs.

At T every GPU is a bin of capacity T * M_g and item j weighs w_j = n_j + T * m_j. Each over-full GPU first
sheds its excess by one move or swap with a GPU that can absorb it; what cannot be shed is evicted to a
*trash* list (the lightest item whose removal is enough, else the heaviest). Then, heaviest trash item first:
1. insert it where it fits best (least residual left);
2. else *make room*: on a GPU c among those with most residual, swap one of c's items z with an item y of another
   GPU b (or move z to b) so that c's residual grows enough for x while b stays within capacity;
3. else eject: x replaces a lighter item y of a GPU where it then fits, and y goes back to the trash (y is
   preferably one that fits elsewhere outright; recently moved items are tabu).
It succeeds when the trash is empty, and gives up after a bounded number of steps.
Called by: `try_pack` (items a pass could not place), `improve` (descent by lowering T), `replan.fewest`
(what shedding could not place).
"""

from __future__ import annotations

from collections import deque
from typing import Iterable, Sequence

import numpy as np
import numpy.typing as npt

from kvsched.packer.deadline import NEVER, Deadline
from kvsched.packer.instance import Instance, IntArray
from kvsched.packer.state import GpuState

# `make room` tries only the GPUs with the most residual: they need the smallest exchange to take the item,
# and each try is O(n) vectorised.
_TOP_ROOMS = 8
# Items moved by the last this-many steps may not be ejected again, so that two items cannot trade places forever.
_TABU = 16
# Steps of `_consolidate` for one item: each moves one exchange's gain onto the chosen GPU. A bound on the work
# of one step of `repair` (each is O(n) vectorised); the value is the one it was written with, not tuned.
_CONSOLIDATE_STEPS = 12
# Default step budget of one repair: this many steps per pending item plus a floor, so that ejection chains
# end; a repair that needs more gives up (None) and the caller keeps what it had.
_STEPS_PER_ITEM = 30
_STEPS_FLOOR = 200


def _none_of(values: IntArray, excluded: Iterable[int]) -> npt.NDArray[np.bool_]:
    """values != e for every e in `excluded` (a handful of ids: cheaper than np.isin, which sorts)."""
    mask = np.ones(values.shape, dtype=bool)
    for e in excluded:
        mask &= values != e
    return mask


def evict_overfull(bins: GpuState, shed_first: bool = True) -> list[int]:
    """Bring every GPU over capacity within it, worst first: by `shed` (one move or swap that another GPU
    absorbs) while that works, else by taking items off into the returned trash. O(over-full GPUs * n)."""
    trash: list[int] = []
    over = np.nonzero(bins.residual < -bins.slack)[0]
    for g in over[np.argsort(bins.residual[over], kind="stable")].tolist():
        while bins.residual[g] < -bins.slack[g]:
            excess = -bins.residual[g]
            if shed_first and shed(bins, g, excess):
                continue
            items = sorted(bins.on_gpu[g], key=lambda i: (bins.item_weight[i], i))
            enough = [i for i in items if bins.item_weight[i] >= excess - bins.slack[g]]
            victim = enough[0] if enough else items[-1]
            bins.take(victim)
            trash.append(victim)
    return trash


def repair(inst: Instance, assign: IntArray, target: float, trash: Sequence[int] = (),
           max_steps: int | None = None, shed_first: bool = True,
           deadline: Deadline = NEVER) -> IntArray | None:
    """An assignment meeting T for every item placed in `assign` or listed in `trash`, or None.

    `assign` is not modified. Steps are bounded by max_steps (default _STEPS_PER_ITEM * pending +
    _STEPS_FLOOR); each is O(n) vectorised. Gives up (None) as soon as the deadline expires, checked every step.
    """
    bins = GpuState(inst, assign.copy(), target)
    pending = list(trash) + evict_overfull(bins, shed_first)
    budget = max_steps if max_steps is not None else _STEPS_PER_ITEM * len(pending) + _STEPS_FLOOR
    tabu: deque[int] = deque(maxlen=_TABU)
    weight = bins.item_weight
    while pending:
        if budget <= 0 or deadline.expired():
            return None
        budget -= 1
        pending.sort(key=lambda i: (-weight[i], i))
        x = pending.pop(0)
        if _insert(bins, x) or _make_room(bins, x) or _consolidate(bins, x, tabu):
            tabu.append(x)
            continue
        y = _eject(bins, x, tabu)
        if y < 0:
            return None
        tabu.append(x)
        pending.append(y)
    return bins.assign


def _insert(bins: GpuState, x: int) -> bool:
    """Put x on the GPU it fits with the least residual left."""
    room = bins.residual + bins.slack - bins.item_weight[x]
    room[bins.gpus_with_group(int(bins.item_group[x]))] = -np.inf
    g = int(np.argmin(np.where(room >= 0, room, np.inf)))
    if room[g] < 0:
        return False
    bins.put(x, g)
    return True


def _make_room(bins: GpuState, x: int) -> bool:
    """Grow the residual of a roomy GPU c enough for x by one move or swap (`shed`); then put x on c."""
    weight = bins.item_weight
    gx = int(bins.item_group[x])
    blocked = set(bins.gpus_with_group(gx))
    order = np.argsort(-bins.residual, kind="stable")
    rooms = [int(c) for c in order[: _TOP_ROOMS + len(blocked)] if int(c) not in blocked][:_TOP_ROOMS]
    for c in rooms:
        need = weight[x] - bins.residual[c] - bins.slack[c]
        if need <= 0 or shed(bins, c, need, gx):
            bins.put(x, c)
            return True
    return False


def shed(bins: GpuState, c: int, need: float, incoming_group: int = -1) -> bool:
    """Raise GPU c's residual by at least `need` with one move of an item z of c to another GPU b, or one swap
    of z with a lighter item y of b; b must stay within capacity. Of all such, the one using least of b's
    residual (w_z for a move, w_z - w_y for a swap) is applied. y may not be of `incoming_group` (the model
    about to join c). Returns whether it found one. O(|items on c| * n) vectorised.
    """
    weight = bins.item_weight
    placed = np.nonzero(bins.assign >= 0)[0]
    bin_of = bins.assign[placed]
    absorb = bins.residual[bin_of] + bins.slack[bin_of]
    grp_placed = bins.item_group[placed]
    best = (np.inf, -1, -1, -1)  # (residual used, z, target GPU b, y or -1 for a move)
    for z in bins.on_gpu[c]:
        if weight[z] < need:
            continue
        gz = int(bins.item_group[z])
        z_blocked = bins.gpus_with_group(gz)
        room = bins.residual + bins.slack - weight[z]
        room[c] = -np.inf
        room[z_blocked] = -np.inf
        b = int(np.argmin(np.where(room >= 0, room, np.inf)))
        if room[b] >= 0 and weight[z] < best[0]:
            best = (float(weight[z]), z, b, -1)
        d = weight[z] - weight[placed]
        ok = (bin_of != c) & (d >= need) & (d <= absorb) & (grp_placed != incoming_group)
        if z_blocked:
            ok &= _none_of(bin_of, z_blocked)
        others_on_c = bins.groups_on[c] - {gz}
        if others_on_c:
            ok &= _none_of(grp_placed, others_on_c)
        if ok.any():
            cand = np.nonzero(ok)[0]
            k = int(cand[np.argmin(d[cand])])
            if d[k] < best[0]:
                best = (float(d[k]), z, int(bin_of[k]), int(placed[k]))
    _, z, b, y = best
    if z < 0:
        return False
    bins.take(z)
    if y >= 0:
        bins.take(y)
        bins.put(y, c)
    bins.put(z, b)
    return True


def _consolidate(bins: GpuState, x: int, tabu: deque[int]) -> bool:
    """Gather residual onto the roomiest GPU c x may use, then put x there.

    Each step trades an item z of c for a lighter item y of another GPU b (or moves z to b) with the largest
    gain w_z - w_y that b can absorb; items moved by an earlier step are tabu. Up to _CONSOLIDATE_STEPS steps.
    """
    weight = bins.item_weight
    gx = int(bins.item_group[x])
    residual = bins.residual.copy()
    residual[bins.gpus_with_group(gx)] = -np.inf
    c = int(np.argmax(residual))
    if not np.isfinite(residual[c]):
        return False
    moved: set[int] = set(tabu)
    for _ in range(_CONSOLIDATE_STEPS):
        if weight[x] <= bins.residual[c] + bins.slack[c]:
            bins.put(x, c)
            return True
        placed = np.nonzero(bins.assign >= 0)[0]
        bin_of = bins.assign[placed]
        absorb = bins.residual[bin_of] + bins.slack[bin_of]
        best = (0.0, -1, -1)  # (gain, z, y or -1 for a move to the roomiest other GPU)
        for z in bins.on_gpu[c]:
            if z in moved:
                continue
            gz = int(bins.item_group[z])
            d = weight[z] - weight[placed]
            others_on_c = bins.groups_on[c] - {gz}
            ok = (bin_of != c) & (d > 0) & (d <= absorb) & (bins.item_group[placed] != gx)
            ok &= _none_of(bin_of, bins.gpus_with_group(gz))
            if others_on_c:
                ok &= _none_of(bins.item_group[placed], others_on_c)
            if moved:
                ok &= _none_of(placed, moved)
            if ok.any():
                cand = np.nonzero(ok)[0]
                k = int(cand[np.argmax(d[cand])])
                if d[k] > best[0]:
                    best = (float(d[k]), z, int(placed[k]))
        _, z, y = best
        if z < 0:
            return False
        b = int(bins.assign[y])
        bins.take(z)
        bins.take(y)
        bins.put(z, b)
        bins.put(y, c)
        moved.update((z, y))
    if weight[x] <= bins.residual[c] + bins.slack[c]:
        bins.put(x, c)
        return True
    return False


def _eject(bins: GpuState, x: int, tabu: deque[int]) -> int:
    """x replaces a lighter item y on a GPU where it then fits; returns y, or -1 when no such y exists."""
    weight = bins.item_weight
    gx = int(bins.item_group[x])
    placed = np.nonzero(bins.assign >= 0)[0]
    bin_of = bins.assign[placed]
    blocked = bins.gpus_with_group(gx)
    ok = (weight[placed] < weight[x]) & (weight[x] - weight[placed] <= bins.residual[bin_of] + bins.slack[bin_of])
    if blocked:
        ok &= _none_of(bin_of, blocked) | (bins.item_group[placed] == gx)
    if tabu:
        ok &= _none_of(placed, tabu)
    if not ok.any():
        return -1
    cand = placed[ok]
    top = np.argsort(-bins.residual)[:2]
    other = np.where(bins.assign[cand] == top[0], bins.residual[top[-1]], bins.residual[top[0]])
    ends = weight[cand] <= other + bins.slack[top[0]]
    y = int(cand[ends][np.argmax(weight[cand][ends])] if ends.any() else cand[np.argmin(weight[cand])])
    g = int(bins.assign[y])
    bins.take(y)
    bins.put(x, g)
    return y
