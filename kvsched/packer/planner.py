"""`solve`: the packer's one entry point, for a fresh plan and a re-plan alike. Models and GPUs in, a `Plan` out.

A fresh plan is a re-plan with nothing running. Steps, each in its own module: validate and expand replicas
(instance), set aside replicas no GPU can hold, with a cause and a sentence each (unplaced), then
- nothing running: the search from scratch (optimise: bounds, greedy, bisection, local search, exact), kept
  where the `planned` hint puts it when that costs nothing (replan.hint);
- replicas running (`current`): keep them, or move the fewest that get within the stability threshold of the
  best plan found, within `max_migrations` (replan.strategy; the other replan modules are its pieces);
then order the migration steps (steps) and report (result).
Pure: the only outside input is the injected clock, read for solve_seconds and the time budget.
Called by: the CLI, the controller, the benchmark.
"""

from __future__ import annotations

import time
from typing import Sequence

import numpy as np

from kvsched.packer.deadline import Clock, Deadline
from kvsched.packer.domain import Gpu, MigrationStep, Model, Plan, Slot
from kvsched.packer.instance import build_instance
from kvsched.packer.optimise import optimise
from kvsched.packer.options import PackOptions
from kvsched.packer.progress import ProgressCallback, Reporter
from kvsched.packer.replan.hint import follow_hint, planned_assignment
from kvsched.packer.replan.restarts import Shares, share_restarts
from kvsched.packer.replan.running import (align, count_moves, rematch, running_assignment, running_gpus,
                                           running_shares, share_array)
from kvsched.packer.replan.strategy import Outcome, replan
from kvsched.packer.result import build_plan
from kvsched.packer.steps import order_steps
from kvsched.packer.unplaced import carry_causes, no_room_reason, spare_running, unplaceable


def solve(
    models: Sequence[Model],
    gpus: Sequence[Gpu],
    *,
    current: Sequence[Slot] = (),
    planned: Sequence[Slot] = (),
    options: PackOptions = PackOptions(),
    clock: Clock = time.perf_counter,
    rng: np.random.Generator | None = None,
    progress: ProgressCallback | None = None,
) -> Plan:
    """Place every replica of `models` on `gpus` minimising the max KVPR; report what cannot be placed.

    `current` (optional) says where replicas run now; slots naming unknown models or GPUs are ignored (they
    describe what no longer exists), and replica numbers do not matter (replicas of a model are
    interchangeable). Replicas that do not run yet (new, pending, orphaned) cost nothing to place, so the search
    optimises them around the running ones with its whole budget; running replicas move only when the best
    plan found beats the best plan that keeps them by more than `options.stability_threshold_ratio`, and then
    as few as get within that threshold of the best plan found (see kvsched.packer.replan). `Plan.steps`
    orders the moves.

    `planned` (optional) says where replicas that do not run yet are planned now (the caller's last plan for
    its pending replicas): a hint, not a constraint. When the plan that keeps them there (the others optimised
    around them) is within `options.bisection_tolerance_ratio` of the best plan that moves no running replica,
    it is the answer, so re-solving the same world with the last plan as the hint returns that plan rather than
    an equal one elsewhere. Slots naming unknown models or GPUs, replica numbers beyond a model's replicas, a
    replica also in `current` (current wins) or a GPU where the model runs are ignored.

    Raises InvalidInput for bad models, GPUs, options or a replica listed twice in `current`. Never raises for
    an infeasible cluster: those replicas are unplaced, with a cause. `rng` drives the randomised search
    phases; None means a generator seeded with 0 (the same input gives the same plan when the time budget does
    not cut the search; the injected `clock` makes that testable). `progress` (optional) is called with a
    `Progress` at each phase boundary and at most a few times a second between them, last with phase "done"
    (kvsched.packer.progress).

    Complexity, n replicas on G GPUs: validation O(n + G); a fresh plan is dominated by the bisection
    (O(log(1/tol)) passes of O(n log n) to O(n G)) and the local search, bounded by `time_budget_s`. A re-plan
    with nothing new (every replica running) that is kept costs O(n log n + placed * G) (the repair and the lower
    bound); replicas that do not run yet add a local search with the running ones pinned and, for n <= 40 unless
    that is within _SETTLED_GAP_RATIO (replan.strategy) of a lower bound, a search from scratch (the time
    budget). One that must move replicas adds O(shed * G) for the fewest-moves heuristic and a local search
    (n > 40), or a search from scratch (n <= 40, unless a plan in hand is within _SETTLED_GAP_RATIO of the bound).
    """
    start = clock()
    reporter = Reporter(progress, lambda: clock() - start)
    # With a callback, every time check of the search is also a (throttled) progress call.
    deadline = Deadline(reporter.elapsed, 0.0, options.time_budget_s)
    rng = np.random.default_rng(0) if rng is None else rng
    inst = build_instance(models, gpus)
    running = running_gpus(inst, current)
    run = running_assignment(inst, running)
    causes = spare_running(inst, run, unplaceable(inst))
    items = [i for i in range(inst.n_items) if i not in causes]
    hint = planned_assignment(inst, items, run, running, current, planned)
    shares = Shares(running_shares(inst, current), options.stability_threshold_ratio)
    if items and (run[np.asarray(items)] >= 0).any():
        out = replan(inst, items, run, running, hint, options, deadline, rng, reporter, shares)
    else:
        assign, lower, stats = optimise(inst, items, options, deadline, rng, reporter)
        out = Outcome(follow_hint(inst, items, assign, hint, options), lower, stats, 0.0)
    for i in items:
        if out.assign[i] < 0:
            causes[i] = ("InsufficientCapacity", no_room_reason(inst, i))
    # Replicas are interchangeable: a running replica keeps its GPU whatever its number (the numbers past a
    # model's capable GPUs are the ones set aside above), and the causes go with the replicas left unplaced.
    assign = align(inst, run, out.assign)
    causes = carry_causes(inst, out.assign, assign, causes)
    run = rematch(inst, running, assign)
    # Staying replicas whose running share does not fit the plan restart in place first (kvsched.packer.shares);
    # the others keep their shares, and the plan's fractions say so.
    resized = share_restarts(inst, running, assign, shares) if shares.known else np.zeros(inst.n_items, dtype=bool)
    share = share_array(inst, shares.by_slot, run)
    kept = (run >= 0) & (assign == run) & ~np.isnan(share) & ~resized
    steps = [MigrationStep(inst.item_model[i], inst.item_replica[i], inst.gpu_id(int(run[i])),
                           inst.gpu_id(int(run[i])), True) for i in np.nonzero(resized)[0].tolist()]
    steps += [
        MigrationStep(inst.item_model[s.item], inst.item_replica[s.item],
                      inst.gpu_id(s.source) if s.source >= 0 else None, inst.gpu_id(s.target), s.stop_first)
        for s in order_steps(inst, run, assign)
    ]
    any_running = any(running.values())
    plan = build_plan(inst, assign, lower_bound=out.lower, solve_seconds=deadline.elapsed_s(), causes=causes,
                      steps=steps, kept_current=any_running and count_moves(run, assign) == 0,
                      next_move_gain=out.next_move_gain, stats=out.stats, kept=kept, share=share)
    reporter.finish(plan.max_kvpr, plan.lower_bound, plan.solve_seconds)
    return plan
