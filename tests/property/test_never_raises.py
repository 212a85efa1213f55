"""Property: no object an informer can deliver makes a handler or the decision core raise.

Arbitrary JSON objects (and valid objects with one value anywhere replaced by arbitrary JSON) go to every informer
handler: the extender cache's `on_pod`/`on_node`/`on_model` (with and without GPU holders) and the controller's
readers (`kvsched.api.readers`) feeding `Reconciler.observe_*`, as `kvsched.runtime.controller` wires them. The
worlds the readers build then go to `kvsched.controller.decide` with the real packer (a small time budget). Bad
objects must be skipped, logged or read as invalid: one namespace's input never halts planning for all (issue 16).
The crashes this found are pinned as plain regression cases at the end.
"""
from __future__ import annotations

import copy
import json
import os
from typing import Any, Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kvsched.api.names import (
    ENGINE_OVERHEAD_ANNOTATION,
    GPU_ANNOTATION,
    GPU_MEMORY_LABEL,
    GPU_MEMORY_MIB_LABEL,
    GPU_RESOURCE,
    GPU_UUID_ANNOTATION,
    HOLDER_GPU_ANNOTATION,
    HOLDER_LABEL,
    HOLDER_NODE_ANNOTATION,
    MEMORY_FRACTION_ANNOTATION,
    MODEL_LABEL,
    RATE_ANNOTATION,
    SIZE_ANNOTATION,
    SLO_ANNOTATION,
)
from kvsched.api.readers import read_deployment, read_model_serving, read_node, read_pdb, read_pod
from kvsched.controller import DecisionConfig
from kvsched.extender.cache import Cache
from kvsched.controller.slots import PodRef
from kvsched.controller.status import planned_slots
from kvsched.controller.template import template_patch
from kvsched.metrics import Metrics
from kvsched.packer import PackOptions, solve
from kvsched.runtime.loop import Reconciler

NOW = "2026-11-28T06:00:00Z"
HOLDER_NS = "kvsched-system"

