"""GPU holder pods end to end (issue 15, part 3): `kvsched serve` with holders on (the default), the device plugin
stand-in (harness/device_plugin.py) allocating `nvidia.com/gpu` on KWOK nodes, a kube-scheduler with the `kvsched`
profile, and an unmanaged Deployment requesting `nvidia.com/gpu: 2` on the same nodes.

- kvsched's models and the unmanaged pods never share a GPU: every managed pod's `kvsched.io/visible-devices` is the
  UUID its GPU's holder reported, and the devices the stand-in gave holders and unmanaged pods are disjoint;
- a ResourceQuota on `requests.nvidia.com/gpu` in kvsched's (here: the test's) namespace counts the held GPUs;
- deleting a model deletes its holders once its pods are gone;
- the holder pod the controller creates is admitted in a namespace enforcing the `restricted` Pod Security
  Standard (the apiserver's own admission, through a server-side dry run).
"""
from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import copy
import uuid

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from kvsched.api.names import (
    GPU_ANNOTATION,
    GPU_UUID_ANNOTATION,
    HOLDER_GPU_ANNOTATION,
    HOLDER_LABEL,
    HOLDER_NODE_ANNOTATION,
    MODEL_LABEL,
    VISIBLE_DEVICES_ANNOTATION,
)

from kvsched.controller import DecisionConfig
from kvsched.controller.holders import holder_pod
from kvsched.packer import GpuId

from .harness.cluster import ControlPlane
from .harness.device_plugin import ALLOCATION_ANNOTATION, fake_uuid, parse_devices
from .harness.kube import GPU_RESOURCE, deployment_manifest, wait_for
from .harness.processes import Component
from .test_controller import Pool, annotated, new_pool, settled

pytestmark = pytest.mark.e2e

QUOTA = "gpus"


@pytest.fixture
def pool(control_plane: ControlPlane, kube: client.ApiClient, namespace: str, project_crds: list[str],
         kvsched_scheduler: Callable[..., Component]) -> Iterator[Pool]:
    p = new_pool(control_plane, kube, namespace, kvsched_scheduler)
    try:
        yield p
    finally:
        p.close()


def pods(pool: Pool) -> list[client.V1Pod]:
    return [p for p in client.CoreV1Api(pool.kube).list_namespaced_pod(pool.namespace).items
            if not p.metadata.deletion_timestamp]


def holders(pool: Pool) -> list[client.V1Pod]:
    return [p for p in client.CoreV1Api(pool.kube).list_namespaced_pod(
        pool.namespace, label_selector=f"{HOLDER_LABEL}=true").items]


def allocated(p: client.V1Pod) -> tuple[int, ...]:
    return parse_devices((p.metadata.annotations or {}).get(ALLOCATION_ANNOTATION))


def check_no_shared_gpu(pool: Pool) -> dict[str, Any]:
    """The invariants of the module docstring over the namespace's pods; returns what it saw (for messages)."""
    live = pods(pool)
    held = {}  # (node, kvsched's index) -> (device, uuid)
    for h in (p for p in live if (p.metadata.labels or {}).get(HOLDER_LABEL) == "true"):
        notes = h.metadata.annotations or {}
        (device,) = allocated(h)
        assert notes[GPU_UUID_ANNOTATION] == fake_uuid(h.spec.node_name, device)
        held[(notes[HOLDER_NODE_ANNOTATION], int(notes[HOLDER_GPU_ANNOTATION]))] = (device, notes[GPU_UUID_ANNOTATION])
    others = {(p.spec.node_name, d) for p in live if (p.metadata.labels or {}).get("app") == "trainer"
              for d in allocated(p)}
    holder_devices = {(node, device) for (node, _), (device, _) in held.items()}
    assert not holder_devices & others, f"holders and unmanaged pods share {holder_devices & others}"
    for p in (p for p in live if MODEL_LABEL in (p.metadata.labels or {}) and p.spec.node_name):
        notes = p.metadata.annotations or {}
        slot = (p.spec.node_name, int(notes[GPU_ANNOTATION]))
        assert slot in held, f"pod {p.metadata.name} runs on {slot}, which no holder holds: {sorted(held)}"
        assert notes[VISIBLE_DEVICES_ANNOTATION] == held[slot][1], p.metadata.name
    return {"held": held, "others": others}


