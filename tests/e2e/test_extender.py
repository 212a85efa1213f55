"""kvsched's extender end to end: the real kube-scheduler, configured as the Helm chart configures it (profile
`kvsched`, extender not ignorable, names only), calls `kvsched extender` running as a process with the chart's RBAC;
KWOK fakes GPU nodes; the test writes ModelServing statuses itself, acting as the controller. Checks that pods land on exactly the planned GPUs, wait with the extender's reason
while their slot is held, that unmanaged pods pass through, that an extender restart binds nothing wrongly, and
that twenty simultaneous replicas take twenty distinct slots."""
from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator

import pytest
from kubernetes import client

from kvsched.api.names import DEFAULT_SCHEDULER_NAME
from .harness.kube import (
    create_gpu_nodes, delete_nodes, deployment_manifest, gpu_node_manifest, pod_events, wait_for,
    wait_pods_bound,
)
from .harness.kvsched import (
    MEMORY_FRACTION_ANNOTATION, GPU_ANNOTATION, MODEL_LABEL, ExtenderProcess, managed_deployment, write_model,
)
from .harness.processes import Component

pytestmark = pytest.mark.e2e


@pytest.fixture
def custom(kube: client.ApiClient, project_crds: list[str]) -> client.CustomObjectsApi:
    assert "modelservings.kvsched.io" in project_crds
    return client.CustomObjectsApi(kube)


def make_nodes(core: client.CoreV1Api, count: int, gpus: int, memory_mib: int = 81920) -> list[str]:
    prefix = f"ext-{uuid.uuid4().hex[:6]}"
    names = [f"{prefix}-{i}" for i in range(count)]
    create_gpu_nodes(core, [gpu_node_manifest(n, gpus=gpus, gpu_memory_mib=memory_mib) for n in names])
    return names


@pytest.fixture
def node_factory(core: client.CoreV1Api) -> Iterator[Callable[..., list[str]]]:
    created: list[str] = []

    def factory(count: int, gpus: int) -> list[str]:
        names = make_nodes(core, count, gpus)
        created.extend(names)
        return names

    yield factory
    delete_nodes(core, created)


def placements(core: client.CoreV1Api, namespace: str, selector: str) -> list[tuple[str, int, str]]:
    """(node, gpu, fraction) of the bound pods matching `selector`."""
    pods = core.list_namespaced_pod(namespace, label_selector=selector).items
    return sorted((p.spec.node_name, int((p.metadata.annotations or {})[GPU_ANNOTATION]),
                   (p.metadata.annotations or {})[MEMORY_FRACTION_ANNOTATION]) for p in pods if p.spec.node_name)


@pytest.mark.parametrize("node_cache_capable", [pytest.param(True, id="node names"),
                                                pytest.param(False, id="whole Node objects")])
def test_managed_pods_land_on_exactly_the_planned_gpus(
        core: client.CoreV1Api, apps: client.AppsV1Api, custom: client.CustomObjectsApi, namespace: str,
        node_factory: Callable[..., list[str]], extender: ExtenderProcess,
        kvsched_scheduler: Callable[..., Component], node_cache_capable: bool) -> None:
    a, b, c = node_factory(3, gpus=4)
    plan = [(a, 3, 0.25), (b, 1, 0.5), (c, 0, 0.125)]
    write_model(custom, namespace, "llama", "16Gi", plan)
    write_model(custom, namespace, "qwen", "40Gi", [(a, 3, 0.5)])  # shares a/3 with llama: 56 GiB of 80 fit
    kvsched_scheduler(extender.url, node_cache_capable=node_cache_capable)
    apps.create_namespaced_deployment(namespace, managed_deployment("llama", replicas=3))
    apps.create_namespaced_deployment(namespace, managed_deployment("qwen", replicas=1))
    wait_pods_bound(core, namespace, f"{MODEL_LABEL}=llama", count=3)
    wait_pods_bound(core, namespace, f"{MODEL_LABEL}=qwen", count=1)
    assert placements(core, namespace, f"{MODEL_LABEL}=llama") == sorted(
        (n, g, f"{f:.3f}") for n, g, f in plan)
    assert placements(core, namespace, f"{MODEL_LABEL}=qwen") == [(a, 3, "0.500")]