# -- valid objects, as the apiserver delivers them ------------------------------------------------------------
POD: dict[str, Any] = {
    "apiVersion": "v1", "kind": "Pod",
    "metadata": {"name": "m-0", "namespace": "ns", "uid": "pod-uid", "creationTimestamp": NOW,
                 "labels": {MODEL_LABEL: "m", "app": "m"},
                 "annotations": {GPU_ANNOTATION: "0", MEMORY_FRACTION_ANNOTATION: "0.5"},
                 "ownerReferences": [{"kind": "ReplicaSet", "name": "m-1", "uid": "rs", "controller": True}]},
    "spec": {"nodeName": "n1", "schedulerName": "kvsched",
             "containers": [{"name": "server", "resources": {"requests": {GPU_RESOURCE: "0"}, "limits": {}}}],
             "initContainers": [{"name": "init", "resources": {"limits": {GPU_RESOURCE: "1"}}}]},
    "status": {"phase": "Running", "startTime": NOW,
               "conditions": [{"type": "Ready", "status": "True"},
                              {"type": "PodScheduled", "status": "True", "lastTransitionTime": NOW}]},
}
HOLDER_POD: dict[str, Any] = {
    "metadata": {"name": "holder-n1-0", "namespace": HOLDER_NS, "uid": "holder-uid",
                 "labels": {HOLDER_LABEL: "true"},
                 "annotations": {HOLDER_NODE_ANNOTATION: "n1", HOLDER_GPU_ANNOTATION: "0",
                                 GPU_UUID_ANNOTATION: "GPU-0000"}},
    "spec": {"nodeName": "n1", "containers": [{"name": "holder", "resources": {"requests": {GPU_RESOURCE: "1"}}}]},
    "status": {"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]},
}
NODE: dict[str, Any] = {
    "apiVersion": "v1", "kind": "Node",
    "metadata": {"name": "n1", "uid": "node-uid", "labels": {GPU_MEMORY_MIB_LABEL: "81920", GPU_MEMORY_LABEL: "80Gi"}},
    "spec": {"unschedulable": False},
    "status": {"capacity": {GPU_RESOURCE: "2"}, "allocatable": {GPU_RESOURCE: "2"},
               "conditions": [{"type": "Ready", "status": "True"}]},
}
DEPLOYMENT: dict[str, Any] = {
    "apiVersion": "apps/v1", "kind": "Deployment",
    "metadata": {"name": "m", "namespace": "ns", "uid": "dep-uid",
                 "annotations": {SIZE_ANNOTATION: "16Gi", RATE_ANNOTATION: "4", SLO_ANNOTATION: "1",
                                 ENGINE_OVERHEAD_ANNOTATION: "1Gi"}},
    "spec": {"replicas": 2,
             "template": {"metadata": {"labels": {"app": "m", MODEL_LABEL: "m"}},
                          "spec": {"schedulerName": "kvsched", "runtimeClassName": "nvidia",
                                   "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
                                       "nodeSelectorTerms": [{"matchExpressions": []}]}}},
                                   "containers": [{"name": "server", "env": [
                                       {"name": "NVIDIA_VISIBLE_DEVICES", "valueFrom": {"fieldRef": {
                                           "fieldPath": "metadata.annotations['kvsched.io/visible-devices']"}}}]}]}},
             "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 0, "maxUnavailable": 1}}},
}
MODEL_SERVING: dict[str, Any] = {
    "apiVersion": "kvsched.io/v1alpha1", "kind": "ModelServing",
    "metadata": {"name": "m", "namespace": "ns", "uid": "ms-uid", "generation": 3,
                 "ownerReferences": [{"kind": "Deployment", "name": "m", "uid": "dep-uid", "controller": True}]},
    "spec": {"workloadRef": {"kind": "Deployment", "name": "m"}, "modelSize": "16Gi", "requestRate": 4,
             "sloSeconds": 1, "replicas": 2, "engineOverhead": "1Gi", "fromAnnotations": True},
    "status": {"observedGeneration": 3, "replicas": 2, "placedReplicas": 1, "kvpr": 0.1,
               "slots": [{"node": "n1", "gpu": 0, "memoryFraction": 0.5}],
               "conditions": [{"type": "Placed", "status": "True", "reason": "Planned", "message": "",
                               "observedGeneration": 3, "lastTransitionTime": NOW}]},
}
SOLO_SERVING: dict[str, Any] = {  # a ModelServing of its own, naming an unannotated Deployment
    "metadata": {"name": "solo", "namespace": "ns", "uid": "solo-uid", "generation": 1},
    "spec": {"workloadRef": {"name": "solo-dep"}, "modelSize": "8Gi", "requestRate": 2.5, "sloSeconds": "500ms"},
    "status": {},
}
SOLO_DEPLOYMENT: dict[str, Any] = {
    "metadata": {"name": "solo-dep", "namespace": "ns", "uid": "solo-dep-uid"},
    "spec": {"replicas": 1, "template": {"spec": {"containers": [{"name": "c"}]}}, "strategy": {"type": "Recreate"}},
}
KVSCHED_PDB: dict[str, Any] = {  # kvsched's PodDisruptionBudget of model m (kvsched.controller.pdb)
    "apiVersion": "policy/v1", "kind": "PodDisruptionBudget",
    "metadata": {"name": "kvsched-m", "namespace": "ns", "uid": "pdb-uid",
                 "labels": {"app.kubernetes.io/managed-by": "kvsched", MODEL_LABEL: "m"},
                 "ownerReferences": [{"kind": "ModelServing", "name": "m", "uid": "ms-uid", "controller": True}]},
    "spec": {"selector": {"matchLabels": {MODEL_LABEL: "m"}}, "maxUnavailable": 1,
             "unhealthyPodEvictionPolicy": "AlwaysAllow"},
}
USER_PDB: dict[str, Any] = {  # a user's, selecting solo's pods by expression
    "metadata": {"name": "solo", "namespace": "ns", "uid": "user-pdb-uid"},
    "spec": {"selector": {"matchExpressions": [{"key": MODEL_LABEL, "operator": "In", "values": ["solo"]}]},
             "minAvailable": "50%"},
}
VALID = {"pod": [POD, HOLDER_POD], "node": [NODE], "deployment": [DEPLOYMENT, SOLO_DEPLOYMENT],
         "modelserving": [MODEL_SERVING, SOLO_SERVING], "pdb": [KVSCHED_PDB, USER_PDB]}

# -- arbitrary JSON -------------------------------------------------------------------------------------------
# Keys the readers look for, so that arbitrary objects reach past the top level.
KEYS = sorted({"metadata", "spec", "status", "name", "namespace", "uid", "labels", "annotations", "generation",
               "ownerReferences", "controller", "kind", "nodeName", "schedulerName", "containers", "initContainers",
               "resources", "requests", "limits", "conditions", "type", "phase", "startTime", "lastTransitionTime",
               "capacity", "allocatable", "unschedulable", "deletionTimestamp", "replicas", "template", "strategy",
               "rollingUpdate", "maxSurge", "maxUnavailable", "affinity", "env", "workloadRef", "modelSize",
               "requestRate", "sloSeconds", "engineOverhead", "fromAnnotations", "slots", "node", "gpu",
               "memoryFraction", "observedGeneration", "creationTimestamp", GPU_RESOURCE, MODEL_LABEL,
               GPU_ANNOTATION, MEMORY_FRACTION_ANNOTATION, SIZE_ANNOTATION, RATE_ANNOTATION, SLO_ANNOTATION,
               ENGINE_OVERHEAD_ANNOTATION, GPU_MEMORY_LABEL, GPU_MEMORY_MIB_LABEL, HOLDER_LABEL,
               HOLDER_NODE_ANNOTATION, HOLDER_GPU_ANNOTATION, GPU_UUID_ANNOTATION})
