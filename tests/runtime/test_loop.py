"""The reconcile loop against a fake API server: leader and sync gating, re-plan on change only, no repeated
writes, refused evictions backed off. Everything is observed the way production observes it: the writes the
fake API records, the objects it holds, /metrics, and what `reconcile_once` returns."""
from __future__ import annotations

import copy
import dataclasses
import math
import threading
from typing import Any, Mapping

import pytest

from kvsched.api.objects import DeploymentObj, ModelServingObj, NodeObj, ObjectKey, OwnerRef, PdbObj, PodObj
from kvsched.api.names import GPU_UUID_ANNOTATION
from kvsched.api.readers import read_pdb, read_pod
from kvsched.api.records import Event, EvictionRefused, HolderChange, OwnedChange, PdbChange
from kvsched.controller import DecisionConfig
from kvsched.k8s.rest import ApiError
from kvsched.metrics import Metrics
from kvsched.packer import solve
from kvsched.runtime.loop import Reconciler, RoundReport

from tests.controller.fake import _merge as strategic_merge
from tests.controller.fake import deployment, node, pod

# The apiserver's answer to an eviction a PodDisruptionBudget forbids (HTTP 429), as ApiWriter.evict passes it on.
PDB_MESSAGE = "Cannot evict pod as it would violate the pod's disruption budget."