def test_replica_waits_with_the_reason_while_its_gpu_is_held_and_binds_when_it_frees(
        core: client.CoreV1Api, apps: client.AppsV1Api, custom: client.CustomObjectsApi, namespace: str,
        node_factory: Callable[..., list[str]], extender: ExtenderProcess,
        kvsched_scheduler: Callable[..., Component]) -> None:
    (a,) = node_factory(1, gpus=2)
    write_model(custom, namespace, "llama", "16Gi", [(a, 1, 0.2)])
    # An old replica still holds the slot (bound and annotated, e.g. terminating or not yet migrated).
    blocker = client.V1Pod(
        metadata=client.V1ObjectMeta(name="llama-old", labels={MODEL_LABEL: "llama"},
                                     annotations={GPU_ANNOTATION: "1", MEMORY_FRACTION_ANNOTATION: "0.200"}),
        spec=client.V1PodSpec(node_name=a, containers=[client.V1Container(name="c", image="registry.invalid/x")]))
    core.create_namespaced_pod(namespace, blocker)
    kvsched_scheduler(extender.url)
    apps.create_namespaced_deployment(namespace, managed_deployment("llama", replicas=1))
    pods = wait_for(lambda: core.list_namespaced_pod(namespace, label_selector="app=llama").items,
                    lambda items: len(items) == 1, 30.0, "the replica")
    name = pods[0].metadata.name
    reason = f"GPU 1 planned for llama is held by pod {namespace}/llama-old"
    events = wait_for(lambda: pod_events(core, namespace, name),
                      lambda evs: any(e.startswith("FailedScheduling") and reason in e for e in evs), 60.0,
                      f"FailedScheduling quoting {reason!r}")
    assert core.read_namespaced_pod(name, namespace).spec.node_name is None, events
    core.delete_namespaced_pod("llama-old", namespace, grace_period_seconds=0)
    wait_pods_bound(core, namespace, "app=llama", count=1, timeout_s=120.0)
    assert placements(core, namespace, "app=llama") == [(a, 1, "0.200")]


def test_unmanaged_pods_pass_through_the_same_profile(
        core: client.CoreV1Api, apps: client.AppsV1Api, custom: client.CustomObjectsApi, namespace: str,
        node_factory: Callable[..., list[str]], extender: ExtenderProcess,
        kvsched_scheduler: Callable[..., Component]) -> None:
    node_factory(2, gpus=1)
    kvsched_scheduler(extender.url)
    apps.create_namespaced_deployment(namespace,
                                      deployment_manifest("web", replicas=2, scheduler_name=DEFAULT_SCHEDULER_NAME))
    pods = wait_pods_bound(core, namespace, "app=web", count=2)
    for pod in pods:
        assert pod.spec.scheduler_name == DEFAULT_SCHEDULER_NAME
        assert GPU_ANNOTATION not in (pod.metadata.annotations or {})