# Strings that have broken readers before or sit on a grammar's edge.
TRICKY = ["", " ", "0", "1", "-1", "2", "²", "٣", "1_000", "1e308", "1e-308", "inf", "nan", "NaN", "0x10", "16Gi",
          "16", "0.5", "1.5", ".5", "5.", "-0", "1e3", "500ms", "1m", "true", "True", "m", "n1", "ns", "kvsched",
          "Ready", "Running", "Succeeded", "Deployment", "RollingUpdate", "Recreate", "0%", "100%", NOW,
          "2026-13-45T99:99:99Z", "x" * 70]
scalars = (st.none() | st.booleans() | st.integers() | st.integers(min_value=-3, max_value=3)
           | st.floats(allow_nan=True, allow_infinity=True) | st.sampled_from(TRICKY) | st.text(max_size=8))
keys = st.sampled_from(KEYS) | st.text(max_size=6)
json_values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=3)
                           | st.dictionaries(keys, inner, max_size=4), max_leaves=12)
arbitrary_objects = st.dictionaries(keys, json_values, max_size=5)


def paths(value: Any, prefix: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    """Every position inside a JSON value (dict keys and list indices), depth first."""
    children = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, child in children:
        yield prefix + (key,)
        yield from paths(child, prefix + (key,))


def mutated(obj: dict[str, Any], path: tuple[Any, ...], replacement: Any, delete: bool) -> dict[str, Any]:
    """`obj` with the value at `path` replaced by `replacement` (or removed)."""
    result = copy.deepcopy(obj)
    parent: Any = result
    for key in path[:-1]:
        parent = parent[key]
    if delete:
        del parent[path[-1]]
    else:
        parent[path[-1]] = replacement
    return result


@st.composite
def objects(draw: st.DrawFn, kind: str) -> dict[str, Any]:
    """An object of `kind`: a valid one, one with a value anywhere replaced by arbitrary JSON (or removed), or
    arbitrary JSON altogether."""
    how = draw(st.sampled_from(["valid", "mutated", "mutated", "mutated", "arbitrary"]))
    if how == "arbitrary":
        return draw(arbitrary_objects)
    obj = draw(st.sampled_from(VALID[kind]))
    if how == "valid":
        return copy.deepcopy(obj)
    result = obj
    for _ in range(draw(st.integers(min_value=1, max_value=3))):
        where = list(paths(result))
        if not where:
            break
        result = mutated(result, draw(st.sampled_from(where)), draw(json_values), draw(st.booleans()))
    return result


events = st.sampled_from(["ADDED", "MODIFIED", "DELETED"])
KINDS = ("pod", "node", "deployment", "modelserving")
some_objects = st.lists(st.sampled_from(KINDS).flatmap(lambda kind: st.tuples(st.just(kind), objects(kind), events)),
                        min_size=1, max_size=6)
# Every valid object first (a world where every model is planned), then others that replace or delete some: so
# that a bad value reaches the deep parts of a decision (the template patch, migrations, shares).
BASE = [(kind, obj, "ADDED") for kind in KINDS for obj in VALID[kind]]
worlds = st.one_of(some_objects, some_objects.map(lambda more: BASE + more))
SETTINGS = settings(max_examples=int(os.environ.get("KVSCHED_PROPERTY_EXAMPLES", "150")), deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])


# -- the extender's cache -------------------------------------------------------------------------------------
@SETTINGS
@given(world=worlds, holders=st.booleans())
def test_extender_cache_handlers_and_queries_never_raise(world: list[tuple[str, dict[str, Any], str]],
                                                         holders: bool) -> None:
    cache = Cache(gpu_holders=holders, holder_namespace=HOLDER_NS, wall=lambda: 1.8e9)
    handler = {"pod": cache.on_pod, "node": cache.on_node, "modelserving": cache.on_model,
               "deployment": None}
    for kind, obj, event in world:
        on_event = handler[kind]
        if on_event is not None:
            on_event(event, obj)
    ref = PodRef("ns", "m-9", "uid-9", "ns/m")
    cache.filter(ref, ["n1", "n2"])
    cache.score(ref, ["n1", "n2"])
    cache.reserve(ref, "n1")
    cache.counts()