class FakeApi:
    """The API server and its watches as the loop sees them: the loop's `Writer`, holding the objects the test
    put there (`put`). Every write is recorded in `calls`, applied, and its watch event queued; `deliver()` hands
    the queued events to the reconciler (the watch), unless `watch_delivers` is False (a watch lagging behind).

    Fails where kvsched.k8s.writers.ApiWriter fails and nowhere else: a status or spec patch of a ModelServing, or
    a patch of a Deployment, that is not there raises ApiError 404; a create that finds the ModelServing (409), a
    delete, eviction or annotation that finds nothing (404) succeeds; an eviction refused by a
    PodDisruptionBudget (`refuse_evictions`, or the pod is in `refuse_pods`) raises EvictionRefused("EvictionBlocked",
    the apiserver's message). PodDisruptionBudgets are held as the API's dicts (`pdbs`): a create that finds the
    name taken, a delete that finds nothing or another uid, succeed; a patch of a missing one raises 404."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []
        self.reconciler: Reconciler | None = None
        self.refuse_evictions = False
        self.refuse_pods: set[ObjectKey] = set()
        self.pdbs: dict[ObjectKey, dict[str, Any]] = {}
        self.watch_delivers = True
        self.servings: dict[ObjectKey, ModelServingObj] = {}
        self.deployments: dict[ObjectKey, DeploymentObj] = {}
        self.pods: dict[ObjectKey, PodObj] = {}
        self._queued: list[tuple[Any, bool]] = []
        self._lock = threading.Lock()  # the loop writes to different objects from several threads

    # -- the test's side: objects created by users, kubelets, the scheduler ------------------------------------
    def put(self, obj: NodeObj | DeploymentObj | PodObj) -> None:
        """Create or replace `obj` and deliver its watch event at once."""
        with self._lock:
            if isinstance(obj, DeploymentObj):
                self.deployments[obj.key] = obj
            elif isinstance(obj, PodObj):
                self.pods[obj.key] = obj
            self._queued.append((obj, False))
        self.deliver()

    def put_pdb(self, body: Mapping[str, Any]) -> None:
        """Create or replace a PodDisruptionBudget (a user's, or a user's edit of kvsched's) and deliver it."""
        with self._lock:
            whole = copy.deepcopy(dict(body))
            key = ObjectKey(whole["metadata"]["namespace"], whole["metadata"]["name"])
            whole["metadata"].setdefault("uid", f"uid-pdb-{key.name}")
            self.pdbs[key] = whole
            self._queued.append((read_pdb(whole), False))
        self.deliver()

    def deliver(self) -> None:
        """The watches: every queued event, in order, to the reconciler (nothing while `watch_delivers` is off)."""
        if not self.watch_delivers:
            return
        with self._lock:
            events, self._queued = self._queued, []
        r = self.reconciler
        assert r is not None
        for obj, deleted in events:
            if isinstance(obj, NodeObj):
                r.observe_node(obj, deleted)
            elif isinstance(obj, PodObj):
                r.observe_pod(obj, deleted)
            elif isinstance(obj, DeploymentObj):
                r.observe_deployment(obj, deleted)
            elif isinstance(obj, PdbObj):
                r.observe_pdb(obj, deleted)
            else:
                r.observe_model_serving(obj, deleted)

    def writes(self, kind: str) -> list[Any]:
        return [what for k, what in self.calls if k == kind]

    def serving(self, name: str, namespace: str = "ns") -> ModelServingObj:
        return self.servings[ObjectKey(namespace, name)]

    def _not_found(self, kind: str, key: ObjectKey) -> ApiError:
        return ApiError(404, "NotFound", f'{kind} "{key.name}" not found')

    # -- the Writer the loop calls -----------------------------------------------------------------------------
    def write_status(self, key: ObjectKey, status: Mapping[str, Any]) -> None:
        with self._lock:
            self.calls.append(("status", key))
            if key not in self.servings:
                raise self._not_found("modelservings.kvsched.io", key)
            ms = dataclasses.replace(self.servings[key], status=copy.deepcopy(dict(status)))
            self.servings[key] = ms
            self._queued.append((ms, False))

    def patch_deployment(self, key: ObjectKey, patch: Mapping[str, Any]) -> None:
        with self._lock:
            self.calls.append(("deployment", key))
            if key not in self.deployments:
                raise self._not_found("deployments.apps", key)
            dep = self.deployments[key]
            whole = {"template": copy.deepcopy(dict(dep.template)), "strategy": copy.deepcopy(dict(dep.strategy))}
            strategic_merge(whole, dict(patch.get("spec") or {}))
            dep = dataclasses.replace(dep, template=whole["template"], strategy=whole["strategy"])
            self.deployments[key] = dep
            self._queued.append((dep, False))

    def owned_change(self, change: OwnedChange) -> None:
        with self._lock:
            self.calls.append((change.action, change.key))
            old = self.servings.get(change.key)
            if change.action == "create":
                if old is not None:
                    return  # 409 AlreadyExists: ApiWriter reads it as done
                owner = self.deployments.get(change.key)
                ms = ModelServingObj(change.key.namespace, change.key.name, f"uid-ms-{change.key.name}", 1,
                                     dict(change.body["spec"]), {},
                                     OwnerRef("Deployment", change.key.name, owner.uid if owner else ""))
            elif change.action == "delete":
                if old is None:
                    return  # 404: already gone, done
                del self.servings[change.key]
                self._queued.append((old, True))
                return
            else:
                if old is None:
                    raise self._not_found("modelservings.kvsched.io", change.key)
                ms = dataclasses.replace(old, spec=dict(change.body["spec"]), generation=old.generation + 1)
            self.servings[change.key] = ms
            self._queued.append((ms, False))

    def evict(self, pod_key: ObjectKey) -> None:
        with self._lock:
            self.calls.append(("evict", pod_key))
            if self.refuse_evictions or pod_key in self.refuse_pods:
                raise EvictionRefused("EvictionBlocked", PDB_MESSAGE)
            seen = self.pods.get(pod_key)
            if seen is None:
                return  # 404: already gone, done
            terminating = dataclasses.replace(seen, deleting=True)
            self.pods[pod_key] = terminating
            self._queued.append((terminating, False))

    def annotate_pod(self, pod_key: ObjectKey, annotations: Mapping[str, str]) -> None:
        with self._lock:
            self.calls.append(("annotate", pod_key))
            seen = self.pods.get(pod_key)
            if seen is None:
                return  # 404: already gone, nothing to retry
            annotated = dataclasses.replace(seen, annotations={**seen.annotations, **annotations})
            self.pods[pod_key] = annotated
            self._queued.append((annotated, False))

    def holder_change(self, change: HolderChange) -> None:
        """Create (409 AlreadyExists when the name is taken) or delete (404 is done) a holder pod."""
        with self._lock:
            self.calls.append((f"holder {change.action}", change.key))
            seen = self.pods.get(change.key)
            if change.action == "create":
                if seen is not None:
                    raise ApiError(409, "AlreadyExists", f"pods \"{change.key.name}\" already exists")
                created = dataclasses.replace(read_pod(dict(change.body or {})), uid=f"uid-{change.key.name}",
                                              created=f"{len(self.calls):06d}")
                self.pods[change.key] = created
                self._queued.append((created, False))
            elif seen is not None:
                del self.pods[change.key]
                self._queued.append((seen, True))

    def pdb_change(self, change: PdbChange) -> None:
        with self._lock:
            self.calls.append((f"pdb {change.action}", change.key))
            seen = self.pdbs.get(change.key)
            if change.action == "create":
                if seen is not None:
                    return  # 409 AlreadyExists: ApiWriter reads it as done
                whole = copy.deepcopy(dict(change.body or {}))
                whole["metadata"]["uid"] = f"uid-pdb-{change.key.name}"
                self.pdbs[change.key] = whole
                self._queued.append((read_pdb(whole), False))
            elif change.action == "patch":
                if seen is None:
                    raise self._not_found("poddisruptionbudgets.policy", change.key)
                merge_patch(seen, change.body or {})
                self._queued.append((read_pdb(seen), False))
            elif seen is not None and seen["metadata"]["uid"] == change.uid:  # else 404 or 409: done
                del self.pdbs[change.key]
                self._queued.append((read_pdb(seen), True))

    def event(self, event: Event) -> None:
        with self._lock:
            self.calls.append(("event", event.reason))


def merge_patch(target: dict[str, Any], patch: Mapping[str, Any]) -> None:
    """RFC 7386 JSON merge patch, in place: maps merge, null removes, anything else replaces."""
    for key, value in patch.items():
        if value is None:
            target.pop(key, None)
        elif isinstance(value, Mapping) and isinstance(target.get(key), dict):
            merge_patch(target[key], value)
        elif isinstance(value, Mapping):
            target[key] = {}
            merge_patch(target[key], value)
        else:
            target[key] = copy.deepcopy(value)


class Clock:
    """The loop's monotonic clock, moved by hand."""

    def __init__(self, now_s: float = 0.0) -> None:
        self.now_s = now_s

    def __call__(self) -> float:
        return self.now_s


@dataclasses.dataclass
class Loop:
    r: Reconciler
    api: FakeApi
    clock: Clock
    budgets: list[float]  # the time budget of every solve, in order

    def round(self) -> RoundReport:
        """One decision, then the watch delivers what it wrote."""
        report = self.r.reconcile_once()
        self.api.deliver()
        return report

    def rounds(self, n: int) -> None:
        for _ in range(n):
            self.round()

    def metric(self, line_prefix: str) -> float:
        """The value of the one /metrics line that starts with `line_prefix` (name and labels)."""
        values = [float(ln.split()[-1]) for ln in self.r.metrics.exposition().decode().splitlines()
                  if ln.startswith(line_prefix + " ")]
        assert len(values) == 1, (line_prefix, values)
        return values[0]


def make(leader: bool = True, synced: bool = True, holders: bool = False, **config: Any) -> Loop:
    """A loop over one node with 2 GPUs and one annotated Deployment `m` of 2 replicas (no pods yet); GPU holder
    pods off unless `holders`; `config`: other DecisionConfig fields."""
    budgets: list[float] = []

    def solver(*args: Any, **kw: Any) -> Any:
        budgets.append(kw["options"].time_budget_s)
        return solve(*args, **kw)

    api = FakeApi()
    clock = Clock()
    r = Reconciler(DecisionConfig(time_budget_s=1.0, gpu_holders=holders, **config), api, Metrics(), clock=clock,
                   wall=lambda: "2026-11-28T06:00:00Z", solver=solver)
    api.reconciler = r
    api.put(node("n1", gpus=2))
    api.put(deployment("m", replicas=2))
    r.set_synced(synced)
    r.set_leader(leader)
    return Loop(r, api, clock, budgets)


def slots(api: FakeApi, name: str = "m") -> list[tuple[str, int]]:
    return [(s["node"], s["gpu"]) for s in api.serving(name).status["slots"]]


def not_events(api: FakeApi) -> list[tuple[str, Any]]:
    return [c for c in api.calls if c[0] != "event"]


@pytest.mark.parametrize("leader, synced", [pytest.param(False, True, id="follower"),
                                            pytest.param(True, False, id="not synced")])
def test_only_a_synced_leader_writes(leader: bool, synced: bool) -> None:
    loop = make(leader=leader, synced=synced)
    loop.rounds(2)
    assert loop.api.calls == []
    # The same loop once synced and leading writes at once: the silence above was the gate.
    loop.r.set_synced(True)
    loop.r.set_leader(True)
    loop.round()
    assert loop.api.writes("create") == [ObjectKey("ns", "m")]


def test_first_plan_gets_the_full_budget_and_pod_events_do_not_replan() -> None:
    loop = make()
    api = loop.api
    loop.round()  # creates the ModelServing (no model to plan yet)
    assert api.writes("create") == [ObjectKey("ns", "m")] and loop.budgets == []
    loop.round()  # first plan: the full budget at once (no quick plan to overturn)
    assert loop.budgets == [1.0]
    planned = slots(api)
    assert len(planned) == 2
    api.calls.clear()
    loop.round()
    assert not_events(api) == []
    # Pods binding where the status says and becoming Ready move the cluster towards the plan: no re-plan.
    api.put(pod("m-a", "m", *planned[0], ready=False))
    loop.round()
    api.put(pod("m-a", "m", *planned[0]))
    api.put(pod("m-b", "m", *planned[1]))
    loop.round()
    assert loop.budgets == [1.0]
    assert slots(api) == planned
    assert api.serving("m").status["readyReplicas"] == 2
    api.calls.clear()
    loop.rounds(2)
    assert not_events(api) == []
    assert loop.metric('kvsched_models{state="placed"}') == 1.0
    assert loop.metric("kvsched_placement_duration_seconds_count") == 1.0
    assert loop.metric("kvsched_max_kvpr") > 0
    # A model's input changing re-plans once.
    api.put(deployment("m", replicas=2, rate="8"))
    loop.rounds(2)
    assert loop.budgets == [1.0, 1.0]


def test_a_pod_that_bound_during_a_solve_off_the_new_plan_is_kept_by_solving_again() -> None:
    # The plan is solved while a pod binds to a slot of the plan before it; the new plan, which saw that replica
    # as free, put it elsewhere. Moving a pod that just started would be a restart for nothing: solve again with
    # it running. A pod on a planned slot, or one the plan saw running and moves on purpose, re-solves nothing.
    loop = make()
    api = loop.api
    loop.rounds(2)
    assert loop.budgets == [1.0]
    api.put(node("n2", gpus=2))  # the plan's input changes: a solve
    loop.round()
    assert loop.budgets == [1.0, 1.0]
    planned = set(slots(api))
    node_name, gpu = next((n, g) for n in ("n1", "n2") for g in (0, 1) if (n, g) not in planned)
    api.put(pod("m-a", "m", node_name, gpu))  # bound off the plan, as if by the extender's older status
    loop.round()
    assert loop.budgets == [1.0, 1.0, 1.0]
    assert (node_name, gpu) in slots(api)
    assert api.writes("evict") == []
    loop.round()
    assert loop.budgets == [1.0, 1.0, 1.0]


def test_a_burst_of_models_is_decided_once_it_pauses_and_pod_events_do_not_hold_a_decision() -> None:
    # Models arrive in bursts (kubectl apply -f models/): a decision waits until models were quiet for
    # model_quiet_s, so the first models' pods do not bind with shares sized for fewer models. Other events
    # wait only debounce_s (at most 5 x that); a status write (same spec) is not a model change.
    loop = make()
    r, clock = loop.r, loop.clock
    clock.now_s = start = 100.0
    r.observe_deployment(deployment("m2"))  # a new model
    assert not r.quiet(clock.now_s + 0.3, start)
    clock.now_s += 0.3
    r.observe_deployment(deployment("m3"))  # the burst goes on
    assert not r.quiet(clock.now_s + 0.45, start)
    assert r.quiet(clock.now_s + 0.55, start)
    assert r.quiet(start + 10.0, start)  # a burst that never pauses is decided after 10 s
    # Pod events alone: debounce_s, capped at 5 x debounce_s.
    clock.now_s = 200.0
    r.observe_pod(pod("p", "m2", None, None))
    assert not r.quiet(clock.now_s + 0.1, clock.now_s) and r.quiet(clock.now_s + 0.25, clock.now_s)
    # A new ModelServing is a model change; the same one with a status written is not.
    clock.now_s = 300.0
    ms = ModelServingObj("ns", "x", "uid-x", 1, {"modelSize": "1Gi", "requestRate": 1, "sloSeconds": 1}, {}, None)
    r.observe_model_serving(ms)
    assert not r.quiet(clock.now_s + 0.25, clock.now_s)
    clock.now_s = 400.0
    r.observe_model_serving(dataclasses.replace(ms, status={"replicas": 1}))
    assert r.quiet(clock.now_s + 0.25, clock.now_s)


def test_a_write_not_yet_seen_back_is_not_repeated_until_it_expires() -> None:
    # A slow watch: the create is done but not seen back, so the next decisions still ask for it.
    loop = make()
    loop.api.watch_delivers = False
    loop.rounds(3)
    assert loop.api.writes("create") == [ObjectKey("ns", "m")]
    # Not seen back within 30 s: the write is taken as lost and issued again (the API answers 409: done).
    loop.clock.now_s = 31.0
    loop.round()
    assert loop.api.writes("create") == [ObjectKey("ns", "m")] * 2
    # Seen back: the ModelServing exists for the loop too, and the next round plans it instead.
    loop.api.watch_delivers = True
    loop.api.deliver()
    loop.round()
    assert loop.api.writes("create") == [ObjectKey("ns", "m")] * 2
    assert loop.api.writes("status") == [ObjectKey("ns", "m")]


def test_refused_eviction_is_retried_only_after_backoff() -> None:
    # A PodDisruptionBudget refuses evictions: each refused pod is retried after 10 s, then 20 s (doubling), the
    # other steps proceed meanwhile, and the condition says why.
    loop = make(make_before_break=False)
    api = loop.api
    loop.rounds(3)
    planned = slots(api)
    # Both replicas run on n1, which is then cordoned; a new node has room.
    api.put(node("n2", gpus=2))
    api.put(pod("m-a", "m", *planned[0]))
    api.put(pod("m-b", "m", *planned[1]))
    loop.rounds(2)
    assert api.writes("evict") == []
    api.put(dataclasses.replace(node("n1", gpus=2), unschedulable=True))
    api.refuse_evictions = True
    a, b = ObjectKey("ns", "m-a"), ObjectKey("ns", "m-b")

    def tried_at(now_s: float, rounds: int = 1) -> list[ObjectKey]:
        loop.clock.now_s = now_s
        loop.rounds(rounds)
        return api.writes("evict")

    assert tried_at(0.0) == [a]  # one eviction per round
    assert tried_at(0.0) == [a, b]  # m-a waits for its backoff: the other step proceeds
    migrating = next(c for c in api.serving("m").status["conditions"] if c["type"] == "Migrating")
    assert (migrating["status"], migrating["reason"]) == ("True", "EvictionBlocked")
    assert "disruption budget" in migrating["message"]
    assert tried_at(9.9, rounds=3) == [a, b]  # within the first backoff (10 s): neither again
    assert tried_at(10.0) == [a, b, a]  # then each once more, refused again
    assert tried_at(10.0) == [a, b, a, b]
    assert tried_at(29.9, rounds=3) == [a, b, a, b]  # within the second backoff (20 s): neither again
    assert loop.metric('kvsched_migrations_total{reason="NodeUnavailable"}') == 0.0
    api.refuse_evictions = False  # the budget allows it now: the next try starts the migration
    assert tried_at(30.0) == [a, b, a, b, a]
    assert api.pods[a].deleting
    assert loop.metric('kvsched_migrations_total{reason="NodeUnavailable"}') == 1.0


def running_on_n1_with_n2_added(loop: Any, rounds: int) -> None:
    """m's two replicas run on their planned slots on n1, then node n2 joins; `rounds` rounds after that."""
    api = loop.api
    loop.rounds(2)
    planned = slots(api)
    api.put(pod("m-a", "m", *planned[0]))
    api.put(pod("m-b", "m", *planned[1]))
    api.put(node("n2", gpus=2))
    loop.rounds(rounds)


@pytest.mark.parametrize("per_node, max_restarting, first_round", [
    pytest.param(1, 4, 1, id="one start per node: one eviction, then the other"),
    pytest.param(2, 4, 2, id="two starts per node: both in one wave"),
    pytest.param(2, 1, 1, id="one restart cluster-wide: one at a time"),
])
def test_a_wave_of_evictions_goes_out_in_one_round(per_node: int, max_restarting: int, first_round: int) -> None:
    loop = make(max_restarting=max_restarting, max_restarting_per_node=per_node, make_before_break=False)
    api = loop.api
    # Two models of one replica each (one replica of a model restarts at a time: a wave spans models).
    api.put(deployment("m", replicas=1))
    api.put(deployment("q", replicas=1))
    loop.rounds(2)
    api.put(pod("m-a", "m", *slots(api, "m")[0]))
    api.put(pod("q-a", "q", *slots(api, "q")[0]))
    api.put(node("n2", gpus=2))
    loop.round()
    api.put(dataclasses.replace(node("n1", gpus=2), unschedulable=True))  # both replicas must leave n1 for n2
    loop.round()
    assert len(api.writes("evict")) == first_round
    assert loop.metric('kvsched_migrations_total{reason="NodeUnavailable"}') == first_round
    loop.round()
    assert loop.metric("kvsched_restarting_pods") == first_round  # the pods evicted, stopping
    assert len(api.writes("evict")) == first_round  # the rest waits for the first wave's pods to go


def test_each_replan_counts_the_steps_it_calls_for_once() -> None:
    loop = make(make_before_break=False)
    api = loop.api
    running_on_n1_with_n2_added(loop, 1)

    def steps() -> dict[str, float]:
        return {kind: loop.metric(f'kvsched_replan_steps_total{{kind="{kind}"}}') for kind in ("move", "resize")}

    assert steps() == {"move": 0.0, "resize": 0.0}  # n2 added: nothing needs to move
    api.put(dataclasses.replace(node("n1", gpus=2), unschedulable=True))  # both replicas must leave
    loop.round()
    assert steps() == {"move": 2.0, "resize": 0.0}
    loop.rounds(3)  # the same plan in force: counted once
    assert steps() == {"move": 2.0, "resize": 0.0}
    assert api.writes("evict") == [ObjectKey("ns", "m-a")]  # one at a time: m-b waits for its replacement


def test_a_pod_pending_before_its_slot_was_planned_is_nudged_once_after_the_status() -> None:
    # The Deployment's pods exist before the ModelServing has slots (kube-scheduler rejected them then). Once the
    # status is written each pending pod is annotated once, after the status, so the scheduler retries it now.
    loop = make()
    api = loop.api
    api.put(pod("m-a", "m", None, None))
    api.put(pod("m-b", "m", None, None))
    loop.rounds(4)
    annotated = [key.name for key in api.writes("annotate")]
    assert sorted(annotated) == ["m-a", "m-b"]  # each once
    first_annotate = next(i for i, c in enumerate(api.calls) if c[0] == "annotate")
    assert ("status", ObjectKey("ns", "m")) in api.calls[:first_annotate]
    api.calls.clear()
    loop.round()
    assert not_events(api) == []


def test_nothing_is_decided_or_written_while_a_watch_reconnects() -> None:
    loop = make()
    current = [False]
    loop.r.watches_current = lambda: current[0]  # as kvsched.runtime.controller wires its informers in
    report = loop.round()
    assert report.stale and report.decision is None and loop.api.calls == [] and loop.budgets == []
    current[0] = True
    report = loop.round()
    assert not report.stale and report.decision is not None
    assert loop.api.writes("create") == [ObjectKey("ns", "m")]


@pytest.mark.parametrize("bound_at, ready, delay", [
    pytest.param("2026-11-28T05:59:00Z", False, 241.0, id="bound 60 s ago: wake at its timeout (+1 s)"),
    pytest.param("2026-11-28T05:59:00Z", True, math.inf, id="Ready: no start to time out"),
    pytest.param("2026-11-28T05:50:00Z", False, math.inf, id="already timed out"),
])
def test_the_loop_wakes_up_when_a_start_times_out(bound_at: str, ready: bool, delay: float) -> None:
    loop = make()
    loop.rounds(3)
    loop.api.put(dataclasses.replace(pod("m-a", "m", "n1", 0, ready=ready), bound_at=bound_at))
    loop.round()
    assert loop.r.timer_delay() == delay


@pytest.mark.parametrize("ready, waiting", [pytest.param(False, 1, id="a pod starts on q's GPU"),
                                            pytest.param(True, 0, id="it is Ready")])
def test_the_loop_exports_how_many_pods_wait_at_a_start_gate(ready: bool, waiting: int) -> None:
    loop = make()
    loop.api.put(deployment("q", replicas=1))
    loop.rounds(4)
    where = slots(loop.api, "q")[0]  # m has a slot on each GPU, q on one of them
    loop.api.put(dataclasses.replace(pod("m-a", "m", where[0], where[1], ready=ready),
                                     bound_at="2026-11-28T05:59:50Z"))
    loop.api.put(pod("q-a", "q", None, None))
    loop.round()
    assert loop.metric("kvsched_start_gate_waiting_pods") == waiting


def test_holders_are_created_once_per_planned_gpu_and_deleted_with_the_model() -> None:
    loop = make(holders=True)
    loop.rounds(4)
    holders = sorted(c[1].name for c in loop.api.calls if c[0] == "holder create")
    assert holders == ["kvsched-gpu-holder-n1-0", "kvsched-gpu-holder-n1-1"] == \
        sorted(f"kvsched-gpu-holder-{n}-{g}" for n, g in slots(loop.api))
    assert all(k.namespace == "kvsched-system" for k in loop.api.pods)
    writes = len(not_events(loop.api))
    loop.rounds(3)  # idle: nothing more
    assert len(not_events(loop.api)) == writes
    assert loop.metric('kvsched_gpu_holders{state="waiting"}') == 2.0  # nobody gave them a GPU here
    first = loop.api.pods[ObjectKey("kvsched-system", holders[0])]
    loop.api.put(dataclasses.replace(first, node="n1", annotations={**first.annotations,
                                                                     GPU_UUID_ANNOTATION: "GPU-0"}))
    loop.round()
    assert (loop.metric('kvsched_gpu_holders{state="held"}'), loop.metric('kvsched_gpu_holders{state="waiting"}')) \
        == (1.0, 1.0)
    writes = len(not_events(loop.api))
    # The model goes (no pod ever ran): its holders go with it.
    dep = loop.api.deployments.pop(ObjectKey("ns", "m"))
    loop.r.observe_deployment(dep, deleted=True)
    loop.rounds(4)
    assert sorted(c[1].name for c in loop.api.calls if c[0] == "holder delete") == holders
    assert not loop.api.pods


def test_a_holder_create_not_yet_seen_back_is_not_repeated() -> None:
    loop = make(holders=True)
    loop.rounds(2)  # the ModelServing, then its status and the holders
    loop.api.watch_delivers = False
    creates = [c for c in loop.api.calls if c[0] == "holder create"]
    assert len(creates) == 2
    loop.rounds(3)
    assert [c for c in loop.api.calls if c[0] == "holder create"] == creates


def test_a_second_eviction_waits_for_the_first_even_while_the_pod_watch_lags() -> None:
    # Both replicas must leave a cordoned node. The first eviction succeeds, but the pod watch has not delivered
    # its deletionTimestamp: the loop sequences on the eviction's own result, so no second replica is evicted
    # however many rounds run (and however much time passes) before the watch catches up.
    loop = make(make_before_break=False)
    api = loop.api
    running_on_n1_with_n2_added(loop, 2)
    api.put(dataclasses.replace(node("n1", gpus=2), unschedulable=True))
    api.watch_delivers = False
    loop.rounds(4)
    assert api.writes("evict") == [ObjectKey("ns", "m-a")]
    loop.clock.now_s = 120.0  # past the eviction's backoff hold: still waiting for the first pod to go
    loop.rounds(3)
    assert api.writes("evict") == [ObjectKey("ns", "m-a")]
    waiting = next(c for c in api.serving("m").status["conditions"] if c["type"] == "Migrating")
    assert "m-a" in waiting["message"]
