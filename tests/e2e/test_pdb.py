"""Per-model PodDisruptionBudgets end to end (kvsched.controller.pdb, docs/controller.md "PodDisruptionBudgets"):
`kvsched serve` with `--pod-disruption-budget` on, the chart's RBAC, a kube-scheduler calling its extender and a
kube-controller-manager (the disruption and garbage-collection controllers).

One scenario: a model gets a PDB that selects exactly its pods by kvsched.io/model with the configured
maxUnavailable and is owned by its ModelServing, and the disruption controller counts its pods; a model whose pods
a user's PDB already selects gets none, and the user's PDB is never written; an unchanged cluster writes neither
(shown after two more rounds of the controller's loop, never after a sleep); deleting the model's Deployment
deletes its PDB.
"""
from __future__ import annotations

from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from kvsched.api.names import MANAGED_BY_LABEL, MANAGED_BY_VALUE, MODEL_LABEL, PDB_PREFIX

from .harness.example import rounds
from .harness.kube import wait_for
from .test_controller import KNOBS, Pool, create_models, poke, serving, wait_rounds, wait_settled
from .test_controller import pool  # noqa: F401  (the fixture: GPU nodes of this test, kvsched and its scheduler)

pytestmark = pytest.mark.e2e

MODELS = {"llama": ("16Gi", 4.0, "1", 2), "qwen": ("30Gi", 2.0, "1", 1)}


def pdb_or_none(policy: client.PolicyV1Api, namespace: str, name: str) -> client.V1PodDisruptionBudget | None:
    try:
        return policy.read_namespaced_pod_disruption_budget(name, namespace)
    except ApiException as e:
        if e.status == 404:
            return None
        raise


def test_a_model_gets_its_pdb_a_users_is_left_alone_and_it_goes_with_the_model(pool: Pool) -> None:
    policy = client.PolicyV1Api(pool.kube)
    ns = pool.namespace
    # The user's own PDB for qwen's pods (app=qwen, the Deployment's label), before kvsched starts.
    user: dict[str, Any] = {"apiVersion": "policy/v1", "kind": "PodDisruptionBudget",
                            "metadata": {"name": "qwen-by-hand", "labels": {"team": "ml"}},
                            "spec": {"selector": {"matchLabels": {"app": "qwen"}}, "minAvailable": 1}}
    policy.create_namespaced_pod_disruption_budget(ns, user)
    pool.add_nodes({"big": (2, "80Gi")})
    proc = pool.start(knobs=[*KNOBS, "--pod-disruption-budget=true", "--pod-disruption-budget-max-unavailable=1"])
    create_models(pool, MODELS)
    wait_settled(pool, list(MODELS))

    name = f"{PDB_PREFIX}llama"
    pdb = wait_for(lambda: pdb_or_none(policy, ns, name), lambda p: p is not None, 30, f"PDB {name}")
    assert pdb is not None
    ms = serving(pool, "llama")
    assert pdb.metadata.labels == {MANAGED_BY_LABEL: MANAGED_BY_VALUE, MODEL_LABEL: "llama"}
    assert [(o.kind, o.name, o.uid, o.controller) for o in pdb.metadata.owner_references] == \
        [("ModelServing", "llama", ms["metadata"]["uid"], True)]
    assert pdb.spec.selector.match_labels == {MODEL_LABEL: "llama"} and not pdb.spec.selector.match_expressions
    assert pdb.spec.max_unavailable == 1 and pdb.spec.min_available is None
    assert pdb.spec.unhealthy_pod_eviction_policy == "AlwaysAllow"
    # The disruption controller sees exactly llama's two Ready pods and allows one disruption.
    counted = wait_for(lambda: policy.read_namespaced_pod_disruption_budget(name, ns).status,
                       lambda s: s is not None and s.expected_pods == 2 and s.current_healthy == 2, 60,
                       f"PDB {name} counting llama's pods")
    assert counted.disruptions_allowed == 1
    # qwen's pods are the user's PDB's: kvsched makes none, and does not write the user's.
    assert pdb_or_none(policy, ns, f"{PDB_PREFIX}qwen") is None
    mine = policy.read_namespaced_pod_disruption_budget("qwen-by-hand", ns)
    events = client.CoreV1Api(pool.kube).list_namespaced_event(
        ns, field_selector="involvedObject.kind=ModelServing,involvedObject.name=qwen").items
    assert any(e.reason == "PodDisruptionBudgetExists" and "qwen-by-hand" in e.message for e in events)

    # Quiet: two more rounds of the loop write neither PDB. (Compared by what a write changes -- the spec's
    # generation, labels, owners -- not by resourceVersion: the disruption controller writes the status.)
    def written(p: client.V1PodDisruptionBudget) -> tuple[Any, ...]:
        return (p.metadata.generation, p.metadata.labels, p.metadata.owner_references)

    before = {p.metadata.name: written(p) for p in policy.list_namespaced_pod_disruption_budget(ns).items}
    seen = rounds(proc.metrics())
    poke(pool)
    wait_rounds(proc, seen)
    after = {p.metadata.name: written(p) for p in policy.list_namespaced_pod_disruption_budget(ns).items}
    assert after == before
    assert after["qwen-by-hand"] == written(mine) and mine.metadata.generation == 1
    assert set(after) == {name, "qwen-by-hand"}

    # The model goes: its PDB goes with it (kvsched deletes it, or the garbage collector after the ModelServing).
    client.AppsV1Api(pool.kube).delete_namespaced_deployment("llama", ns)
    wait_for(lambda: pdb_or_none(policy, ns, name), lambda p: p is None, 60, f"PDB {name} deleted with llama")
    assert pdb_or_none(policy, ns, "qwen-by-hand") is not None
