"""The loop and per-model PodDisruptionBudgets (kvsched.controller.pdb) against the fake API server of
test_loop.py: one PDB per model, written once and then never again while nothing changes; a user's PDB is never
written; and an eviction a PDB refuses waits for a later round without holding back another model's step."""
from __future__ import annotations

import dataclasses
import logging

import pytest

from kvsched.api.names import MANAGED_BY_LABEL, MODEL_LABEL, PDB_ANNOTATION
from kvsched.api.objects import ObjectKey

from tests.controller.fake import deployment, node, pod
from tests.runtime.test_loop import make, not_events, slots

KEY = ObjectKey("ns", "kvsched-m")


def pdb_calls(loop: object) -> list[tuple[str, ObjectKey]]:
    return [c for c in loop.api.calls if c[0].startswith("pdb ")]  # type: ignore[attr-defined]


def test_each_model_gets_one_pdb_and_an_idle_cluster_writes_nothing() -> None:
    loop = make(pod_disruption_budget=True, pod_disruption_budget_max_unavailable=2)
    loop.rounds(4)
    assert pdb_calls(loop) == [("pdb create", KEY)]
    body = loop.api.pdbs[KEY]
    assert body["spec"]["selector"] == {"matchLabels": {MODEL_LABEL: "m"}}
    assert body["spec"]["maxUnavailable"] == 2
    assert body["metadata"]["ownerReferences"][0]["kind"] == "ModelServing"
    writes = len(not_events(loop.api))
    loop.clock.now_s = 100.0  # past the 30 s in which a write not seen back is not repeated
    loop.rounds(5)
    assert len(not_events(loop.api)) == writes  # idle: 0 writes
    # Someone edits kvsched's PDB: it is patched back once, then nothing.
    edited = {**body, "spec": {**body["spec"], "maxUnavailable": 5}}
    loop.api.put_pdb(edited)
    loop.rounds(3)
    assert pdb_calls(loop) == [("pdb create", KEY), ("pdb patch", KEY)]
    assert loop.api.pdbs[KEY]["spec"]["maxUnavailable"] == 2
    # The Deployment opts out: kvsched's PDB is deleted, once.
    dep = loop.api.deployments[ObjectKey("ns", "m")]
    loop.api.put(dataclasses.replace(dep, annotations={**dep.annotations, PDB_ANNOTATION: "false"}))
    loop.rounds(3)
    assert pdb_calls(loop)[2:] == [("pdb delete", KEY)]
    assert KEY not in loop.api.pdbs


def test_a_users_pdb_is_never_written_and_kvsched_makes_no_second_one() -> None:
    loop = make(pod_disruption_budget=True)
    mine = ObjectKey("ns", "mine")
    loop.api.put_pdb({"metadata": {"name": "mine", "namespace": "ns", "labels": {"team": "ml"}},
                      "spec": {"selector": {"matchLabels": {"app": "m"}}, "minAvailable": 1}})
    loop.rounds(4)
    assert pdb_calls(loop) == []
    assert loop.api.pdbs[mine]["spec"] == {"selector": {"matchLabels": {"app": "m"}}, "minAvailable": 1}
    assert ("event", "PodDisruptionBudgetExists") in loop.api.calls
    # The user's PDB goes: kvsched creates its own.
    user = loop.api.pdbs.pop(mine)
    from kvsched.api.readers import read_pdb
    loop.r.observe_pdb(read_pdb(user), deleted=True)
    loop.rounds(2)
    assert pdb_calls(loop) == [("pdb create", KEY)]
    assert MANAGED_BY_LABEL not in user["metadata"]["labels"]


def test_an_eviction_a_pdb_refuses_waits_for_a_later_round_and_holds_back_no_other_step(
        caplog: pytest.LogCaptureFixture) -> None:
    # Two models, one replica each, both on n1, which is cordoned; n2 has room. m's PDB refuses its eviction
    # (a refusal is a 429, EvictionBlocked); b's eviction goes ahead in the same rounds.
    loop = make(pod_disruption_budget=True, make_before_break=False, max_restarting=4, max_restarting_per_node=2)
    api = loop.api
    api.put(deployment("m", replicas=1))
    api.put(deployment("b", replicas=1))
    loop.rounds(3)
    api.put(pod("m-0", "m", *slots(api, "m")[0]))
    api.put(pod("b-0", "b", *slots(api, "b")[0]))
    loop.rounds(2)
    assert {n for n, _ in slots(api, "m") + slots(api, "b")} == {"n1"}
    api.put(node("n2", gpus=2))
    api.put(dataclasses.replace(node("n1", gpus=2), unschedulable=True))
    m0, b0 = ObjectKey("ns", "m-0"), ObjectKey("ns", "b-0")
    api.refuse_pods = {m0}
    caplog.set_level(logging.WARNING, logger="kvsched.runtime.loop")
    loop.clock.now_s = 0.0
    loop.rounds(4)
    evictions = api.writes("evict")
    assert evictions.count(m0) == 1  # refused once; not tried again within its 10 s backoff
    assert evictions.count(b0) == 1 and api.pods[b0].deleting  # the other model's step was not held back
    assert loop.metric('kvsched_migrations_total{reason="NodeUnavailable"}') == 1.0  # b's only
    assert loop.metric('kvsched_replan_steps_total{kind="move"}') == 2.0  # each step counted once
    refused = [r for r in caplog.records if "m-0" in r.getMessage() and "refused" in r.getMessage()]
    assert len(refused) == 1  # logged once per refusal
    blocked = [c for c in api.calls if c == ("event", "EvictionBlocked")]
    assert len(blocked) == 1
    migrating = next(c for c in api.serving("m").status["conditions"] if c["type"] == "Migrating")
    assert migrating["reason"] == "EvictionBlocked"
    # The PDB allows it now (b's replacement is Ready): the step is taken in the round after the backoff.
    api.refuse_pods = set()
    loop.clock.now_s = 10.0
    loop.round()
    assert api.writes("evict").count(m0) == 2 and api.pods[m0].deleting
    assert loop.metric('kvsched_replan_steps_total{kind="move"}') == 2.0
