"""Per-model PodDisruptionBudgets (kvsched.controller.pdb): which models get one, what it says, and that only
kvsched's own are ever written; then through `decide`, to a fixpoint where an unchanged world writes nothing."""
from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from kvsched.api.names import MANAGED_BY_LABEL, MANAGED_BY_VALUE, MODEL_LABEL, PDB_ANNOTATION
from kvsched.api.objects import ObjectKey, OwnerRef, PdbObj, World
from kvsched.api.readers import read_pdb
from kvsched.controller.config import DecisionConfig
from kvsched.controller.pdb import PdbModel, desired_pdb, pdb_changes, pdb_patch
from kvsched.controller.selector import label_selector

from tests.controller.fake import NO_HOLDERS, apply, deployment, node, pod, run, serving

ON = DecisionConfig(gpu_holders=False, pod_disruption_budget=True)
OFF = DecisionConfig(gpu_holders=False)
OURS = {MANAGED_BY_LABEL: MANAGED_BY_VALUE, MODEL_LABEL: "m"}


def model(name: str = "m", annotation: str | None = None, namespace: str = "ns") -> PdbModel:
    notes = {PDB_ANNOTATION: annotation} if annotation is not None else {}
    dep = deployment(name, namespace=namespace)
    dep = dataclasses.replace(dep, annotations={**dep.annotations, **notes})
    return PdbModel(serving(name, namespace=namespace, owned=True), dep)


def ours(name: str = "m", max_unavailable: Any = 1, **kw: Any) -> PdbObj:
    """kvsched's PDB of model `name` as the watch would deliver it (read from the body kvsched creates)."""
    body = desired_pdb(serving(name, owned=True), 1)
    body["metadata"]["uid"] = f"uid-pdb-{name}"
    body["spec"]["maxUnavailable"] = max_unavailable
    return dataclasses.replace(read_pdb(body), **kw)


def users(name: str, selector: dict[str, Any] | None, namespace: str = "ns") -> PdbObj:
    return PdbObj(namespace, name, uid=f"uid-{name}", labels={"team": "ml"}, selector=selector, min_available=1)


@pytest.mark.parametrize("models, pdbs, config, expected", [
    pytest.param([], [], ON, [], id="no model: nothing"),
    pytest.param([model()], [], OFF, [], id="option off: none"),
    pytest.param([model()], [], ON, [("create", "kvsched-m")], id="option on: one per model"),
    pytest.param([model(annotation="false")], [], ON, [], id="annotation false opts out"),
    pytest.param([model(annotation=" TRUE ")], [], OFF, [("create", "kvsched-m")], id="annotation true opts in"),
    pytest.param([model(annotation="yes")], [], OFF, [], id="a bad annotation: the default holds"),
    pytest.param([model()], [ours()], ON, [], id="as wanted: nothing written"),
    pytest.param([model()], [ours(max_unavailable=3)], ON, [("patch", "kvsched-m")], id="edited: patched back"),
    pytest.param([model()], [ours()], OFF, [("delete", "kvsched-m")], id="option turned off: deleted"),
    pytest.param([model(annotation="false")], [ours()], ON, [("delete", "kvsched-m")],
                 id="annotation false: deleted"),
    pytest.param([], [ours()], ON, [("delete", "kvsched-m")], id="model gone: deleted"),
    pytest.param([], [ours(deleting=True)], ON, [], id="being deleted: waited for"),
    pytest.param([model()], [ours(deleting=True)], ON, [], id="being deleted while wanted: waited for"),
    pytest.param([model()], [users("mine", {"matchLabels": {"app": "m"}})], ON, [],
                 id="a user's PDB selects the template's labels: none"),
    pytest.param([model()], [users("mine", {"matchLabels": {"app": "m"}}), ours()], ON, [("delete", "kvsched-m")],
                 id="a user's PDB appears: kvsched's goes"),
    pytest.param([model()], [users("all", {})], ON, [], id="a user's empty selector selects every pod"),
    pytest.param([model()], [users("none", None)], ON, [("create", "kvsched-m")],
                 id="a user's PDB without selector selects none"),
    pytest.param([model()], [users("other", {"matchLabels": {"app": "other"}})], ON, [("create", "kvsched-m")],
                 id="a user's PDB of other pods: kvsched's created"),
    pytest.param([model()], [users("mine", {"matchLabels": {"app": "m"}}, namespace="elsewhere")], ON,
                 [("create", "kvsched-m")], id="a user's PDB in another namespace does not count"),
    pytest.param([model()], [users("kvsched-m", {"matchLabels": {"app": "other"}})], ON, [],
                 id="name taken by a user's PDB: left alone, none created"),
    pytest.param([model(), model("b", annotation="false")], [ours("b")], ON,
                 [("create", "kvsched-m"), ("delete", "kvsched-b")], id="two models, one opted out"),
])
def test_which_pdbs_are_written(models: list[PdbModel], pdbs: list[PdbObj], config: DecisionConfig,
                                expected: list[tuple[str, str]]) -> None:
    changes, _ = pdb_changes(models, pdbs, [], config)
    assert [(c.action, c.key.name) for c in changes] == expected
    users_pdbs = {p.key for p in pdbs if p.labels.get(MANAGED_BY_LABEL) != MANAGED_BY_VALUE}
    assert not [c for c in changes if c.key in users_pdbs and c.action != "create"], "a user's PDB was written"