def test_models_and_an_unmanaged_gpu_deployment_never_share_a_gpu(pool: Pool) -> None:
    core, apps = client.CoreV1Api(pool.kube), client.AppsV1Api(pool.kube)
    core.create_namespaced_resource_quota(pool.namespace, {
        "metadata": {"name": QUOTA}, "spec": {"hard": {f"requests.{GPU_RESOURCE}": "16"}}})
    pool.add_nodes({"a": (4, "80Gi"), "b": (4, "80Gi")})
    # Another team's job takes 2 GPUs of node a before kvsched starts, through the default scheduler.
    trainer = deployment_manifest("trainer", replicas=1, resources={"requests": {GPU_RESOURCE: "2"},
                                                                    "limits": {GPU_RESOURCE: "2"}})
    trainer["spec"]["template"]["spec"]["nodeSelector"] = {"kubernetes.io/hostname": pool.nodes[0]}
    apps.create_namespaced_deployment(pool.namespace, trainer)
    wait_for(lambda: [p for p in pods(pool) if len(allocated(p)) == 2], bool, 60.0, "the trainer's 2 GPUs")
    pool.start()
    # 60Gi each: no two replicas fit one 80Gi GPU, so 6 GPUs; 6 are left to kvsched, so node a is used too.
    for name, size, replicas in (("llama", "60Gi", 3), ("qwen", "60Gi", 3)):
        apps.create_namespaced_deployment(pool.namespace, annotated(name, size, 4.0, "1", replicas))
    wait_for(lambda: settled(pool, ["llama", "qwen"]), bool, 180.0, "both models placed and Ready")
    seen = check_no_shared_gpu(pool)
    assert len(seen["held"]) == 6 and {n for n, _ in seen["held"]} == set(pool.nodes), seen
    # The quota sees the 6 held GPUs and the trainer's 2.
    used = wait_for(lambda: core.read_namespaced_resource_quota(QUOTA, pool.namespace).status.used or {},
                    lambda u: u.get(f"requests.{GPU_RESOURCE}") == "8", 60.0, "the quota counting 8 GPUs")
    assert used[f"requests.{GPU_RESOURCE}"] == "8"
    # The trainer scales up: its second pod finds no free GPU on node a (the holders and its first pod hold all
    # 4), so it stays Pending and takes nothing kvsched holds.
    apps.patch_namespaced_deployment_scale("trainer", pool.namespace, {"spec": {"replicas": 2}})
    wait_for(lambda: [p for p in pods(pool) if (p.metadata.labels or {}).get("app") == "trainer"],
             lambda ps: len(ps) == 2, 60.0, "a second trainer pod")
    check_no_shared_gpu(pool)
    # qwen goes: its holders go once its pods are gone; llama's stay.
    apps.delete_namespaced_deployment("qwen", pool.namespace)
    wait_for(lambda: holders(pool), lambda hs: len(hs) == 3, 120.0, "qwen's holders deleted")
    check_no_shared_gpu(pool)


PSA_LABELS = ("pod-security.kubernetes.io/enforce", "pod-security.kubernetes.io/warn",
              "pod-security.kubernetes.io/audit")


def test_a_holder_pod_is_admitted_under_the_restricted_pod_security_standard(kube: client.ApiClient) -> None:
    core = client.CoreV1Api(kube)
    name = f"holders-{uuid.uuid4().hex[:6]}"
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(
        name=name, labels=dict.fromkeys(PSA_LABELS, "restricted"))))
    try:
        body = holder_pod(GpuId("gpu-node", 0), DecisionConfig(holder_namespace=name, holder_priority_class="",
                                                               holder_service_account=""))
        created = core.create_namespaced_pod(name, body, dry_run="All")
        assert created.spec.security_context.run_as_non_root is True
        # The same pod without its security settings is refused by the same admission: the check can fail.
        bare = copy.deepcopy(body)
        del bare["spec"]["securityContext"], bare["spec"]["containers"][0]["securityContext"]
        with pytest.raises(ApiException) as refused:
            core.create_namespaced_pod(name, bare, dry_run="All")
        assert refused.value.status == 403 and "restricted" in refused.value.body
    finally:
        core.delete_namespace(name)
