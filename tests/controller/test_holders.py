"""GPU holder pods (kvsched.controller.holders) and what they change in the decision: one holder per planned or
still-held GPU, none elsewhere; holders do not count as unmanaged GPU pods in the inventory; a pending pod is
nudged (the extender would pass it) only once its slot's holder reported a UUID."""
from __future__ import annotations

import dataclasses

import pytest

from kvsched.api.names import (
    GPU_RESOURCE,
    GPU_UUID_ANNOTATION,
    HOLDER_GPU_ANNOTATION,
    HOLDER_LABEL,
    HOLDER_NODE_ANNOTATION,
    POD_NAME_ENV,
    POD_NAMESPACE_ENV,
)
from kvsched.api.objects import ObjectKey, PodObj, World
from kvsched.controller import DecisionConfig
from kvsched.controller.holders import holder_changes, holder_name, holder_pod, holder_uuids, reported_uuid
from kvsched.controller.inventory import build_inventory
from kvsched.packer import GpuId

from .fake import bind_planned, deployment, node, pod, run, settle

ON = DecisionConfig(gpu_holders=True, holder_namespace="kvsched-system", holder_image="kvsched:test")
NS = "kvsched-system"


def holder(node_name: str, gpu: int, uuid: str | None = None, *, bound: bool = True, deleting: bool = False,
           terminal: bool = False, name: str | None = None, namespace: str = NS, created: str = "1") -> PodObj:
    notes = {HOLDER_NODE_ANNOTATION: node_name, HOLDER_GPU_ANNOTATION: str(gpu)}
    if uuid:
        notes[GPU_UUID_ANNOTATION] = uuid
    name = name or holder_name(GpuId(node_name, gpu))
    return PodObj(namespace=namespace, name=name, uid=f"uid-{name}", node=node_name if bound else None,
                  labels={HOLDER_LABEL: "true"}, annotations=notes, gpu_request=1, deleting=deleting,
                  terminal=terminal, created=created)


def summary(changes: tuple) -> list[tuple[str, str]]:  # type: ignore[type-arg]
    return [(c.action, c.key.name) for c in changes]


A0, A1, B0 = GpuId("a", 0), GpuId("a", 1), GpuId("b", 0)


@pytest.mark.parametrize("wanted, pods, expected", [
    pytest.param([], [], [], id="empty: nothing"),
    pytest.param([A0, B0], [], [("create", "kvsched-gpu-holder-a-0"), ("create", "kvsched-gpu-holder-b-0")],
                 id="one create per wanted GPU"),
    pytest.param([A0], [holder("a", 0, "GPU-x")], [], id="held already: nothing"),
    pytest.param([A0], [holder("a", 0, bound=False)], [], id="pending holder counts: no second"),
    pytest.param([A0], [holder("a", 0, deleting=True)], [], id="terminating holder: wait until it is gone"),
    pytest.param([A0], [holder("a", 0, terminal=True)], [("create", "kvsched-gpu-holder-a-0")],
                 id="failed holder does not hold: create (the writer clears the name)"),
    pytest.param([], [holder("a", 1, "GPU-y")], [("delete", "kvsched-gpu-holder-a-1")], id="unwanted: delete"),
    pytest.param([A1], [holder("a", 1, name="old", created="1"), holder("a", 1, name="new", created="2")],
                 [("delete", "new")], id="two holders of one GPU: the newer goes"),
    pytest.param([], [holder("a", 0, namespace="elsewhere")], [], id="a look-alike in another namespace is not ours"),
    pytest.param([], [dataclasses.replace(holder("a", 0), annotations={})], [("delete", "kvsched-gpu-holder-a-0")],
                 id="a holder without node and GPU annotations is deleted"),
])
def test_holder_changes(wanted: list[GpuId], pods: list[PodObj], expected: list[tuple[str, str]]) -> None:
    assert summary(holder_changes(wanted, pods, ON)) == expected


def test_holders_off_deletes_what_is_left_and_creates_nothing() -> None:
    off = dataclasses.replace(ON, gpu_holders=False)
    assert summary(holder_changes([A0], [holder("a", 1)], off)) == [("delete", "kvsched-gpu-holder-a-1")]