def test_extender_down_keeps_pods_pending_and_they_bind_to_planned_gpus_when_it_returns(
        core: client.CoreV1Api, apps: client.AppsV1Api, custom: client.CustomObjectsApi, namespace: str,
        node_factory: Callable[..., list[str]], extender: ExtenderProcess,
        kvsched_scheduler: Callable[..., Component]) -> None:
    """The chart's default `ignorable: false`: while the extender is down, kube-scheduler fails the pods'
    scheduling cycles instead of placing them by node affinity alone (which would leave them without a GPU)."""
    a, b = node_factory(2, gpus=2)
    plan = [(a, 0, 0.3), (a, 1, 0.3), (b, 1, 0.3)]
    write_model(custom, namespace, "llama", "16Gi", plan)
    kvsched_scheduler(extender.url, values={"extender": {"httpTimeout": "2s"}})
    apps.create_namespaced_deployment(namespace, managed_deployment("llama", replicas=1))
    wait_pods_bound(core, namespace, "app=llama", count=1)

    extender.kill()
    apps.patch_namespaced_deployment_scale("llama", namespace, {"spec": {"replicas": 3}})
    pending = wait_for(lambda: [p for p in core.list_namespaced_pod(namespace, label_selector="app=llama").items
                                if not p.spec.node_name],
                       lambda items: len(items) == 2, 30.0, "two new replicas")
    for pod in pending:
        wait_for(lambda p=pod: pod_events(core, namespace, p.metadata.name),
                 lambda evs: any(e.startswith("FailedScheduling") and f"127.0.0.1:{extender.port}" in e
                                 for e in evs), 60.0,
                 f"FailedScheduling of {pod.metadata.name} naming the extender's address")
    assert len(placements(core, namespace, "app=llama")) == 1  # nothing bound while it was down

    extender.start()
    wait_pods_bound(core, namespace, "app=llama", count=3, timeout_s=180.0)
    assert placements(core, namespace, "app=llama") == sorted((n, g, f"{f:.3f}") for n, g, f in plan)


def test_twenty_replicas_at_once_take_twenty_distinct_planned_slots(
        core: client.CoreV1Api, apps: client.AppsV1Api, custom: client.CustomObjectsApi, namespace: str,
        node_factory: Callable[..., list[str]], extender: ExtenderProcess,
        kvsched_scheduler: Callable[..., Component]) -> None:
    nodes = node_factory(5, gpus=4)
    plan = [(n, g, 0.2) for n in nodes for g in range(4)]
    write_model(custom, namespace, "llama", "16Gi", plan)
    kvsched_scheduler(extender.url)
    apps.create_namespaced_deployment(namespace, managed_deployment("llama", replicas=20))
    wait_pods_bound(core, namespace, "app=llama", count=20, timeout_s=120.0)
    got = placements(core, namespace, "app=llama")
    assert len({(n, g) for n, g, _ in got}) == 20
    assert got == sorted((n, g, f"{f:.3f}") for n, g, f in plan)


def test_rollout_on_a_full_plan_completes_one_replica_at_a_time(
        core: client.CoreV1Api, apps: client.AppsV1Api, custom: client.CustomObjectsApi, namespace: str,
        node_factory: Callable[..., list[str]], extender: ExtenderProcess,
        kvsched_scheduler: Callable[..., Component]) -> None:
    """Every planned slot is taken, so a surge pod would find none; with maxSurge 0 / maxUnavailable 1 (what the
    controller sets) each new pod waits until an old one is deleted, then takes its slot."""
    a, b = node_factory(2, gpus=2)
    plan = [(a, 0, 0.3), (a, 1, 0.3), (b, 0, 0.3)]
    write_model(custom, namespace, "llama", "16Gi", plan)
    kvsched_scheduler(extender.url)
    apps.create_namespaced_deployment(namespace, managed_deployment("llama", replicas=3))
    old = {p.metadata.name for p in wait_pods_bound(core, namespace, "app=llama", count=3)}

    apps.patch_namespaced_deployment("llama", namespace, {"spec": {"template": {"metadata": {"annotations": {
        "kvsched.io/e2e-rollout": "2"}}}}})

    def rolled_out(deployment: client.V1Deployment) -> bool:
        status = deployment.status
        return bool(status.observed_generation == deployment.metadata.generation
                    and status.updated_replicas == 3 and status.replicas == 3
                    and status.available_replicas == 3)

    wait_for(lambda: apps.read_namespaced_deployment("llama", namespace), rolled_out, 180.0, "the rollout")
    pods = wait_for(lambda: [p for p in core.list_namespaced_pod(namespace, label_selector="app=llama").items
                             if not p.metadata.deletion_timestamp],
                    lambda items: len(items) == 3, 60.0, "three replicas after the rollout")
    assert not {p.metadata.name for p in pods} & old
    assert placements(core, namespace, "app=llama") == sorted((n, g, f"{f:.3f}") for n, g, f in plan)
