"""One tenant's bad input does not stop planning for the others (issue 16), on the real control plane.

Models run; then, in the namespace the controller watches, every kind of bad input the apiserver lets through is
created at once: annotations whose load is infinite (`1e308` requests/s at a 0.5 s SLO), a rate written `1_000`,
a Deployment name of 64 characters (the model label cannot hold it), a pod bound by hand to a pool node with
`kvsched.io/gpu: "²"` (a Unicode digit), and a ModelServing whose `modelSize` is a bare integer (bytes: the
controller and the extender read it alike, so its replica is planned and binds; before, one read bytes and the
other GiB, and the pod never bound). Then a good model is created: it is Placed within 10 s, and nothing that ran
before moves (same slots, no eviction). (The controller under test watches one namespace, as
the e2e pools do; the poison and the good model share it, which is the harder case.)
"""
from __future__ import annotations

import time
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from kvsched.api.names import (
    DEFAULT_SCHEDULER_NAME,
    GPU_ANNOTATION,
    GROUP,
    MODEL_LABEL,
    PLURAL,
    RATE_ANNOTATION,
    SIZE_ANNOTATION,
    SLO_ANNOTATION,
    VERSION,
)

from .harness.example import migrations
from .harness.kube import deployment_manifest, wait_for
from .test_controller import (  # noqa: F401 (`pool` is the fixture)
    Pool,
    annotated,
    condition,
    create_models,
    pool,
    serving,
    slot_set,
    wait_settled,
)

pytestmark = pytest.mark.e2e

RUNNING = {"llama": ("16Gi", 4.0, "1", 2), "qwen": ("30Gi", 2.0, "1", 1)}
LONG_NAME = "m" * 64


def poison(pool: Pool) -> list[str]:
    """Create every bad object; returns the model names whose ModelServing should say Invalid (those created)."""
    apps, core = client.AppsV1Api(pool.kube), client.CoreV1Api(pool.kube)
    apps.create_namespaced_deployment(pool.namespace, annotated("infinite", "8Gi", 1e308, "0.5", 1))
    underscored = annotated("underscored", "8Gi", 1.0, "1", 1)
    underscored["metadata"]["annotations"][RATE_ANNOTATION] = "1_000"
    apps.create_namespaced_deployment(pool.namespace, underscored)
    long = deployment_manifest("long", replicas=1, scheduler_name=DEFAULT_SCHEDULER_NAME,
                               annotations={SIZE_ANNOTATION: "8Gi", RATE_ANNOTATION: "1", SLO_ANNOTATION: "1"})
    long["metadata"]["name"] = LONG_NAME  # the selector's label value stays short: only the name is too long
    apps.create_namespaced_deployment(pool.namespace, long)
    core.create_namespaced_pod(pool.namespace, {
        "metadata": {"name": "unicode-gpu", "labels": {MODEL_LABEL: "llama"},
                     "annotations": {GPU_ANNOTATION: "²"}},
        "spec": {"schedulerName": DEFAULT_SCHEDULER_NAME, "nodeName": pool.nodes[0],
                 "containers": [{"name": "c", "image": "registry.invalid/x"}]}})
    return ["infinite", "underscored"]


def integer_sized_model(pool: Pool) -> None:
    """A plain Deployment and a hand-written ModelServing whose modelSize is a bare integer (bytes)."""
    client.AppsV1Api(pool.kube).create_namespaced_deployment(pool.namespace, deployment_manifest(
        "bytes", replicas=1, scheduler_name=DEFAULT_SCHEDULER_NAME))
    client.CustomObjectsApi(pool.kube).create_namespaced_custom_object(GROUP, VERSION, pool.namespace, PLURAL, {
        "apiVersion": f"{GROUP}/{VERSION}", "kind": "ModelServing", "metadata": {"name": "bytes"},
        "spec": {"workloadRef": {"name": "bytes"}, "modelSize": 17179869184, "requestRate": 1, "sloSeconds": 1}})


def not_placed(ms: dict[str, Any]) -> bool:
    return condition(ms, "Placed").get("status") == "False"


def test_bad_input_in_the_namespace_stops_nobody_else(pool: Pool) -> None:
    pool.add_nodes({"a": (4, "80Gi"), "b": (4, "80Gi")})
    proc = pool.start()
    create_models(pool, RUNNING)
    integer_sized_model(pool)
    # The integer-sized model is planned and its pod binds: both parts read 17179869184 as 16 GiB.
    before = wait_settled(pool, [*RUNNING, "bytes"])
    assert before["bytes"]["status"]["placedReplicas"] == 1
    evictions = migrations(proc.metrics())
    invalid = poison(pool)
    for name in invalid:
        wait_for(lambda: serving(pool, name), not_placed, 30, f"ModelServing {name} not Placed")
    # The long-named Deployment gets no template patch and an Invalid ModelServing (or none: the name itself is
    # refused there); either way it is never Placed.
    try:
        long = serving(pool, LONG_NAME)
        assert condition(long, "Placed").get("status") != "True"
    except ApiException as e:
        assert e.status in (404, 422)
    # A good model now: Placed within 10 s of its creation.
    started = time.monotonic()
    client.AppsV1Api(pool.kube).create_namespaced_deployment(pool.namespace, annotated("fresh", "8Gi", 1.0, "1", 1))
    fresh = wait_for(lambda: _serving_or_none(pool, "fresh"),
                     lambda ms: ms is not None and condition(ms, "Placed").get("status") == "True", 10,
                     "ModelServing fresh Placed")
    assert fresh is not None and time.monotonic() - started <= 10.0
    # Nothing that ran moved, and nobody was evicted.
    for name, ms in before.items():
        assert slot_set(serving(pool, name)) == slot_set(ms), name
    assert migrations(proc.metrics()) == evictions
    assert proc.component.running


def _serving_or_none(pool: Pool, name: str) -> dict[str, Any] | None:
    try:
        return serving(pool, name)
    except ApiException as e:
        if e.status == 404:
            return None
        raise