# -- the controller: readers, the loop's observe_*, decide ----------------------------------------------------
class RecordingWriter:
    """Accepts every write; each must be JSON the apiserver could take (no NaN or infinity)."""

    def __init__(self) -> None:
        self.writes: list[tuple[str, Any]] = []

    def _take(self, kind: str, *payload: Any) -> None:
        json.dumps(payload, default=lambda o: o.__dict__ if hasattr(o, "__dict__") else str(o), allow_nan=False)
        self.writes.append((kind, payload))

    def write_status(self, key: Any, status: Any) -> None:
        self._take("status", status)

    def patch_deployment(self, key: Any, patch: Any) -> None:
        self._take("deployment", patch)

    def owned_change(self, change: Any) -> None:
        self._take("owned", change.body)

    def evict(self, pod: Any) -> None:
        self._take("evict")

    def annotate_pod(self, pod: Any, annotations: Any) -> None:
        self._take("pod", annotations)

    def holder_change(self, change: Any) -> None:
        self._take("holder", getattr(change, "body", None))

    def pdb_change(self, change: Any) -> None:
        self._take("pdb", change.action, change.body)

    def event(self, event: Any) -> None:
        self._take("event", event.reason, event.message)


READERS = {"pod": read_pod, "node": read_node, "deployment": read_deployment, "modelserving": read_model_serving,
           "pdb": read_pdb}
pdb_objects = st.lists(objects("pdb").flatmap(lambda obj: st.tuples(st.just("pdb"), st.just(obj), events)),
                       max_size=3)


def reconciler(holders: bool, writer: RecordingWriter, pdbs: bool = False) -> Reconciler:
    config = DecisionConfig(time_budget_s=0.05, gpu_holders=holders, holder_namespace=HOLDER_NS,
                            pod_disruption_budget=pdbs)
    r = Reconciler(config, writer, Metrics(), clock=lambda: 100.0, wall=lambda: NOW,
                   solver=lambda *a, **kw: solve(*a, **{**kw, "options": PackOptions(time_budget_s=0.05)}),
                   write_concurrency=1)
    r.set_synced(True)
    r.set_leader(True)
    return r


@SETTINGS
@given(world=worlds, holders=st.booleans(), pdbs=pdb_objects, pdb_option=st.booleans())
def test_controller_readers_observers_and_decide_never_raise(world: list[tuple[str, dict[str, Any], str]],
                                                            holders: bool, pdbs: list[tuple[str, dict[str, Any], str]],
                                                            pdb_option: bool) -> None:
    writer = RecordingWriter()
    r = reconciler(holders, writer, pdb_option)
    observe = {"pod": r.observe_pod, "node": r.observe_node, "deployment": r.observe_deployment,
               "modelserving": r.observe_model_serving, "pdb": r.observe_pdb}
    for kind, obj, event in world + pdbs:
        observe[kind](READERS[kind](obj), deleted=event == "DELETED")
    report = r.reconcile_once()
    assert report.decision is not None
    assert report.failures == 0


# -- regression cases: each crash the properties found, with what the object now reads as ---------------------
def with_value(obj: dict[str, Any], path: tuple[Any, ...], value: Any) -> dict[str, Any]:
    return mutated(obj, path, value, delete=False)


@pytest.mark.parametrize("path, value", [
    pytest.param(("spec", "containers"), 1, id="containers a number"),
    pytest.param(("spec", "initContainers"), "init", id="initContainers a string"),
    pytest.param(("status", "conditions"), 7, id="conditions a number"),
    pytest.param(("metadata", "ownerReferences"), 3, id="ownerReferences a number"),
])
def test_a_pod_whose_lists_are_not_lists_reads_them_as_empty(path: tuple[str, ...], value: Any) -> None:
    pod = read_pod(with_value(POD, path, value))
    assert (pod.name, pod.node, pod.labels[MODEL_LABEL]) == ("m-0", "n1", "m")
    expected_gpus = {"containers": 1, "initContainers": 0}.get(path[-1], 1)  # the other list still counts
    assert pod.gpu_request == expected_gpus
    assert pod.ready == (path[-1] != "conditions")


