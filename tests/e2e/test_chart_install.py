"""The chart on a real apiserver: `helm install` succeeds; the kube-scheduler's own ServiceAccount may do what the
kube-scheduler needs, kvsched's may not, and neither may do what nobody needs (SubjectAccessReviews against the
cluster's own built-in roles; each one's verbs are checked against the audit log in test_rbac_audit.py); a stock
kube-scheduler runs with the chart's configuration and the token kube-controller-manager wrote into the chart's
Secret for its ServiceAccount, and takes its Lease; the examples are accepted."""
from __future__ import annotations

import os
import re
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from kubernetes import client

from .harness.chart import InstalledChart, install_chart, uninstall_chart
from .harness.cluster import ControlPlane
from .harness.kube import REPO_ROOT, wait_for
from .harness.processes import Component, free_port, http_ok
from .harness.tools import unavailable

pytestmark = pytest.mark.e2e

PSA_LABELS = ("pod-security.kubernetes.io/enforce", "pod-security.kubernetes.io/warn",
              "pod-security.kubernetes.io/audit")


@pytest.fixture(scope="module")
def chart(control_plane: ControlPlane, kube: client.ApiClient, project_crds: list[str],
          tmp_path_factory: pytest.TempPathFactory) -> Iterator[InstalledChart]:
    helm = control_plane.tools.helm
    if not os.access(helm, os.X_OK):
        reason = f"helm is not built: {helm} is missing (run `make e2e-tools`)"
        unavailable(reason)
    workdir = tmp_path_factory.mktemp("chart")
    suffix = uuid.uuid4().hex[:6]
    # The release namespace enforces the `restricted` Pod Security Standard, as a hardened cluster's would.
    client.CoreV1Api(kube).create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(
        name=f"kvsched-{suffix}", labels=dict.fromkeys(PSA_LABELS, "restricted"))))
    # Nothing may run the in-cluster pod on a KWOK node (KWOK would pretend it runs): pin it nowhere.
    installed = install_chart(control_plane, kube, helm, workdir, f"kvsched-{suffix}", f"kvsched-{suffix}",
                              {"nodeSelector": {"kvsched.io/e2e": "nowhere"},
                               "networkPolicy": {"enabled": True, "metricsFrom": [{"namespaceSelector": {
                                   "matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}]}})
    yield installed
    uninstall_chart(installed, helm, workdir)


def can(api: client.ApiClient, user: str, verb: str, group: str, resource: str, namespace: str = "e2e-any",
        subresource: str = "", name: str = "") -> bool:
    review = client.V1SubjectAccessReview(spec=client.V1SubjectAccessReviewSpec(
        user=user, groups=["system:serviceaccounts", "system:authenticated"],
        resource_attributes=client.V1ResourceAttributes(
            verb=verb, group=group, resource=resource, subresource=subresource or None, namespace=namespace,
            name=name or None)))
    return bool(client.AuthorizationV1Api(api).create_subject_access_review(review).status.allowed)


# What the stock kube-scheduler needs, from the built-in system:kube-scheduler / system:volume-scheduler. What
# kvsched needs is read from the audit log of a run (test_rbac_audit.py), not listed here.
SCHEDULER_NEEDS = [
    ("list", "", "persistentvolumes", ""), ("list", "storage.k8s.io", "csinodes", ""),
    ("list", "", "namespaces", ""), ("update", "", "pods", "status"), ("create", "", "pods", "binding"),
    ("create", "events.k8s.io", "events", ""),
]
# What kvsched (controller + extender) does and its kube-scheduler must not.
KVSCHED_ONLY = [
    ("patch", "apps", "deployments", ""), ("create", "kvsched.io", "modelservings", ""),
    ("patch", "kvsched.io", "modelservings", "status"), ("create", "", "pods", "eviction"),
    ("patch", "", "pods", ""),
]
# (Deleting pods is allowed to the scheduler: system:kube-scheduler grants it for preemption.)
MUST_NOT = [
    ("update", "", "nodes", ""), ("update", "apps", "deployments", ""),
    ("get", "", "secrets", ""), ("create", "apps", "deployments", ""), ("delete", "", "nodes", ""),
    ("delete", "apps", "deployments", ""),
]


@pytest.mark.parametrize("verb, group, resource, sub", SCHEDULER_NEEDS,
                         ids=[f"{v} {g or 'core'}/{r}{'/' + s if s else ''}" for v, g, r, s in SCHEDULER_NEEDS])
def test_the_scheduler_may_and_kvsched_may_not(chart: InstalledChart, kube: client.ApiClient, verb: str, group: str,
                                               resource: str, sub: str) -> None:
    scheduler = f"system:serviceaccount:{chart.namespace}:{chart.scheduler_service_account()}"
    kvsched = f"system:serviceaccount:{chart.namespace}:{chart.service_account()}"
    assert scheduler != kvsched
    assert can(kube, scheduler, verb, group, resource, subresource=sub)
    assert not can(kube, kvsched, verb, group, resource, subresource=sub)


@pytest.mark.parametrize("verb, group, resource, sub", KVSCHED_ONLY,
                         ids=[f"{v} {g or 'core'}/{r}{'/' + s if s else ''}" for v, g, r, s in KVSCHED_ONLY])
def test_kvsched_may_and_the_scheduler_may_not(chart: InstalledChart, kube: client.ApiClient, verb: str, group: str,
                                               resource: str, sub: str) -> None:
    scheduler = f"system:serviceaccount:{chart.namespace}:{chart.scheduler_service_account()}"
    kvsched = f"system:serviceaccount:{chart.namespace}:{chart.service_account()}"
    assert can(kube, kvsched, verb, group, resource, subresource=sub)
    assert not can(kube, scheduler, verb, group, resource, subresource=sub)


@pytest.mark.parametrize("verb, group, resource, sub", MUST_NOT,
                         ids=[f"{v} {g or 'core'}/{r}" for v, g, r, s in MUST_NOT])
def test_neither_service_account_may(chart: InstalledChart, kube: client.ApiClient, verb: str, group: str,
                                     resource: str, sub: str) -> None:
    for account in (chart.service_account(), chart.scheduler_service_account()):
        assert not can(kube, f"system:serviceaccount:{chart.namespace}:{account}", verb, group, resource,
                       subresource=sub), account


def test_leases_only_in_the_release_namespace(chart: InstalledChart, kube: client.ApiClient) -> None:
    user = f"system:serviceaccount:{chart.namespace}:{chart.service_account()}"
    for verb in ("get", "create", "update"):
        assert can(kube, user, verb, "coordination.k8s.io", "leases", namespace=chart.namespace), verb
    assert not can(kube, user, "update", "coordination.k8s.io", "leases", namespace="default")
    assert not can(kube, user, "delete", "coordination.k8s.io", "leases", namespace=chart.namespace)
    # The scheduler: its own Lease only (system:kube-scheduler covers the one named kube-scheduler).
    scheduler = f"system:serviceaccount:{chart.namespace}:{chart.scheduler_service_account()}"
    own = chart.scheduler_config()["leaderElection"]["resourceName"]
    for verb in ("get", "update"):
        assert can(kube, scheduler, verb, "coordination.k8s.io", "leases", namespace=chart.namespace, name=own)
        assert not can(kube, scheduler, verb, "coordination.k8s.io", "leases", namespace=chart.namespace,
                       name="kvsched-controller")

def test_the_charts_scheduler_runs_with_its_config_and_token(chart: InstalledChart, control_plane: ControlPlane,
                                                             kube: client.ApiClient, tmp_path: Path) -> None:
    # The token kube-controller-manager wrote into the chart's Secret, which the container mounts.
    kubeconfig = chart.scheduler_kubeconfig(tmp_path / "scheduler.kubeconfig")
    config = chart.local_scheduler_config(kubeconfig)
    assert config["extenders"][0]["urlPrefix"].startswith("http://127.0.0.1:")
    (tmp_path / "scheduler.yaml").write_text(yaml.safe_dump(config))
    port = free_port()
    scheduler = Component("chart-scheduler", [
        str(control_plane.tools.kube_scheduler), f"--config={tmp_path / 'scheduler.yaml'}",
        f"--authentication-kubeconfig={kubeconfig}", f"--authorization-kubeconfig={kubeconfig}",
        "--bind-address=127.0.0.1", f"--secure-port={port}", "--v=2",
    ], tmp_path / "chart-scheduler.log").start()
    try:
        scheduler.wait_ready(lambda: http_ok(f"https://127.0.0.1:{port}/readyz"), 120.0)
        lease_name = config["leaderElection"]["resourceName"]
        lease = wait_for(
            lambda: client.CoordinationV1Api(kube).read_namespaced_lease(lease_name, chart.namespace),
            lambda lease: bool(lease.spec.holder_identity), 60.0, f"Lease {chart.namespace}/{lease_name} held")
        assert lease.spec.holder_identity
        # No RBAC denial ("... is forbidden: User \"system:serviceaccount:...\" cannot ..."). Other "forbidden"
        # answers are not the chart's doing: an event about another test's pod in a namespace being deleted.
        denials = [line for line in scheduler.tail(200).splitlines() if re.search(r'forbidden: User \\?"', line)]
        assert not denials, denials
    finally:
        scheduler.stop()


def test_the_examples_are_accepted(chart: InstalledChart, kube: client.ApiClient, namespace: str) -> None:
    for path in (REPO_ROOT / "examples" / "deployment.yaml", REPO_ROOT / "examples" / "modelserving.yaml"):
        for doc in yaml.safe_load_all(path.read_text()):
            doc["metadata"]["namespace"] = namespace
            group, _, version = doc["apiVersion"].rpartition("/")
            if doc["kind"] == "Deployment":
                client.AppsV1Api(kube).create_namespaced_deployment(namespace, doc, dry_run="All")
            else:
                client.CustomObjectsApi(kube).create_namespaced_custom_object(
                    group, version, namespace, "modelservings", doc, dry_run="All")


def test_the_charts_pod_is_admitted_under_the_restricted_pod_security_standard(
        chart: InstalledChart, kube: client.ApiClient) -> None:
    """The release namespace enforces `restricted`: the chart's Deployment gets its pod (the ReplicaSet would
    report FailedCreate with the violations otherwise)."""
    core, apps = client.CoreV1Api(kube), client.AppsV1Api(kube)
    labels = core.read_namespace(chart.namespace).metadata.labels or {}
    assert labels.get("pod-security.kubernetes.io/enforce") == "restricted"

    def failures() -> list[str]:
        return [f"{rs.metadata.name}: {c.message}" for rs in apps.list_namespaced_replica_set(chart.namespace).items
                for c in (rs.status.conditions or []) if c.type == "ReplicaFailure"]

    pods = wait_for(lambda: (core.list_namespaced_pod(chart.namespace).items, failures()),
                    lambda got: bool(got[0]) or bool(got[1]), 60.0, "the chart's pod, or a FailedCreate")
    assert pods[1] == [] and len(pods[0]) >= 1, pods[1]


def test_the_network_policy_is_installed_around_the_charts_pod(chart: InstalledChart,
                                                               kube: client.ApiClient) -> None:
    """With `networkPolicy.enabled` the apiserver accepts the chart's NetworkPolicy, and it selects the chart's pod.
    (No CNI enforces it in this cluster: what it lets through is checked in tests/chart.)"""
    namespace = chart.namespace
    policies = client.NetworkingV1Api(kube).list_namespaced_network_policy(namespace).items
    assert len(policies) == 1, [p.metadata.name for p in policies]
    selector = ",".join(f"{k}={v}" for k, v in policies[0].spec.pod_selector.match_labels.items())
    selected = wait_for(lambda: client.CoreV1Api(kube).list_namespaced_pod(namespace, label_selector=selector).items,
                        bool, 60.0, "the chart's pod selected by its NetworkPolicy")
    assert all(p.metadata.name.startswith(chart.deployment.metadata.name) for p in selected)
