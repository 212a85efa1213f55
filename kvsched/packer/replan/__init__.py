"""Re-planning: from the replicas running now to a plan that moves as few of them as its quality allows.

A *move* is a running replica whose GPU is no longer one of its model's GPUs. Replicas of one model are
interchangeable, so replica numbers do not matter: `align` gives every replica that stays the GPU it runs on.
The pieces, one module each, in the order `strategy.replan` uses them:
1. `running`: the running slots as item -> GPU, -1 when not running (`running_gpus`, `running_assignment`);
   `rematch` pairs them with the final plan (so a model that lost replicas keeps the ones the plan keeps);
   `align`, `count_moves`, `moves_of`.
2. `around`: `repair_around` keeps every running replica where it is, evicts the fewest from each GPU that can no
   longer hold them (a model grew) and places new, orphaned and evicted replicas around the rest, each on the GPU
   where its KVPR ends lowest; nothing else moves. `place_around`: the free replicas placed around fixed ones, on
   a guide GPU (a relabelled plan from scratch, the `planned` hint) where it has room. `pinned_mask`: the
   replicas on a GPU where their model runs (moving one is a move); the rest move for free.
3. `fewest`: `fewest_moves` reaches a target T (every GPU's KVPR <= T) from an assignment with few moves: free
   replicas (new, or already moved) leave an over-T GPU first, then as few running ones as cover its excess,
   heaviest first; the evicted go where they fit tightest; what fits nowhere goes to `repair` (and, when at
   most two are left, to ejection chains from `chains`, the fewer moves winning); then `revert`
   puts moved replicas back home where T allows. `reduce_moves`: undo a move and repair around it, while that
   saves moves (after a search from scratch).
4. `relabel`: a plan from scratch with its GPUs permuted among GPUs of equal memory to keep most models in place;
   `relink` walks from a plan towards such a guide; `revert` brings moved replicas home where T allows.
5. `budget`: under a cap on moves, `lowest_within` finds the lowest target the fewest-moves heuristic reaches
   within it, `within_budget` a low peak reachable with at most k more moves (greedy: the best move off the
   hottest GPU, again and again).
6. `polish`: moves that cost nothing (new replicas, replicas already moving) lower the peak further.
7. `exact`: `exact_replan` solves the fewest-moves and the capped problems exactly on tiny instances.
8. `hint`: `planned_assignment` reads the caller's last plan for replicas that do not run yet (slots of a world
   that moved on ignored); `follow_hint` keeps a fresh plan there when that costs nothing.
9. `restarts`: what a plan costs in restarts when the running replicas' memory shares are known (moves plus
   share restarts, kvsched.packer.shares' rule; `cost_of`, `share_restarts`), and `polish_restarts`, which moves
   replicas that restart anyway off GPUs where staying replicas would restart for their share.
10. `strategy`: `replan`, keep the running replicas or move the fewest within the stability threshold of the best
   plan found, within `max_migrations`; then the fewest restarts among the plans it has there.
Called by: `kvsched.packer.planner.solve` (imports the modules it needs; this package exports nothing itself).
"""