def test_holder_pod_shape() -> None:
    body = holder_pod(GpuId("gpu-node-7", 3), ON)
    meta, spec = body["metadata"], body["spec"]
    assert meta["namespace"] == NS and meta["labels"] == {HOLDER_LABEL: "true"}
    assert meta["annotations"] == {HOLDER_NODE_ANNOTATION: "gpu-node-7", HOLDER_GPU_ANNOTATION: "3"}
    (term,) = spec["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
    assert term == {"matchFields": [{"key": "metadata.name", "operator": "In", "values": ["gpu-node-7"]}]}
    (container,) = spec["containers"]
    assert container["image"] == "kvsched:test" and container["args"] == ["gpu-holder"]
    assert container["resources"]["requests"][GPU_RESOURCE] == container["resources"]["limits"][GPU_RESOURCE] == "1"
    assert {e["name"]: e["valueFrom"]["fieldRef"]["fieldPath"] for e in container["env"]} == {
        POD_NAME_ENV: "metadata.name", POD_NAMESPACE_ENV: "metadata.namespace"}
    assert spec["priorityClassName"] == ON.holder_priority_class and spec["schedulerName"] == ON.scheduler_name
    assert spec["serviceAccountName"] == ON.holder_service_account
    assert len(holder_name(GpuId("n" * 300, 0))) <= 253


@pytest.mark.parametrize("p, expected", [
    pytest.param(holder("a", 0, "GPU-x"), "GPU-x", id="bound and reported"),
    pytest.param(holder("a", 0), None, id="not reported yet"),
    pytest.param(holder("a", 0, "GPU-x", bound=False), None, id="not bound"),
    pytest.param(holder("a", 0, "GPU-x", deleting=True), None, id="terminating"),
    pytest.param(holder("a", 0, "GPU-x", terminal=True), None, id="failed"),
    pytest.param(dataclasses.replace(holder("a", 0, "GPU-x"), node="b"), None, id="bound to another node"),
])
def test_reported_uuid(p: PodObj, expected: str | None) -> None:
    assert reported_uuid(p) == expected


def test_inventory_counts_unmanaged_gpu_pods_but_not_holders() -> None:
    other = dataclasses.replace(pod("train", "", "a", None), gpu_request=2)
    holders = [holder("a", 0, "GPU-x"), holder("a", 1, "GPU-y")]
    inv = build_inventory([node("a", gpus=4)], [other, *holders], ON)
    assert [g.index for g in inv.gpus] == [0, 1]  # 4 minus the 2 the training pod requests
    assert holder_uuids(holders, NS) == {A0: "GPU-x", A1: "GPU-y"}


def test_decide_holds_planned_gpus_and_nudges_only_pods_whose_gpu_is_held() -> None:
    world = World(nodes=(node("n1", gpus=2),), deployments=(deployment("m", replicas=1),))
    world, _ = settle(world, config=ON)
    decision = run(world, config=ON)
    (slot,) = world.model_servings[0].status["slots"]
    gpu = GpuId(slot["node"], slot["gpu"])
    assert summary(decision.holders) == [("create", holder_name(gpu))]
    pending = dataclasses.replace(pod("m-0", "m", None, None), created="9")
    world = dataclasses.replace(world, pods=(pending,))
    assert run(world, config=ON).nudges == ()  # its GPU is not held yet: the extender would refuse it
    world = dataclasses.replace(world, pods=(pending, holder(gpu.node, gpu.index, "GPU-x")))
    decision = run(world, config=ON)
    assert [n.pod for n in decision.nudges] == [ObjectKey("ns", "m-0")] and decision.holders == ()


def test_a_holder_outlives_the_last_replica_on_its_gpu() -> None:
    world = World(nodes=(node("n1", gpus=2),), deployments=(deployment("m", replicas=1),))
    world, _ = settle(world, config=ON)
    world = bind_planned(world)
    (running,) = world.pods
    assert running.node is not None
    held = holder(running.node, int(running.annotations["kvsched.io/gpu"]), "GPU-x")
    gone = dataclasses.replace(world, deployments=(), model_servings=(),
                               pods=(dataclasses.replace(running, deleting=True), held))
    assert run(gone, config=ON).holders == ()  # the replica is still terminating there
    after = dataclasses.replace(gone, pods=(held,))
    assert summary(run(after, config=ON).holders) == [("delete", held.name)]