def test_the_pdb_selects_the_models_pods_by_its_label_and_is_owned_by_its_model_serving() -> None:
    config = dataclasses.replace(ON, pod_disruption_budget_max_unavailable=2)
    [change], _ = pdb_changes([model()], [], [], config)
    body = change.body
    assert body is not None and change.key == ObjectKey("ns", "kvsched-m")
    assert body["metadata"]["labels"] == OURS
    assert body["metadata"]["ownerReferences"] == [{"apiVersion": "kvsched.io/v1alpha1", "kind": "ModelServing",
                                                    "name": "m", "uid": "uid-ms-m", "controller": True}]
    assert body["spec"] == {"selector": {"matchLabels": {MODEL_LABEL: "m"}}, "maxUnavailable": 2,
                            "unhealthyPodEvictionPolicy": "AlwaysAllow"}
    selector = label_selector(body["spec"]["selector"])
    assert selector is not None
    assert selector.matches(pod("m-0", "m", "n1", 0).labels)
    assert not selector.matches(pod("b-0", "b", "n1", 0).labels)


def test_a_live_pods_labels_count_too() -> None:
    # The template says app=m, but a running pod still has an older label a user's PDB selects.
    old = dataclasses.replace(pod("m-0", "m", "n1", 0), labels={MODEL_LABEL: "m", "tier": "gold"})
    user = users("gold", {"matchExpressions": [{"key": "tier", "operator": "In", "values": ["gold"]}]})
    assert pdb_changes([model()], [user], [old], ON)[0] == ()
    assert [c.action for c in pdb_changes([model()], [user], [], ON)[0]] == ["create"]


@pytest.mark.parametrize("existing, expected", [
    pytest.param(ours(), None, id="as wanted"),
    pytest.param(ours(max_unavailable="50%"), {"spec": {"maxUnavailable": 1}}, id="budget edited"),
    pytest.param(ours(min_available=1, max_unavailable=None), {"spec": {"maxUnavailable": 1, "minAvailable": None}},
                 id="minAvailable instead"),
    pytest.param(ours(selector={"matchLabels": {MODEL_LABEL: "m", "x": "y"}}),
                 {"spec": {"selector": {"matchLabels": {MODEL_LABEL: "m", "x": None}}}}, id="selector widened"),
    pytest.param(ours(selector={"matchLabels": {MODEL_LABEL: "m"}, "matchExpressions": []}),
                 {"spec": {"selector": {"matchLabels": {MODEL_LABEL: "m"}, "matchExpressions": None}}},
                 id="selector with expressions"),
    pytest.param(ours(unhealthy_policy=None), None, id="an apiserver without the policy field: not patched for it"),
    pytest.param(ours(unhealthy_policy="IfHealthyBudget"), {"spec": {"unhealthyPodEvictionPolicy": "AlwaysAllow"}},
                 id="policy edited"),
    pytest.param(ours(owner=OwnerRef("ModelServing", "m", "old-uid")),
                 {"metadata": {"ownerReferences": [{"apiVersion": "kvsched.io/v1alpha1", "kind": "ModelServing",
                                                    "name": "m", "uid": "uid-ms-m", "controller": True}]}},
                 id="owner of an earlier ModelServing of that name"),
])
def test_patch_sets_only_what_differs(existing: PdbObj, expected: dict[str, Any] | None) -> None:
    assert pdb_patch(existing, serving("m", owned=True), 1) == expected


def test_problems_name_the_object_and_the_value() -> None:
    _, problems = pdb_changes([model(annotation="maybe")], [], [], OFF)
    [p] = problems
    assert (p.kind, p.key, p.type, p.reason) == ("Deployment", ObjectKey("ns", "m"), "Warning", "InvalidAnnotation")
    assert "'maybe'" in p.message and PDB_ANNOTATION in p.message
    _, problems = pdb_changes([model()], [users("mine", {"matchLabels": {"app": "m"}})], [], ON)
    assert [(p.kind, p.reason) for p in problems] == [("ModelServing", "PodDisruptionBudgetExists")]
    assert "mine" in problems[0].message


def with_pdbs(world: World, decision: Any) -> World:
    """`apply`, plus the decision's PDB writes as the apiserver takes them (a create gets a uid)."""
    after = apply(world, decision)
    pdbs = {p.key: p for p in world.pdbs}
    for c in decision.pdbs:
        if c.action == "create":
            pdbs[c.key] = read_pdb({**c.body, "metadata": {**c.body["metadata"], "uid": f"uid-pdb-{c.key.name}"}})
        elif c.action == "delete":
            pdbs.pop(c.key, None)
        else:
            raise AssertionError(f"unexpected patch {c}")
    return dataclasses.replace(after, pdbs=tuple(pdbs.values()))


@pytest.mark.parametrize("config, pdbs_after", [
    pytest.param(ON, 2, id="option on: one per model"),
    pytest.param(NO_HOLDERS, 0, id="option off: none"),
])
def test_decide_reaches_a_fixpoint_with_no_pdb_writes(config: DecisionConfig, pdbs_after: int) -> None:
    world = World((node("n1"),), (), (deployment("m"), deployment("b")), ())
    for _ in range(6):
        decision = run(world, config)
        if decision.writes == 0:
            break
        world = with_pdbs(world, decision)
    assert run(world, config).writes == 0
    assert len(world.pdbs) == pdbs_after
    if pdbs_after:
        assert {p.name for p in world.pdbs} == {"kvsched-m", "kvsched-b"}
        # A user's PDB that selects m's pods: kvsched's goes, and the user's is never written.
        user = users("mine", {"matchLabels": {"app": "m"}})
        world = dataclasses.replace(world, pdbs=world.pdbs + (user,))
        decision = run(world, config)
        assert [(c.action, c.key.name) for c in decision.pdbs] == [("delete", "kvsched-m")]
        assert any(e.reason == "PodDisruptionBudgetExists" for e in decision.events)
        world = with_pdbs(world, decision)
        assert run(world, config).pdbs == ()
