"""The chart's ValidatingAdmissionPolicy (helm/kvsched/templates/admission-policy.yaml) on a real apiserver.

The policy and its binding are rendered with `helm template` (release `kvsched-<suffix>` in a fresh namespace that
is also its `watchNamespace`, so the binding matches that namespace only and the rest of the session is left
alone) and created with the admin client. Three ServiceAccounts of that namespace act: kvsched's (the chart's
name, bound to the chart's RBAC as the harness binds it), the GPU holders' and a namespace editor (the built-in
`edit` ClusterRole). The editor may patch pods, so every refusal below is the policy's, not RBAC's.
"""
from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from hack.chart import Helm, documents
from kvsched.api.names import (
    DEFAULT_HOLDER_SERVICE_ACCOUNT,
    DEFAULT_SCHEDULER_NAME,
    GPU_ANNOTATION,
    GPU_RESOURCE,
    GPU_UUID_ANNOTATION,
    HOLDER_LABEL,
    MEMORY_FRACTION_ANNOTATION,
    MODEL_LABEL,
    VISIBLE_DEVICES_ANNOTATION,
    VISIBLE_DEVICES_ENV,
)

from .harness.cluster import ControlPlane
from .harness.controller import service_account_kubeconfig, token_kubeconfig
from .harness.device_plugin import fake_uuid
from .harness.kube import api_client, create_gpu_nodes, delete_nodes, deployment_manifest, gpu_node_manifest, wait_for
from .harness.tools import unavailable

pytestmark = pytest.mark.e2e

FIELD_REF_ENV = {"name": VISIBLE_DEVICES_ENV,
                 "valueFrom": {"fieldRef": {"fieldPath": f"metadata.annotations['{VISIBLE_DEVICES_ANNOTATION}']"}}}
IMAGE = "registry.invalid/kvsched/fake:latest"


@dataclass(frozen=True)
class Guarded:
    """A namespace under the chart's policy and the clients of the ServiceAccounts that act in it."""

    namespace: str
    policy: str
    admin: client.CoreV1Api
    kvsched: client.CoreV1Api
    holder: client.CoreV1Api
    editor: client.CoreV1Api
    editor_apps: client.AppsV1Api


