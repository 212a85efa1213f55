"""Order the migration steps of a re-plan so that no GPU ever holds more weights than its memory.

Start: the running replicas that stay in the plan (replicas of removed models, replicas beyond a model's count
and replicas the plan cannot place stop before the first step). A step starts a replica on its target; a move
also stops it on its source. Make before break (start, then stop) is taken whenever the target has room,
moves first (they free memory), then new replicas, each in item order. When no step fits, a cycle of moves
blocks itself (A waits for B's GPU and B for A's): one move is marked `stop_first`: its old replica stops at
once, and its new one starts as soon as its target has room (checked after every step). The move chosen
frees the most needed memory: its source is the target of a blocked step, largest weights first.
Every step always completes: once all moves are done, each GPU holds a subset of its planned replicas.
Called by: `kvsched.packer.planner.solve`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from kvsched.packer.instance import Instance, IntArray

# Weights fit a GPU up to float noise (GiB): sums of sizes are not exact.
_SLACK_GIB = 1e-9


@dataclass(frozen=True)
class Step:
    """Item `item` starts on GPU `target` (and stops on `source`, -1 for none); stop_first as in the module."""

    item: int
    source: int
    target: int
    stop_first: bool


def order_steps(inst: Instance, run: IntArray, final: IntArray) -> list[Step]:
    """The steps from `run` (item -> GPU running it, -1) to `final` (item -> planned GPU, -1), ordered as the
    module says. O(S^2) for S steps in the worst case (each step may rescan the pending ones), O(S) when each
    step fits at once."""
    if not (run >= 0).any():  # a fresh plan: every GPU only ever holds a subset of its planned replicas
        return [Step(i, -1, int(final[i]), False) for i in np.nonzero(final >= 0)[0].tolist()]
    size = inst.item_size
    memory = inst.gpu_memory
    stays = (run >= 0) & (final >= 0)
    # Every running replica that stays in the plan holds its GPU now; a moving one until its step stops it.
    weights = np.bincount(run[stays], weights=size[stays], minlength=inst.n_gpus).astype(np.float64)
    changed = np.nonzero((final >= 0) & (final != run))[0].tolist()
    pending = sorted(changed, key=lambda i: (run[i] < 0, i))
    waiting: list[int] = []
    out: list[Step] = []

    def fits(i: int) -> bool:
        g = int(final[i])
        return bool(weights[g] + size[i] <= memory[g] + _SLACK_GIB * (1 + memory[g]))

    def flush() -> None:
        again = True
        while again:
            again = False
            for i in list(waiting):
                if fits(i):
                    weights[final[i]] += size[i]
                    waiting.remove(i)
                    again = True

    while pending:
        pick = next((k for k, i in enumerate(pending) if fits(i)), -1)
        if pick >= 0:
            i = pending.pop(pick)
            weights[final[i]] += size[i]
            if run[i] >= 0:
                weights[run[i]] -= size[i]
            out.append(Step(i, int(run[i]), int(final[i]), False))
        else:
            moves = [i for i in pending if run[i] >= 0]
            if not moves:  # cannot happen when `final` fits memory; keep every step anyway
                out.extend(Step(i, int(run[i]), int(final[i]), False) for i in pending)
                break
            blocked_targets = {int(final[i]) for i in pending}
            i = max(moves, key=lambda i: (int(run[i]) in blocked_targets, float(size[i]), -i))
            pending.remove(i)
            weights[run[i]] -= size[i]
            waiting.append(i)
            out.append(Step(i, int(run[i]), int(final[i]), True))
        flush()
    return out
