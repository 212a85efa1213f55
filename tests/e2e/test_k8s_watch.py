"""kvsched.k8s.watch against the real apiserver: an informer lists, then sees pods added, modified and deleted,
and works the same for nodes, Deployments (apps) and ModelServings (a custom resource)."""
from __future__ import annotations

import threading
import uuid
from collections.abc import Callable
from typing import Any

import pytest
from kubernetes import client

from kvsched.k8s.client import api_client
from kvsched.k8s.watch import DEPLOYMENTS, MODELSERVINGS, NODES, ApiListWatch, Informer, Resource, informer

from .harness.cluster import ControlPlane
from .harness.kube import create_gpu_nodes, delete_nodes, deployment_manifest, gpu_node_manifest, wait_for
from .harness.kvsched import write_model

pytestmark = pytest.mark.e2e


class Recorder:
    def __init__(self) -> None:
        self.events: list[tuple[str, str]] = []
        self.lock = threading.Lock()

    def __call__(self, event_type: str, obj: dict[str, Any]) -> None:
        with self.lock:
            self.events.append((event_type, obj["metadata"]["name"]))

    def seen(self, event_type: str, name: str) -> Callable[[], bool]:
        return lambda: (event_type, name) in self.events


def wait_event(recorder: Recorder, event_type: str, name: str) -> None:
    wait_for(recorder.seen(event_type, name), bool, 30.0, f"{event_type} {name}")


def test_pod_informer_lists_then_sees_add_update_delete(control_plane: ControlPlane, core: client.CoreV1Api,
                                                        namespace: str) -> None:
    assert control_plane.kubeconfig is not None
    body = {"metadata": {"name": "early"}, "spec": {"containers": [{"name": "c", "image": "registry.invalid/x"}]}}
    core.create_namespaced_pod(namespace, body)
    recorder = Recorder()
    api = api_client(str(control_plane.kubeconfig))
    pods = informer(api, Resource("", "v1", "pods", namespace=namespace), recorder).start()
    try:
        assert pods.synced.wait(30)
        assert recorder.events[0] == ("ADDED", "early")
        core.create_namespaced_pod(namespace, {**body, "metadata": {"name": "late"}})
        wait_event(recorder, "ADDED", "late")
        core.patch_namespaced_pod("late", namespace, {"metadata": {"labels": {"touched": "yes"}}})
        wait_event(recorder, "MODIFIED", "late")
        core.delete_namespaced_pod("late", namespace, grace_period_seconds=0)
        wait_event(recorder, "DELETED", "late")
        assert {o["metadata"]["name"] for o in pods.items()} == {"early"}
        item = pods.items()[0]
        assert item["kind"] == "Pod" and "containers" in item["spec"]  # the API's JSON shape, camelCase
    finally:
        pods.stop()
        api.close()
    assert pods.errors == 0


def test_informers_for_nodes_deployments_and_custom_objects(
        control_plane: ControlPlane, core: client.CoreV1Api, apps: client.AppsV1Api, kube: client.ApiClient,
        project_crds: list[str], namespace: str) -> None:
    assert control_plane.kubeconfig is not None
    api = api_client(str(control_plane.kubeconfig))
    recorders = {"nodes": Recorder(), "deployments": Recorder(), "models": Recorder()}
    informers: list[Informer] = [
        informer(api, NODES, recorders["nodes"]).start(),
        informer(api, DEPLOYMENTS, recorders["deployments"]).start(),
        informer(api, MODELSERVINGS, recorders["models"]).start(),
    ]
    node = f"watch-{uuid.uuid4().hex[:6]}"
    try:
        assert all(i.synced.wait(30) for i in informers)
        create_gpu_nodes(core, [gpu_node_manifest(node, gpus=1, gpu_memory_mib=40960)])
        apps.create_namespaced_deployment(namespace, deployment_manifest("watched"))
        write_model(client.CustomObjectsApi(kube), namespace, "watched", "8Gi", [(node, 0, 0.2)])
        wait_event(recorders["nodes"], "ADDED", node)
        wait_event(recorders["deployments"], "ADDED", "watched")
        wait_event(recorders["models"], "ADDED", "watched")
        wait_event(recorders["models"], "MODIFIED", "watched")  # the status write
        model = next(o for o in informers[2].items() if o["metadata"]["name"] == "watched")
        assert model["status"]["slots"] == [{"node": node, "gpu": 0, "memoryFraction": 0.2}]
        # Trimmed as they arrive (kvsched.api.trim): no managedFields, of the template only what kvsched reads.
        deployment = next(o for o in informers[1].items() if o["metadata"]["name"] == "watched")
        assert "managedFields" not in deployment["metadata"] and "managedFields" not in model["metadata"]
        assert all(set(c) <= {"name", "env"} for c in deployment["spec"]["template"]["spec"]["containers"])
        assert "selector" not in deployment["spec"]
    finally:
        delete_nodes(core, [node])
        for i in informers:
            i.stop()
        api.close()


def test_a_dropped_watch_lists_again_and_delivers_only_what_changed(control_plane: ControlPlane,
                                                                    core: client.CoreV1Api, namespace: str) -> None:
    """Cut the watch's connection (as a network drop would): the informer lists again (current once that list is
    applied), watches from there, and neither misses nor repeats an event."""
    assert control_plane.kubeconfig is not None
    body = {"spec": {"containers": [{"name": "c", "image": "registry.invalid/x"}]}}
    recorder = Recorder()
    api = api_client(str(control_plane.kubeconfig))
    pods = informer(api, Resource("", "v1", "pods", namespace=namespace), recorder).start()
    try:
        assert pods.synced.wait(30)
        core.create_namespaced_pod(namespace, {**body, "metadata": {"name": "before"}})
        wait_event(recorder, "ADDED", "before")
        source = pods.source
        assert isinstance(source, ApiListWatch)
        watches = source.watches_started
        source.close()  # shut the socket under the reading thread
        core.create_namespaced_pod(namespace, {**body, "metadata": {"name": "after"}})
        wait_event(recorder, "ADDED", "after")
        assert recorder.events.count(("ADDED", "before")) == 1
        assert recorder.events.count(("ADDED", "after")) == 1
        assert source.watches_started > watches and pods.errors >= 1
        wait_for(lambda: pods.is_current(), bool, 30.0, "the informer current again")
    finally:
        pods.stop()
        api.close()
