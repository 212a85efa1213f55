"""The reconcile loop: a cache fed by the informers, bursts of changes coalesced into one decision, the
decision's writes carried out by a `Writer`, metrics recorded. Only the leader writes; nothing is decided
before every informer has listed.

- Debounce: a change wakes the loop, which then waits `debounce_s` more (and again while changes keep coming,
  up to 5 x debounce_s) so a rollout or a node loss is one re-plan. Models arrive in bursts that take longer
  (`kubectl apply -f models/`, a Helm release): after a Deployment or ModelServing appears, goes, or changes what
  the plan reads (annotations, replicas, spec), the loop waits until models have been quiet for
  `model_quiet_s` (at most 10 s in all), so the pods of the first models do not bind with memory shares that the
  next ones' arrival a moment later would restart. Pod and status events do not extend that wait.
- Re-plan on change only: the plan is a commitment. It is solved again only when what it was solved for
  changes: a model (size, rate, SLO, replica count), the GPUs (a node, its memory, GPUs withheld) or the
  options. Pods binding, becoming Ready, being evicted or restarting move the cluster towards the plan and never
  re-plan it, so a migration's target stays put until an input changes, and an idle cluster solves nothing.
  One exception: a pod that bound, while a solve ran, to a slot of the plan before it, where the new plan does not
  place it, makes the plan solve again with that pod as running (kept where it started rather than moved).
- `max_migrations` caps the moves one change causes: what the cap holds back waits for the next change (the log
  says what it costs in max KVPR), so no replica moves twice for one change.
  The first plan gets the full time budget, so pods bind to the plan the controller keeps (a quick plan
  overturned a moment later would cost a restart per replica it moved). After a restart the first solve gets
  the running pods as `current` and the statuses' slots as `planned`, so it finds the same plan again.
- Writes to different objects go out in parallel (8 at a time); the eviction and events after them.
- A write that fails is retried on the next round (errors back off 1 s to 30 s); a write issued and not yet seen
  back through the watch is not issued again (for 30 s), so a slow watch cannot cause duplicate writes.
- An eviction the API refuses (a PodDisruptionBudget) is retried with backoff (10 s doubling to 5 min) and shown
  as condition Migrating with the reason; the other steps proceed.
Called by: kvsched.runtime.controller (threads and wiring), tests/controller (with a fake writer).
"""

from __future__ import annotations

import json
import logging
import math
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import Any, Callable, Mapping, Protocol, Sequence

from kvsched.api.names import (
    MODEL_LABEL,
    PLANNED_SLOTS_ANNOTATION,
    POD_DELETION_COST_ANNOTATION,
    SURGE_ANNOTATION,
    SURGE_DELETION_COST,
)
from kvsched.api.objects import DeploymentObj, ModelServingObj, NodeObj, ObjectKey, PdbObj, PodObj, World
from kvsched.api.records import Event, Eviction, HolderChange, OwnedChange, PdbChange, Surge, utc_now
from kvsched.controller.config import DecisionConfig
from kvsched.controller.decide import Decision, decide
from kvsched.controller.holders import holder_uuids, is_holder
from kvsched.controller.migrations import Blocked
from kvsched.metrics import GpuSample, Metrics
from kvsched.packer import Gpu, GpuId, Model, Plan, Slot, solve
from kvsched.units import timestamp_s

log = logging.getLogger(__name__)

GIB = 2**30
_INFLIGHT_TTL_S = 30.0
_RESYNC_S = 30.0
_EVICTED_HOLD_S = 60.0
_STALE_RETRY_S = 0.5  # a round skipped while a watch reconnects is retried this soon
_MODEL_QUIET_CAP_S = 10.0  # a burst of models that never pauses is planned after this long anyway


class Writer(Protocol):
    """What the loop needs from the API (kvsched.k8s.writers.ApiWriter; a fake in tests). Every method raises
    on failure; `evict` raises kvsched.api.records.EvictionRefused (or anything with `reason` and `message`) when
    refused."""

    def write_status(self, key: ObjectKey, status: Mapping[str, Any]) -> Any: ...

    def patch_deployment(self, key: ObjectKey, patch: Mapping[str, Any]) -> Any: ...

    def owned_change(self, change: OwnedChange) -> Any: ...

    def evict(self, pod: ObjectKey) -> None: ...

    def annotate_pod(self, pod: ObjectKey, annotations: Mapping[str, str]) -> Any: ...

    def holder_change(self, change: HolderChange) -> Any: ...

    def pdb_change(self, change: PdbChange) -> Any: ...

    def event(self, event: Event) -> None: ...