def test_a_node_without_a_name_is_left_out_and_the_others_are_planned() -> None:
    writer = RecordingWriter()
    r = reconciler(False, writer)
    nameless = with_value(NODE, ("metadata", "name"), "")
    for obj in (nameless, with_value(NODE, ("metadata", "name"), "n2")):
        r.observe_node(read_node(obj))
    r.observe_deployment(read_deployment(SOLO_DEPLOYMENT))
    r.observe_model_serving(read_model_serving(SOLO_SERVING))
    decision = r.reconcile_once().decision
    assert decision is not None and decision.inventory is not None
    assert {g.node for g in decision.inventory.gpus} == {"n2"}
    [status] = [w.status for w in decision.statuses]
    assert status["placedReplicas"] == 1 and status["slots"][0]["node"] == "n2"


@pytest.mark.parametrize("stored", [
    pytest.param([{"type": [], "status": "True", "lastTransitionTime": NOW}], id="condition type a list"),
    pytest.param([{"type": "Placed", "status": "True", "lastTransitionTime": ["x"]}], id="time a list"),
    pytest.param([{"type": "Placed", "status": "True", "lastTransitionTime": "yesterday"}], id="time unreadable"),
    pytest.param(5, id="conditions a number"),
    pytest.param([{"type": "Placed", "observedGeneration": "x"}, {"type": {"a": 1}}, None], id="mixed types"),
])
def test_stored_conditions_of_any_shape_are_replaced_by_well_formed_ones(stored: Any) -> None:
    writer = RecordingWriter()
    r = reconciler(False, writer)
    r.observe_node(read_node(NODE))
    r.observe_deployment(read_deployment(SOLO_DEPLOYMENT))
    r.observe_model_serving(read_model_serving(with_value(SOLO_SERVING, ("status",), {"conditions": stored})))
    decision = r.reconcile_once().decision
    assert decision is not None
    [status] = [w.status for w in decision.statuses]
    conditions = {c["type"]: c for c in status["conditions"]}
    assert set(conditions) == {"Placed", "Invalid", "Unschedulable", "Migrating"}
    assert all(c["lastTransitionTime"] == NOW for c in conditions.values())
    assert conditions["Placed"]["status"] == "True"


@pytest.mark.parametrize("fraction", [pytest.param(10**400, id="an int too large for a float"), "nan",
                                      float("inf"), -0.5, 1.5, "x"])
def test_a_stored_slot_whose_memory_fraction_is_not_a_share_is_malformed(fraction: Any) -> None:
    status = {"slots": [{"node": "n1", "gpu": 0, "memoryFraction": fraction}, {"node": "n1", "gpu": 1}]}
    slots, malformed = planned_slots(status)
    assert [(s.node, s.gpu) for s in slots] == [("n1", 1)] and malformed == [0]
    cache = Cache()
    cache.on_model("ADDED", with_value(SOLO_SERVING, ("status",), status))  # logged and skipped
    assert cache.counts()["models"] == 1


@pytest.mark.parametrize("path, value", [
    pytest.param(("spec", "template", "metadata"), ["labels"], id="template metadata a list"),
    pytest.param(("spec", "template", "spec", "affinity"), "any", id="affinity a string"),
    pytest.param(("spec", "template", "spec", "containers", 0, "env"), {"name": "x"}, id="env a mapping"),
    pytest.param(("spec", "template", "spec", "containers", 0, "env", 0, "valueFrom"), 3, id="valueFrom a number"),
    pytest.param(("spec", "strategy", "rollingUpdate"), "fast", id="rollingUpdate a string"),
])
def test_a_template_of_any_shape_gets_the_whole_patch(path: tuple[Any, ...], value: Any) -> None:
    deployment = read_deployment(with_value(DEPLOYMENT, path, value))
    config = DecisionConfig()
    patch = template_patch(deployment, "m", [{"matchExpressions": []}], config)
    assert patch is not None
    spec = patch["spec"]
    if path[1] == "strategy":
        assert spec["strategy"] == {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 0, "maxUnavailable": 1}}
    else:
        assert spec["template"]["metadata"]["labels"] == {MODEL_LABEL: "m"}
        assert [c["name"] for c in spec["template"]["spec"]["containers"]] == ["server"]


def test_a_container_whose_name_is_not_a_string_is_left_out_of_the_patch() -> None:
    deployment = read_deployment(with_value(DEPLOYMENT, ("spec", "template", "spec", "containers"),
                                            [{"name": float("inf")}, {"name": "server"}, "junk"]))
    patch = template_patch(deployment, "m", [{"matchExpressions": []}], DecisionConfig())
    assert patch is not None
    assert [c["name"] for c in patch["spec"]["template"]["spec"]["containers"]] == ["server"]
    json.dumps(patch, allow_nan=False)
