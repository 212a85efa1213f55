"""The reconcile loop with a fake writer: leader and sync gating, re-plan on change only, no repeated writes."""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import pytest

from kvsched.api.objects import ModelServingObj, ObjectKey, OwnerRef
from kvsched.api.records import Event, EvictionRefused, OwnedChange
from kvsched.controller import DecisionConfig
from kvsched.runtime.loop import Reconciler
from kvsched.metrics import Metrics
from kvsched.packer import solve

from tests.controller.fake import deployment, node, pod


class FakeWriter:
    """Records every call; plays ModelServing creates and status writes back into the reconciler."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []
        self.reconciler: Reconciler | None = None
        self.refuse_evictions = False
        self.servings: dict[ObjectKey, ModelServingObj] = {}

    def write_status(self, key: ObjectKey, status: Mapping[str, Any]) -> None:
        self.calls.append(("status", key))
        ms = dataclasses.replace(self.servings[key], status=dict(status))
        self.servings[key] = ms
        assert self.reconciler is not None
        self.reconciler.observe_model_serving(ms)

    def patch_deployment(self, key: ObjectKey, patch: Mapping[str, Any]) -> None:
        self.calls.append(("deployment", key))

    def owned_change(self, change: OwnedChange) -> None:
        self.calls.append((change.action, change.key))
        if change.action == "create":
            ms = ModelServingObj(change.key.namespace, change.key.name, "uid-ms", 1, dict(change.body["spec"]), {},
                                 OwnerRef("Deployment", change.key.name, f"uid-{change.key.name}"))
            self.servings[change.key] = ms
            assert self.reconciler is not None
            self.reconciler.observe_model_serving(ms)
        elif change.action == "patch":
            ms = dataclasses.replace(self.servings[change.key], spec=dict(change.body["spec"]),
                                     generation=self.servings[change.key].generation + 1)
            self.servings[change.key] = ms
            assert self.reconciler is not None
            self.reconciler.observe_model_serving(ms)

    def evict(self, pod_key: ObjectKey) -> None:
        self.calls.append(("evict", pod_key))
        if self.refuse_evictions:
            raise EvictionRefused("EvictionBlocked", "Cannot evict pod as it would violate the pod's "
                                       "disruption budget.")

    def annotate_pod(self, pod_key: ObjectKey, annotations: Mapping[str, str]) -> None:
        self.calls.append(("annotate", pod_key))
        assert self.reconciler is not None
        seen = self.reconciler._pods[pod_key]
        self.reconciler.observe_pod(dataclasses.replace(seen, annotations={**seen.annotations, **annotations}))

    def event(self, event: Event) -> None:
        self.calls.append(("event", event.reason))


def make(leader: bool = True, synced: bool = True) -> tuple[Reconciler, FakeWriter, list[float]]:
    budgets: list[float] = []

    def solver(*args: Any, **kw: Any) -> Any:
        budgets.append(kw["options"].time_budget_s)
        return solve(*args, **kw)

    writer = FakeWriter()
    now = [0.0]
    r = Reconciler(DecisionConfig(time_budget_s=1.0), writer, Metrics(), clock=lambda: now[0],
                   wall=lambda: "2026-11-28T06:00:00Z", solver=solver)
    writer.reconciler = r
    r.observe_node(node("n1", gpus=2))
    r.observe_deployment(deployment("m", replicas=2))
    r.set_synced(synced)
    r.set_leader(leader)
    return r, writer, budgets


@pytest.mark.parametrize("leader, synced", [pytest.param(False, True, id="follower"),
                                            pytest.param(True, False, id="not synced")])
def test_only_a_synced_leader_writes(leader: bool, synced: bool) -> None:
    r, writer, _ = make(leader=leader, synced=synced)
    r.reconcile_once()
    r.reconcile_once()
    assert writer.calls == []


def test_first_plan_gets_the_full_budget_and_pod_events_do_not_replan() -> None:
    r, writer, budgets = make()
    r.reconcile_once()  # creates the ModelServing (no model to plan yet)
    assert ("create", ObjectKey("ns", "m")) in writer.calls and budgets == []
    r.reconcile_once()  # first plan: the full budget at once (no quick plan to overturn)
    assert budgets == [1.0]
    slots = writer.servings[ObjectKey("ns", "m")].status["slots"]
    writer.calls.clear()
    r.reconcile_once()
    assert [c for c in writer.calls if c[0] != "event"] == []
    # Pods binding where the status says and becoming Ready move the cluster towards the plan: no re-plan.
    r.observe_pod(pod("m-a", "m", slots[0]["node"], slots[0]["gpu"], ready=False))
    r.reconcile_once()
    r.observe_pod(pod("m-a", "m", slots[0]["node"], slots[0]["gpu"]))
    r.observe_pod(pod("m-b", "m", slots[1]["node"], slots[1]["gpu"]))
    r.reconcile_once()
    assert budgets == [1.0]
    assert writer.servings[ObjectKey("ns", "m")].status["slots"] == slots
    assert writer.servings[ObjectKey("ns", "m")].status["readyReplicas"] == 2
    writer.calls.clear()
    r.reconcile_once()
    r.reconcile_once()
    assert [c for c in writer.calls if c[0] != "event"] == []
    metrics = r.metrics.exposition().decode()
    assert "kvsched_max_kvpr " in metrics and 'kvsched_models{state="placed"} 1.0' in metrics
    assert "kvsched_placement_duration_seconds_count 1.0" in metrics
    # A model's input changing re-plans once.
    r.observe_deployment(deployment("m", replicas=2, rate="8"))
    r.reconcile_once()
    r.reconcile_once()
    assert budgets == [1.0, 1.0]


def test_a_pod_that_bound_during_a_solve_off_the_new_plan_is_kept_by_solving_again() -> None:
    # The plan is solved while a pod binds to a slot of the plan before it; the new plan, which saw that replica
    # as free, put it elsewhere. Moving a pod that just started would be a restart for nothing: solve again with
    # it running. A pod on a planned slot, or one the plan saw running and moves on purpose, re-solves nothing.
    r, writer, budgets = make()
    r.reconcile_once()
    r.reconcile_once()
    assert budgets == [1.0]
    slots = {(s["node"], s["gpu"]) for s in writer.servings[ObjectKey("ns", "m")].status["slots"]}
    r.observe_node(node("n2", gpus=2))  # the plan's input changes: a solve
    r.reconcile_once()
    assert budgets == [1.0, 1.0]
    slots = {(s["node"], s["gpu"]) for s in writer.servings[ObjectKey("ns", "m")].status["slots"]}
    node_name, gpu = next((n, g) for n in ("n1", "n2") for g in (0, 1) if (n, g) not in slots)
    r.observe_pod(pod("m-a", "m", node_name, gpu))  # bound off the plan, as if by the extender's older status
    r.reconcile_once()
    assert budgets == [1.0, 1.0, 1.0]
    assert (node_name, gpu) in {(s["node"], s["gpu"]) for s in writer.servings[ObjectKey("ns", "m")].status["slots"]}
    assert not [c for c in writer.calls if c[0] == "evict"]
    r.reconcile_once()
    assert budgets == [1.0, 1.0, 1.0]


def test_a_burst_of_models_is_decided_once_it_pauses_and_pod_events_do_not_hold_a_decision() -> None:
    # Models arrive in bursts (kubectl apply -f models/): a decision waits until models were quiet for
    # model_quiet_s, so the first models' pods do not bind with shares sized for fewer models. Other events
    # wait only debounce_s (at most 5 x that); a status write (same spec) is not a model change.
    r, _, _ = make()
    t = 100.0
    r.clock = lambda: t
    start = t
    r.observe_deployment(deployment("m2"))  # a new model
    assert not r.quiet(t + 0.3, start)
    t += 0.3
    r.observe_deployment(deployment("m3"))  # the burst goes on
    assert not r.quiet(t + 0.45, start)
    assert r.quiet(t + 0.55, start)
    assert r.quiet(start + 10.0, start)  # a burst that never pauses is decided after 10 s
    # Pod events alone: debounce_s, capped at 5 x debounce_s.
    t = 200.0
    r.observe_pod(pod("p", "m2", None, None))
    assert not r.quiet(t + 0.1, t) and r.quiet(t + 0.25, t)
    # A new ModelServing is a model change; the same one with a status written is not.
    t = 300.0
    ms = ModelServingObj("ns", "x", "uid-x", 1, {"modelSize": "1Gi", "requestRate": 1, "sloSeconds": 1}, {}, None)
    r.observe_model_serving(ms)
    assert not r.quiet(t + 0.25, t)
    t = 400.0
    r.observe_model_serving(dataclasses.replace(ms, status={"replicas": 1}))
    assert r.quiet(t + 0.25, t)


def test_a_write_not_yet_seen_back_is_not_repeated() -> None:
    r, writer, _ = make()
    writer.owned_change = lambda change: writer.calls.append((change.action, change.key))  # type: ignore
    r.reconcile_once()
    r.reconcile_once()
    assert writer.calls.count(("create", ObjectKey("ns", "m"))) == 1


def test_refused_eviction_is_retried_only_after_backoff() -> None:
    r, writer, _ = make()
    for _ in range(3):
        r.reconcile_once()
    slots = writer.servings[ObjectKey("ns", "m")].status["slots"]
    # Replica 1 runs on a GPU of a node that is then cordoned; a new node has room.
    r.observe_node(node("n2", gpus=2))
    r.observe_pod(pod("m-a", "m", slots[0]["node"], slots[0]["gpu"]))
    r.observe_pod(pod("m-b", "m", slots[1]["node"], slots[1]["gpu"]))
    for _ in range(2):
        r.reconcile_once()
    r.observe_node(dataclasses.replace(node("n1", gpus=2), unschedulable=True))
    writer.refuse_evictions = True
    writer.calls.clear()
    r.reconcile_once()
    assert [c for c in writer.calls if c[0] == "evict"] == [("evict", ObjectKey("ns", "m-a"))]
    r.reconcile_once()
    status = writer.servings[ObjectKey("ns", "m")].status
    migrating = next(c for c in status["conditions"] if c["type"] == "Migrating")
    assert (migrating["status"], migrating["reason"]) == ("True", "EvictionBlocked")
    assert "disruption budget" in migrating["message"]
    evictions = len([c for c in writer.calls if c[0] == "evict"])
    assert evictions <= 2  # m-b may be tried once; m-a is not retried inside its backoff
    assert writer.calls.count(("evict", ObjectKey("ns", "m-a"))) == 1


def test_each_replan_counts_the_steps_it_calls_for_once() -> None:
    r, writer, _ = make()
    for _ in range(2):
        r.reconcile_once()
    slots = writer.servings[ObjectKey("ns", "m")].status["slots"]
    r.observe_pod(pod("m-a", "m", slots[0]["node"], slots[0]["gpu"]))
    r.observe_pod(pod("m-b", "m", slots[1]["node"], slots[1]["gpu"]))
    r.observe_node(node("n2", gpus=2))
    r.reconcile_once()

    def steps() -> dict[str, float]:
        lines = [ln for ln in r.metrics.exposition().decode().splitlines()
                 if ln.startswith("kvsched_replan_steps_total{")]
        return {ln.split('"')[1]: float(ln.split()[-1]) for ln in lines}

    assert steps() == {"move": 0.0, "resize": 0.0}  # n2 added: nothing needs to move
    r.observe_node(dataclasses.replace(node("n1", gpus=2), unschedulable=True))  # both replicas must leave
    r.reconcile_once()
    assert steps() == {"move": 2.0, "resize": 0.0}
    for _ in range(3):  # the same plan in force: counted once
        r.reconcile_once()
    assert steps() == {"move": 2.0, "resize": 0.0}


def test_a_pod_pending_before_its_slot_was_planned_is_nudged_once_after_the_status() -> None:
    # The Deployment's pods exist before the ModelServing has slots (kube-scheduler rejected them then). Once the
    # status is written each pending pod is annotated once, after the status, so the scheduler retries it now.
    r, writer, _ = make()
    r.observe_pod(pod("m-a", "m", None, None))
    r.observe_pod(pod("m-b", "m", None, None))
    for _ in range(4):
        r.reconcile_once()
    annotated = [c[1].name for c in writer.calls if c[0] == "annotate"]
    assert sorted(annotated) == ["m-a", "m-b"]  # each once
    first_annotate = next(i for i, c in enumerate(writer.calls) if c[0] == "annotate")
    assert any(c[0] == "status" for c in writer.calls[:first_annotate])
    writer.calls.clear()
    r.reconcile_once()
    assert [c for c in writer.calls if c[0] != "event"] == []


def test_nothing_is_decided_or_written_while_a_watch_reconnects() -> None:
    r, writer, budgets = make()
    current = [False]
    r.watches_current = lambda: current[0]
    report = r.reconcile_once()
    assert report.stale and report.decision is None and writer.calls == [] and budgets == []
    current[0] = True
    r.reconcile_once()
    assert ("create", ObjectKey("ns", "m")) in writer.calls