@dataclass(frozen=True)
class _Memo:
    """The plan in force: what it was solved for (`key`: models, GPUs, options) and the replicas that ran then."""

    key: Any
    plan: Plan
    solved_current: frozenset[tuple[str, GpuId]]

    def overtaken(self, current: Sequence[Slot]) -> bool:
        """Whether a replica runs now where the plan neither places it nor saw it run: a pod that bound, during
        the solve, to a slot of the plan before (the solve took it as free and may have put it elsewhere). The
        plan is then solved again with that pod as running, so it is kept where it started rather than moved."""
        placed = {(p.model, p.gpu) for p in self.plan.placements}
        return any((s.model, s.gpu) not in placed and (s.model, s.gpu) not in self.solved_current
                   for s in current)


@dataclass
class RoundReport:
    """What one round did (for logs and tests)."""

    decision: Decision | None
    writes: int = 0
    failures: int = 0
    solved: bool = False
    stale: bool = False  # skipped: a watch was reconnecting


class Reconciler:
    """The loop's state. `observe_*` are called from informer threads; `run` or `reconcile_once` from one
    thread. Thread-safe by one lock around the cache."""

    def __init__(self, config: DecisionConfig, writer: Writer, metrics: Metrics, *, debounce_s: float = 0.2,
                 model_quiet_s: float = 0.5,
                 max_migrations: int | None = None, clock: Callable[[], float] = time.monotonic,
                 wall: Callable[[], str] = utc_now,
                 solver: Callable[..., Plan] = solve, write_concurrency: int = 8) -> None:
        self.config = config
        self.writer = writer
        self.metrics = metrics
        self.debounce_s = debounce_s
        self.model_quiet_s = model_quiet_s
        self.max_migrations = max_migrations
        self.clock = clock
        self.wall = wall
        self.solver = solver
        self.write_concurrency = write_concurrency
        self.leader = False
        self.synced = False
        self._lock = threading.Lock()
        self._nodes: dict[str, NodeObj] = {}
        self._pods: dict[ObjectKey, PodObj] = {}
        self._deployments: dict[ObjectKey, DeploymentObj] = {}
        self._servings: dict[ObjectKey, ModelServingObj] = {}
        self._pdbs: dict[ObjectKey, PdbObj] = {}
        self._wake = threading.Event()
        self._last_change = 0.0
        self._last_model_change = -math.inf
        self._decided_steps: set[tuple[ObjectKey, bool]] = set()  # (pod, resize) counted for the plan in force
        self._memo: _Memo | None = None
        self._inflight: dict[tuple[str, ObjectKey], tuple[str, float]] = {}
        self._blocked: dict[ObjectKey, Blocked] = {}
        self._evicted: dict[ObjectKey, str] = {}  # pods this loop evicted (uid) the cache has not seen terminate
        self._surged: dict[ObjectKey, tuple[str, int, float]] = {}  # Deployments surged (record, replicas, when)
        self._last_decision: Decision | None = None
        self._refusals: dict[ObjectKey, int] = {}
        self._emitted: dict[tuple[str, str, str, str], None] = {}
        self._error_streak = 0
        self._solved = False
        self.rounds = 0
        self.beat_at = clock()  # clock() when the loop last woke or finished a round (liveness: `stalled_s`)
        # Whether every watch is connected and current (the app wires its informers in; tests may leave it).
        self.watches_current: Callable[[], bool] = lambda: True

    # -- informer side ------------------------------------------------------------------------------------------
    def _changed(self, kind: str, key: ObjectKey) -> None:
        self._inflight.pop((kind, key), None)
        self._last_change = self.clock()
        self._wake.set()

    def observe_node(self, node: NodeObj, deleted: bool = False) -> None:
        with self._lock:
            if deleted:
                self._nodes.pop(node.name, None)
            else:
                self._nodes[node.name] = node
            self._changed("node", ObjectKey("", node.name))

    def observe_pod(self, pod: PodObj, deleted: bool = False) -> None:
        """Only managed pods and pods requesting GPUs are kept (the others cannot change a decision)."""
        relevant = MODEL_LABEL in pod.labels or pod.gpu_request > 0
        with self._lock:
            if deleted or not relevant:
                if self._pods.pop(pod.key, None) is None:
                    return
            else:
                self._pods[pod.key] = pod
            self._changed("pod", pod.key)

    def observe_deployment(self, deployment: DeploymentObj, deleted: bool = False) -> None:
        with self._lock:
            old = self._deployments.pop(deployment.key, None) if deleted else \
                self._deployments.get(deployment.key)
            if not deleted:
                self._deployments[deployment.key] = deployment
            if deleted or old is None or (old.annotations, old.replicas) != (deployment.annotations,
                                                                             deployment.replicas):
                self._last_model_change = self.clock()
            self._changed("deployment", deployment.key)

    def observe_model_serving(self, ms: ModelServingObj, deleted: bool = False) -> None:
        with self._lock:
            old = self._servings.pop(ms.key, None) if deleted else self._servings.get(ms.key)
            if not deleted:
                self._servings[ms.key] = ms
            if deleted or old is None or old.spec != ms.spec:
                self._last_model_change = self.clock()
            self._changed("modelserving", ms.key)

    def observe_pdb(self, pdb: PdbObj, deleted: bool = False) -> None:
        """A PodDisruptionBudget: kvsched's own (kvsched.controller.pdb) and users' (a model they cover gets none)."""
        with self._lock:
            if deleted:
                self._pdbs.pop(pdb.key, None)
            else:
                self._pdbs[pdb.key] = pdb
            self._changed("pdb", pdb.key)

    def set_synced(self, synced: bool) -> None:
        self.synced = synced
        self.metrics.cache_synced.set(1 if synced else 0)
        self._wake.set()

    def set_leader(self, leader: bool) -> None:
        self.leader = leader
        self.metrics.is_leader.set(1 if leader else 0)
        self._wake.set()

    def world(self) -> World:
        with self._lock:
            return World(tuple(self._nodes.values()), tuple(self._pods.values()),
                         tuple(self._deployments.values()), tuple(self._servings.values()),
                         tuple(self._pdbs.values()))

    # -- the loop -----------------------------------------------------------------------------------------------
    def run(self, stop: threading.Event) -> None:
        """Round after round until `stop`: wait for a change (or a retry, or the periodic resync), debounce,
        decide and write. Never raises: an unexpected error is logged and the round retried with backoff."""
        next_wake = self.clock() + _RESYNC_S
        while not stop.is_set():
            self.beat_at = self.clock()
            self._wake.wait(max(0.0, next_wake - self.clock()))
            if stop.is_set():
                return
            self.beat_at = self.clock()
            self._wake.clear()
            start = self.clock()
            while not self.quiet(self.clock(), start):
                stop.wait(self.debounce_s / 4)
            delay = _RESYNC_S
            try:
                report = self.reconcile_once()
                if report.stale:
                    delay = _STALE_RETRY_S
                elif report.failures:
                    self._error_streak += 1
                    delay = min(30.0, 2.0 ** (self._error_streak - 1))
                else:
                    self._error_streak = 0
            except Exception:  # a bug must not end the loop: log it, retry with backoff
                log.exception("reconcile round failed")
                self._error_streak += 1
                delay = min(30.0, 2.0 ** (self._error_streak - 1))
            retry = [b.retry_at for b in self._blocked.values() if b.retry_at > self.clock()]
            if retry:
                delay = min(delay, max(0.05, min(retry) - self.clock()))
            delay = min(delay, self.timer_delay())
            next_wake = self.clock() + delay

    def stalled_s(self) -> float:
        """Seconds since the loop last woke up or finished a round. The loop wakes at least every 30 s (the
        resync), so this grows past that only while one round runs: a solve (at most the time budget) and its
        writes, or a round stuck in a call that never returns."""
        return self.clock() - self.beat_at

    def timer_delay(self) -> float:
        """Seconds until the last decision goes stale with no event (`Decision.wake_at_s`: a start-gate timeout,
        kvsched.controller.start_gate, or the end of a NotReady node's grace period), plus 1 s for the wall
        clock's whole seconds; infinity when neither is ahead. Waking then lets the decision nudge a pod that
        waited behind a pod that never became Ready, or plan without a node that did not come back."""
        decision = self._last_decision
        wall_s = timestamp_s(self.wall())
        wake_at = decision.wake_at_s if decision is not None else None
        if wake_at is None or wall_s is None:
            return math.inf
        return max(0.05, wake_at - wall_s + 1.0)

    def quiet(self, now: float, start: float) -> bool:
        """Whether a round woken at `start` may decide at `now` (see Debounce in the module docstring): no change
        for `debounce_s` and no model change for `model_quiet_s`; at the latest 5 x debounce_s after `start`
        unless models changed since, and _MODEL_QUIET_CAP_S after it in any case."""
        if now >= start + max(5 * self.debounce_s, _MODEL_QUIET_CAP_S):
            return True
        if now - self._last_change < self.debounce_s and now < start + 5 * self.debounce_s:
            return False
        return now - self._last_model_change >= self.model_quiet_s or \
            (now >= start + 5 * self.debounce_s and self._last_model_change < start)

    def _plan(self, models: Sequence[Model], gpus: Sequence[Gpu], current: Sequence[Slot],
              planned: Sequence[Slot]) -> Plan:
        """The plan for `models` on `gpus`: the last one while neither changed (see the module docstring), else
        a new solve that restarts as few of the `current` replicas as the stability threshold allows."""
        options = self.config.pack_options()
        key = (tuple(models), tuple(gpus), options)
        if self._memo is not None and self._memo.key == key and not self._memo.overtaken(current):
            return self._memo.plan
        plan = self.solver(models, gpus, current=current, planned=planned, options=options)
        self._memo = _Memo(key, plan, frozenset((s.model, s.gpu) for s in current))
        self._solved = True
        self.metrics.record_plan(
            plan.max_kvpr, plan.lower_bound, plan.retunes,
            plan.solve_seconds,
            [GpuSample(g.gpu.node, g.gpu.index, g.kvpr, g.used_memory_gib * GIB) for g in plan.gpus])
        log.info("planned %d models on %d GPUs (%d replicas running, %d planned): max KVPR %.4f, lower bound "
                 "%.4f, %d retunes, %d moves, %.3fs", len(models), len(gpus), len(current), len(planned),
                 plan.max_kvpr, plan.lower_bound, plan.retunes, sum(s.source is not None for s in plan.steps),
                 plan.solve_seconds)
        if plan.next_move_gain > 0:
            log.info("--max-migrations=%s held moves back: without the cap the max KVPR would be %.4f lower; they "
                     "wait for the next change", self.config.max_migrations, plan.next_move_gain)
        return plan

    def reconcile_once(self) -> RoundReport:
        """Decide over the cache and carry out the writes (leader only, synced only, every watch current: while
        one reconnects after a failure or a 410, what it missed would look like lost pods or nodes)."""
        if not self.synced:
            return RoundReport(None)
        if not self.watches_current():
            log.debug("a watch is reconnecting: nothing decided this round")
            return RoundReport(None, stale=True)
        self.rounds += 1
        now = self.clock()
        self._blocked = {k: b for k, b in self._blocked.items() if b.retry_at > now or b.reason != "Evicting"}
        self._solved = False
        world = self._as_surged(self._as_evicted(self.world()))
        decision = decide(world, self.config, self._plan, now=self.wall(), clock_s=now, blocked=self._blocked)
        self._last_decision = decision
        self.metrics.start_gate_waiting_pods.set(decision.gate_waiting)
        self.metrics.restarting_pods.set(decision.restarting)
        self.metrics.reconcile_rounds.inc()
        self.metrics.record_models(dict(decision.model_states))
        if self.config.gpu_holders:
            ours = [p for p in world.pods if is_holder(p, self.config.holder_namespace) and not p.terminal]
            held = len(holder_uuids(ours, self.config.holder_namespace))
            self.metrics.record_holders(held, len(ours) - held)
        if self._solved:
            self._decided_steps = set()
        for step in decision.steps:  # each step of the plan in force once, when first decided
            if (step.pod.key, step.resize) not in self._decided_steps:
                self._decided_steps.add((step.pod.key, step.resize))
                self.metrics.replan_steps.labels(kind="resize" if step.resize else "move").inc()
        report = RoundReport(decision, solved=self._solved)
        if not self.leader:
            return report
        jobs: list[tuple[str, ObjectKey, Any]] = [("status", w.key, w.status) for w in decision.statuses]
        jobs += [("owned", c.key, c) for c in decision.owned_changes]
        jobs += [("deployment", p.key, p.patch) for p in decision.deployment_patches]
        jobs += [("holder", h.key, h) for h in decision.holders]
        jobs += [("pdb", c.key, c) for c in decision.pdbs]
        # After the statuses: a nudged pod is retried by the scheduler at once, and must find its slot planned.
        nudges: list[tuple[str, ObjectKey, Any]] = [("pod", n.pod, {PLANNED_SLOTS_ANNOTATION: n.digest})
                                                    for n in decision.nudges]
        if len(jobs) > 1 and self.write_concurrency > 1:
            # Independent objects: written in parallel (a thousand statuses after a node loss is seconds
            # one by one; the apiserver takes them concurrently).
            with ThreadPoolExecutor(max_workers=min(self.write_concurrency, len(jobs)),
                                    thread_name_prefix="write") as pool:
                list(pool.map(lambda job: self._write(job[0], job[1], job[2], report), jobs))
        else:
            for kind, key, payload in jobs:
                self._write(kind, key, payload, report)
        for kind, key, payload in nudges:
            self._write(kind, key, payload, report)
        for surge in decision.surges:  # make-before-break moves of the wave
            self._surge(decision, surge, report)
        for eviction in decision.evictions:  # a wave: steps on disjoint GPUs within the disruption budget
            self._evict(decision, eviction, report)
        for event in decision.events:
            self._emit(event)
        if report.writes:
            log.info("round %d: %d write(s), %d failed", self.rounds, report.writes, report.failures)
        return report

    def _write(self, kind: str, key: ObjectKey, payload: Any, report: RoundReport) -> None:
        text = json.dumps(payload, sort_keys=True, default=str)
        seen_kind = {"status": "modelserving", "owned": "modelserving", "deployment": "deployment",
                     "pod": "pod", "holder": "pod", "pdb": "pdb"}[kind]
        previous = self._inflight.get((seen_kind, key))
        if previous is not None and previous[0] == text and self.clock() - previous[1] < _INFLIGHT_TTL_S:
            return
        try:
            if kind == "status":
                self.writer.write_status(key, payload)
            elif kind == "owned":
                self.writer.owned_change(payload)
            elif kind == "pod":
                self.writer.annotate_pod(key, payload)
            elif kind == "holder":
                self.writer.holder_change(payload)
            elif kind == "pdb":
                self.writer.pdb_change(payload)
            else:
                self.writer.patch_deployment(key, payload)
        except Exception as e:
            with self._lock:
                report.failures += 1
            log.warning("writing %s %s failed: %s", kind, key, e)
            return
        with self._lock:
            report.writes += 1
            self._inflight[(seen_kind, key)] = (text, self.clock())

    def _as_evicted(self, world: World) -> World:
        """`world` as the apiserver has it after this loop's evictions: a pod whose eviction succeeded is
        terminating (the eviction set its deletionTimestamp) even while the pod watch has not delivered that yet,
        so the next decision waits for it ("waiting for pod ... to terminate") and never evicts a second replica
        on cache lag. An entry is dropped once the cache shows that pod terminating or gone (or another pod of
        that name). O(pods)."""
        if not self._evicted:
            return world
        pods, pending = [], {}
        for pod in world.pods:
            uid = self._evicted.get(pod.key)
            if uid is not None and uid == pod.uid and not pod.deleting and not pod.terminal:
                pending[pod.key] = uid
                pod = replace(pod, deleting=True)
            pods.append(pod)
        self._evicted = pending
        return replace(world, pods=tuple(pods))

    def _as_surged(self, world: World) -> World:
        """`world` as the apiserver has it after this loop's surges: a Deployment this loop surged carries its
        surge record and replicas even while the watch has not delivered them, so the next decision neither
        surges it again nor (its old pod already marked) evicts the old pod. An entry is dropped once the cache
        shows the record, or after _EVICTED_HOLD_S. O(deployments)."""
        if not self._surged:
            return world
        deployments, pending = [], {}
        now = self.clock()
        for d in world.deployments:
            entry = self._surged.get(d.key)
            if entry is not None and SURGE_ANNOTATION not in d.annotations and now - entry[2] < _EVICTED_HOLD_S:
                pending[d.key] = entry
                d = replace(d, annotations={**d.annotations, SURGE_ANNOTATION: entry[0]}, replicas=entry[1])
            deployments.append(d)
        self._surged = pending
        return replace(world, deployments=tuple(deployments))

    def _surge(self, decision: Decision, surge: Surge, report: RoundReport) -> None:
        """A make-before-break move: mark the old pod to go first, then surge its Deployment (one patch: replicas
        + 1 and the record). Nothing is surged when the mark fails; a failure is retried next round."""
        step = surge.step
        try:
            self.writer.annotate_pod(step.pod.key, {POD_DELETION_COST_ANNOTATION: SURGE_DELETION_COST})
            report.writes += 1
            self.writer.patch_deployment(surge.deployment, {"metadata": {"annotations": {SURGE_ANNOTATION: surge.record}},
                                                            "spec": {"replicas": surge.replicas + 1}})
        except Exception as e:
            report.failures += 1
            log.warning("surging %s for pod %s failed: %s", surge.deployment, step.pod.key, e)
            return
        report.writes += 1
        self._surged[surge.deployment] = (surge.record, surge.replicas + 1, self.clock())
        self.metrics.migrations.labels(reason=self._reason(decision, step)).inc()
        log.info("surged %s to %d replicas: pod %s (model %s) leaves %s once its replacement on %s is Ready",
                 surge.deployment, surge.replicas + 1, step.pod.key, step.model, step.source, step.target)

    @staticmethod
    def _reason(decision: Decision, step: Eviction) -> str:
        """`kvsched_migrations_total`'s reason for a step: Resize, Rebalance, or NodeUnavailable (source left)."""
        usable = decision.inventory is not None and any(g.node == step.source.node for g in decision.inventory.gpus)
        return "Resize" if step.resize else "Rebalance" if usable else "NodeUnavailable"

    def _evict(self, decision: Decision, eviction: Eviction, report: RoundReport) -> None:
        pod = eviction.pod.key
        try:
            self.writer.evict(pod)
        except Exception as e:
            count = self._refusals.get(pod, 0) + 1
            self._refusals[pod] = count
            delay = min(300.0, 10.0 * 2 ** (count - 1))
            reason = str(getattr(e, "reason", "EvictionFailed"))
            message = str(getattr(e, "message", e))
            self._blocked[pod] = Blocked(reason, f"eviction of pod {pod.name} refused "
                                                  f"({message}); retrying in {delay:.0f}s", self.clock() + delay)
            log.warning("evicting %s refused: %s; retry in %.0fs", pod, message, delay)
            self._wake.set()  # the condition says so at once
            return
        report.writes += 1
        self._evicted[pod] = eviction.pod.uid
        self._refusals.pop(pod, None)
        self._blocked[pod] = Blocked("Evicting", f"pod {pod.name} is being evicted",
                                              self.clock() + _EVICTED_HOLD_S)
        self.metrics.migrations.labels(reason=self._reason(decision, eviction)).inc()
        log.info("evicted %s (model %s) from %s; its replacement goes to %s", pod, eviction.model,
                 eviction.source, eviction.target)

    def _emit(self, event: Event) -> None:
        key = (event.target.kind, str(ObjectKey(event.target.namespace, event.target.name)), event.reason,
               event.message)
        if key in self._emitted:
            return
        try:
            self.writer.event(event)
        except Exception as e:
            log.warning("event %s on %s %s failed: %s", event.reason, event.target.kind, event.target.name, e)
            return
        self._emitted[key] = None
        if len(self._emitted) > 10_000:
            for old in list(self._emitted)[:5_000]:
                del self._emitted[old]


def with_status(ms: ModelServingObj, status: Mapping[str, Any]) -> ModelServingObj:
    """`ms` with `status` (tests use it to play the API server back)."""
    return replace(ms, status=dict(status))