def pod(name: str, *, annotations: dict[str, str] | None = None, labels: dict[str, str] | None = None,
        scheduler: str = DEFAULT_SCHEDULER_NAME, env: list[dict[str, Any]] | None = None,
        env_from: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """An unbound pod that never runs (no node carries its selector)."""
    container: dict[str, Any] = {"name": "server", "image": IMAGE, "env": env if env is not None else [FIELD_REF_ENV]}
    if env_from:
        container["envFrom"] = env_from
    return {"metadata": {"name": name, "annotations": annotations or {}, "labels": labels or {}},
            "spec": {"schedulerName": scheduler, "nodeSelector": {"kvsched.io/e2e": "nowhere"},
                     "containers": [container]}}


def refusal(call: Any) -> ApiException:
    """The ApiException `call()` raises; fails when it succeeds."""
    with pytest.raises(ApiException) as raised:
        call()
    return raised.value


def _helm(plane: ControlPlane) -> Helm:
    helm = plane.tools.helm
    if not os.access(helm, os.X_OK):
        reason = f"helm is not built: {helm} is missing (run `make e2e-tools`)"
        unavailable(reason)
    return Helm(helm, plane.tools.k8s_version)


@pytest.fixture(scope="module")
def guarded(control_plane: ControlPlane, kube: client.ApiClient) -> Iterator[Guarded]:
    helm = _helm(control_plane)
    admin = client.CoreV1Api(kube)
    rbac = client.RbacAuthorizationV1Api(kube)
    registration = client.AdmissionregistrationV1Api(kube)
    suffix = uuid.uuid4().hex[:6]
    namespace, release = f"e2e-vap-{suffix}", f"kvsched-{suffix}"
    admin.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=namespace)))
    wait_for(lambda: admin.read_namespaced_service_account("default", namespace), lambda sa: True, 60.0,
             f"ServiceAccount {namespace}/default")
    docs = documents(helm.template({"watchNamespace": namespace}, release=release, namespace=namespace))
    [policy] = [d for d in docs if d["kind"] == "ValidatingAdmissionPolicy"]
    [binding] = [d for d in docs if d["kind"] == "ValidatingAdmissionPolicyBinding"]
    [deployment] = [d for d in docs if d["kind"] == "Deployment"]
    kvsched_sa = deployment["spec"]["template"]["spec"]["serviceAccountName"]
    clients = []
    try:
        kvsched_config = service_account_kubeconfig(kube, control_plane, namespace, kvsched_sa)
        for name in (DEFAULT_HOLDER_SERVICE_ACCOUNT, "editor"):
            if name == "editor":
                admin.create_namespaced_service_account(namespace, {"metadata": {"name": name}})
            rbac.create_namespaced_role_binding(namespace, {
                "metadata": {"name": f"{name}-edit"},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "edit"},
                "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": namespace}]})
        clients = [api_client(kvsched_config),
                   api_client(token_kubeconfig(kube, control_plane, namespace, DEFAULT_HOLDER_SERVICE_ACCOUNT)),
                   api_client(token_kubeconfig(kube, control_plane, namespace, "editor"))]
        registration.create_validating_admission_policy(policy)
        registration.create_validating_admission_policy_binding(binding)
        editor = client.CoreV1Api(clients[2])
        probe = pod("probe", annotations={GPU_ANNOTATION: "0"})

        def enforced() -> bool:
            try:
                editor.create_namespaced_pod(namespace, probe, dry_run="All")
            except ApiException as e:
                return e.status == 403
            return False

        wait_for(enforced, bool, 30.0, f"ValidatingAdmissionPolicy {policy['metadata']['name']} enforced")
        yield Guarded(namespace, policy["metadata"]["name"], admin, client.CoreV1Api(clients[0]),
                      client.CoreV1Api(clients[1]), editor, client.AppsV1Api(clients[2]))
    finally:
        for delete in (registration.delete_validating_admission_policy_binding,
                       registration.delete_validating_admission_policy):
            try:
                delete(policy["metadata"]["name"])
            except ApiException as e:
                if e.status != 404:
                    raise
        for api in clients:
            api.close()
        admin.delete_namespace(namespace)


def test_the_apiserver_type_checks_every_expression_without_a_warning(guarded: Guarded,
                                                                      kube: client.ApiClient) -> None:
    registration = client.AdmissionregistrationV1Api(kube)
    status = wait_for(lambda: registration.read_validating_admission_policy(guarded.policy).status,
                      lambda st: st is not None and st.type_checking is not None, 30.0, "the policy type-checked")
    assert not status.type_checking.expression_warnings, status.type_checking.expression_warnings


def managed_pod(g: Guarded, name: str) -> client.V1Pod:
    """A pod of a model, created by the admin as its ReplicaSet would, then annotated by kvsched as its bind does."""
    g.admin.create_namespaced_pod(g.namespace, pod(name, labels={MODEL_LABEL: "alpha"}))
    g.kvsched.patch_namespaced_pod(name, g.namespace, {"metadata": {"annotations": {
        GPU_ANNOTATION: "0", MEMORY_FRACTION_ANNOTATION: "0.450", VISIBLE_DEVICES_ANNOTATION: "GPU-0"}}})
    return g.admin.read_namespaced_pod(name, g.namespace)


def test_kvsched_annotates_a_pod_as_its_bind_does(guarded: Guarded) -> None:
    got = managed_pod(guarded, "bound-by-kvsched")
    assert got.metadata.annotations[GPU_ANNOTATION] == "0"
    guarded.kvsched.patch_namespaced_pod("bound-by-kvsched", guarded.namespace, {"metadata": {"annotations": {
        GPU_ANNOTATION: None, MEMORY_FRACTION_ANNOTATION: None, VISIBLE_DEVICES_ANNOTATION: None}}})
    after = guarded.admin.read_namespaced_pod("bound-by-kvsched", guarded.namespace).metadata.annotations or {}
    assert GPU_ANNOTATION not in after  # kvsched may also roll back


EDITOR_PATCHES = [
    ("move the GPU", {"annotations": {GPU_ANNOTATION: "1"}}, f"metadata.annotations['{GPU_ANNOTATION}']"),
    ("free the GPU", {"annotations": {GPU_ANNOTATION: None}}, f"metadata.annotations['{GPU_ANNOTATION}']"),
    ("grow the share", {"annotations": {MEMORY_FRACTION_ANNOTATION: "0.9"}},
     f"metadata.annotations['{MEMORY_FRACTION_ANNOTATION}']"),
    ("swap the device", {"annotations": {VISIBLE_DEVICES_ANNOTATION: "GPU-1"}},
     f"metadata.annotations['{VISIBLE_DEVICES_ANNOTATION}']"),
    ("relabel the model", {"labels": {MODEL_LABEL: "beta"}}, f"metadata.labels['{MODEL_LABEL}']"),
    ("unlabel the model", {"labels": {MODEL_LABEL: None}}, f"metadata.labels['{MODEL_LABEL}']"),
]


@pytest.mark.parametrize("what, metadata, field", EDITOR_PATCHES, ids=[p[0] for p in EDITOR_PATCHES])
def test_a_namespace_editors_patch_of_kvscheds_fields_is_refused(guarded: Guarded, what: str,
                                                                 metadata: dict[str, Any], field: str) -> None:
    name = f"managed-{uuid.uuid4().hex[:6]}"
    before = managed_pod(guarded, name)
    error = refusal(lambda: guarded.editor.patch_namespaced_pod(name, guarded.namespace, {"metadata": metadata}))
    assert error.status == 403, error.body
    assert field in error.body and guarded.policy in error.body, error.body
    after = guarded.admin.read_namespaced_pod(name, guarded.namespace)
    assert after.metadata.annotations == before.metadata.annotations
    assert after.metadata.labels == before.metadata.labels


def test_the_editor_still_edits_everything_else_and_deletes(guarded: Guarded) -> None:
    """Only kvsched's fields are guarded: other labels and annotations change, and the pod can be deleted (as the
    garbage collector and evictions delete)."""
    managed_pod(guarded, "editable")
    guarded.editor.patch_namespaced_pod("editable", guarded.namespace, {"metadata": {
        "annotations": {"team": "llm"}, "labels": {"tier": "gold"}}})
    got = guarded.admin.read_namespaced_pod("editable", guarded.namespace)
    assert got.metadata.annotations["team"] == "llm" and got.metadata.labels["tier"] == "gold"
    guarded.editor.delete_namespaced_pod("editable", guarded.namespace, grace_period_seconds=0)


def test_nobody_but_kvsched_creates_a_pod_carrying_its_annotations(guarded: Guarded) -> None:
    for api in (guarded.editor, guarded.admin):
        error = refusal(lambda: api.create_namespaced_pod(
            guarded.namespace, pod("preset", annotations={GPU_ANNOTATION: "0"}), dry_run="All"))
        assert error.status == 403 and f"metadata.annotations['{GPU_ANNOTATION}']" in error.body, error.body
    guarded.kvsched.create_namespaced_pod(guarded.namespace, pod("preset", annotations={GPU_ANNOTATION: "0"}),
                                          dry_run="All")


ENV_CASES = [
    ("a literal device", [{"name": VISIBLE_DEVICES_ENV, "value": "0"}], None, False),
    ("all devices", [{"name": VISIBLE_DEVICES_ENV, "value": "all"}], None, False),
    ("another annotation", [{"name": VISIBLE_DEVICES_ENV, "valueFrom": {"fieldRef": {
        "fieldPath": "metadata.annotations['team']"}}}], None, False),
    ("kvsched's, then a literal", [FIELD_REF_ENV, {"name": VISIBLE_DEVICES_ENV, "value": "0"}], None, False),
    ("envFrom without kvsched's", [], [{"configMapRef": {"name": "gpus"}}], False),
    ("kvsched's fieldRef", [FIELD_REF_ENV], None, True),
    ("envFrom next to kvsched's", [FIELD_REF_ENV], [{"configMapRef": {"name": "gpus"}}], True),
    ("none", [], None, True),
]


@pytest.mark.parametrize("what, env, env_from, admitted", ENV_CASES, ids=[c[0] for c in ENV_CASES])
def test_a_kvsched_pod_takes_visible_devices_only_from_the_annotation(
        guarded: Guarded, what: str, env: list[dict[str, Any]], env_from: list[dict[str, Any]] | None,
        admitted: bool) -> None:
    manifest = pod("env", env=env, env_from=env_from)
    if admitted:
        guarded.editor.create_namespaced_pod(guarded.namespace, manifest, dry_run="All")
        return
    error = refusal(lambda: guarded.editor.create_namespaced_pod(guarded.namespace, manifest, dry_run="All"))
    assert error.status == 422, error.body
    assert "spec.containers[server]" in error.body and VISIBLE_DEVICES_ENV in error.body, error.body
    # Another scheduler's pod is none of kvsched's business.
    guarded.editor.create_namespaced_pod(guarded.namespace, pod("env", env=env, env_from=env_from,
                                                                scheduler="default-scheduler"), dry_run="All")


def test_an_init_or_ephemeral_container_is_checked_too(guarded: Guarded) -> None:
    manifest = pod("init")
    manifest["spec"]["initContainers"] = [{"name": "warm", "image": IMAGE,
                                           "env": [{"name": VISIBLE_DEVICES_ENV, "value": "0"}]}]
    error = refusal(lambda: guarded.editor.create_namespaced_pod(guarded.namespace, manifest, dry_run="All"))
    assert error.status == 422 and "spec.initContainers[warm]" in error.body, error.body

    guarded.editor.create_namespaced_pod(guarded.namespace, pod("debugged"))
    debug = {"spec": {"ephemeralContainers": [{"name": "debug", "image": IMAGE,
                                               "env": [{"name": VISIBLE_DEVICES_ENV, "value": "all"}]}]}}
    # (`edit` does not grant pods/ephemeralcontainers; the admin is held to the policy as well.)
    error = refusal(lambda: guarded.admin.patch_namespaced_pod_ephemeralcontainers(
        "debugged", guarded.namespace, debug))
    assert error.status == 422 and "spec.ephemeralContainers[debug]" in error.body, error.body
    debug["spec"]["ephemeralContainers"][0]["env"] = []
    guarded.admin.patch_namespaced_pod_ephemeralcontainers("debugged", guarded.namespace, debug)


def test_a_holder_writes_its_gpu_uuid_and_nothing_else(guarded: Guarded) -> None:
    guarded.kvsched.create_namespaced_pod(guarded.namespace, pod("holder", labels={HOLDER_LABEL: "true"}, env=[]))
    guarded.admin.create_namespaced_pod(guarded.namespace, pod("not-a-holder", env=[]))
    uuid_patch = {"metadata": {"annotations": {GPU_UUID_ANNOTATION: "GPU-1234"}}}
    guarded.holder.patch_namespaced_pod("holder", guarded.namespace, uuid_patch)
    # (Writing the value it already has changes nothing and is let through.)
    moved = {"metadata": {"annotations": {GPU_UUID_ANNOTATION: "GPU-5678"}}}
    for api, name in ((guarded.editor, "holder"), (guarded.holder, "not-a-holder")):
        error = refusal(lambda: api.patch_namespaced_pod(name, guarded.namespace, moved))
        assert error.status == 403 and f"metadata.annotations['{GPU_UUID_ANNOTATION}']" in error.body, error.body
    for metadata in ({"annotations": {GPU_ANNOTATION: "0"}}, {"labels": {HOLDER_LABEL: None}}):
        error = refusal(lambda: guarded.holder.patch_namespaced_pod("holder", guarded.namespace,
                                                                    {"metadata": metadata}))
        assert error.status == 403, error.body
    got = guarded.admin.read_namespaced_pod("holder", guarded.namespace).metadata
    assert got.annotations[GPU_UUID_ANNOTATION] == "GPU-1234" and got.labels[HOLDER_LABEL] == "true"


def test_the_replica_set_controller_creates_pods_of_a_managed_template(guarded: Guarded) -> None:
    """A Deployment whose template carries kvsched's label, scheduler and fieldRef env (what the controller
    writes) gets its pod from the kube-controller-manager; one with a literal device gets a FailedCreate."""
    good = deployment_manifest("good", scheduler_name=DEFAULT_SCHEDULER_NAME)
    bad = deployment_manifest("bad", scheduler_name=DEFAULT_SCHEDULER_NAME)
    for manifest, env in ((good, [FIELD_REF_ENV]), (bad, [{"name": VISIBLE_DEVICES_ENV, "value": "0"}])):
        manifest["spec"]["template"]["metadata"]["labels"][MODEL_LABEL] = manifest["metadata"]["name"]
        manifest["spec"]["template"]["spec"]["containers"][0]["env"] = env
        guarded.editor_apps.create_namespaced_deployment(guarded.namespace, manifest)
    wait_for(lambda: guarded.admin.list_namespaced_pod(guarded.namespace, label_selector="app=good").items,
             lambda pods: len(pods) == 1, 60.0, "the good Deployment's pod")

    def failures() -> list[str]:
        return [c.message for rs in guarded.editor_apps.list_namespaced_replica_set(
            guarded.namespace, label_selector="app=bad").items
            for c in (rs.status.conditions or []) if c.type == "ReplicaFailure"]

    [message] = wait_for(failures, bool, 60.0, "the bad Deployment's ReplicaSet reports FailedCreate")
    assert VISIBLE_DEVICES_ENV in message and guarded.policy in message, message
    assert guarded.admin.list_namespaced_pod(guarded.namespace, label_selector="app=bad").items == []


def test_the_device_plugin_stand_in_writes_a_holders_uuid_as_the_holder(guarded: Guarded) -> None:
    """The harness's stand-in for `kvsched gpu-holder` writes the UUID as the holder pod's ServiceAccount, so the
    chart's policy (installed by test_rbac_audit.py and `make cluster`) lets it through, as it lets the real one."""
    node = f"vap-{uuid.uuid4().hex[:6]}"
    create_gpu_nodes(guarded.admin, [gpu_node_manifest(node, gpus=1, gpu_memory_mib=81920)])
    try:
        holder = pod("held", labels={HOLDER_LABEL: "true"}, env=[], scheduler="nobody")
        holder["spec"].pop("nodeSelector")
        holder["spec"]["serviceAccountName"] = DEFAULT_HOLDER_SERVICE_ACCOUNT
        holder["spec"]["containers"][0]["resources"] = {"limits": {GPU_RESOURCE: "1"}}
        guarded.kvsched.create_namespaced_pod(guarded.namespace, holder)
        guarded.kvsched.create_namespaced_binding(guarded.namespace, {
            "metadata": {"name": "held"}, "target": {"kind": "Node", "name": node}}, _preload_content=False)
        wait_for(lambda: guarded.admin.read_namespaced_pod("held", guarded.namespace).metadata.annotations or {},
                 lambda a: a.get(GPU_UUID_ANNOTATION) == fake_uuid(node, 0), 30.0, "the holder's UUID")
    finally:
        guarded.admin.delete_namespaced_pod("held", guarded.namespace, grace_period_seconds=0)
        delete_nodes(guarded.admin, [node])
