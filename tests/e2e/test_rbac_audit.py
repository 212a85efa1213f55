"""The chart's RBAC is what kvsched does, read from the apiserver's audit log rather than from a copy.

The chart is installed with `helm install`; `kvsched serve` and a stock kube-scheduler run as local processes with
the chart's rendered arguments and scheduler configuration and a token of the chart's ServiceAccount (as
`make cluster` runs them). A short scenario walks every path kvsched has to the API: leader election, the
informers, a model placed (ModelServing created, status written, template patched, pod annotated and bound), an
unmanaged pod bound and its bind retried (the Binding answers 409, kvsched reads the pod), a spec change, a
node cordoned (an eviction, and the GPU holder pod of its old GPU deleted; holders are created throughout),
the annotations removed (the ModelServing deleted), events throughout, the Lease
released on shutdown. Then the audit log of the ServiceAccount's requests says (a) nothing it did was denied and
(b) every (apiGroup, resource, subresource, verb) the chart's ClusterRole and Role grant was used by kvsched,
except the few in UNREACHABLE. The granted set comes from `helm template` of the chart with the values installed.
"""
from __future__ import annotations

import json
import os
import urllib.request
import uuid
from collections.abc import Iterator, Set as AbstractSet
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from hack.chart import Helm, documents
from kvsched.api.names import (
    DEFAULT_SCHEDULER_NAME,
    GPU_ANNOTATION,
    HOLDER_LABEL,
    GROUP,
    MODEL_ANNOTATIONS,
    MODEL_LABEL,
    PLURAL,
    RATE_ANNOTATION,
    SIZE_ANNOTATION,
    SLO_ANNOTATION,
    VERSION,
)

from .harness import audit
from .harness.chart import InstalledChart, install_chart, uninstall_chart
from .harness.cluster import ControlPlane
from .harness.controller import kvsched_executable
from .harness.kube import create_gpu_nodes, delete_nodes, deployment_manifest, gpu_node_manifest, wait_for
from .harness.processes import Component, free_port, http_ok

pytestmark = pytest.mark.e2e

Rule = tuple[str, str, str, str]  # (apiGroup, resource, subresource, verb)

# Grants of the chart that no request can show, each with the reason. Keep it short and true: the test below
# fails when one of them is no longer granted or shows up in the log after all.
UNREACHABLE: dict[Rule, str] = {
    ("apps", "deployments", "finalizers", "update"):
        "never a request of its own: the OwnerReferencesPermissionEnforcement admission plugin (on in the e2e "
        "apiserver) checks it when the controller creates a ModelServing whose ownerReference sets "
        "blockOwnerDeletion; without the grant that create is a 403, which the no-denial test catches",
}

SCHEDULER_USER_AGENT = "kube-scheduler/"  # the chart's kube-scheduler shares kvsched's ServiceAccount


@dataclass(frozen=True)
class Audited:
    """What the scenario left: the chart's grants (rendered), the ServiceAccount's requests (audit log)."""

    granted: frozenset[Rule]
    requests: tuple[audit.Request, ...]
    plane: ControlPlane
    scenario_error: str  # "" when every step of the scenario went through

    @property
    def kvsched(self) -> list[audit.Request]:
        """kvsched's requests for API objects (the kube-scheduler's, and discovery or health URLs, left out)."""
        return [r for r in self.requests if r.resource and not r.user_agent.startswith(SCHEDULER_USER_AGENT)]

    @property
    def used(self) -> set[Rule]:
        """What kvsched was authorized to do and did (a 404 or 409 answer still used the grant)."""
        return {r.rule for r in self.kvsched if r.decision == "allow"}


def granted_rules(docs: list[dict[str, Any]]) -> frozenset[Rule]:
    """Every (apiGroup, resource, subresource, verb) the ClusterRoles and Roles in `docs` grant."""
    out: set[Rule] = set()
    for doc in docs:
        if doc["kind"] not in ("ClusterRole", "Role"):
            continue
        for rule in doc.get("rules") or []:
            assert "resourceNames" not in rule and "*" not in rule["verbs"], rule
            for group in rule["apiGroups"]:
                for resource in rule["resources"]:
                    base, _, sub = resource.partition("/")
                    out.update((group, base, sub, verb) for verb in rule["verbs"])
    return frozenset(out)


def bind_again(extender_url: str, pod: client.V1Pod) -> dict[str, Any]:
    """POST /bind for a pod that is already bound, as kube-scheduler does when its first bind timed out."""
    body = json.dumps({"PodName": pod.metadata.name, "PodNamespace": pod.metadata.namespace,
                       "PodUID": pod.metadata.uid, "Node": pod.spec.node_name}).encode()
    request = urllib.request.Request(f"{extender_url}/bind", data=body,
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as response:
        answer: dict[str, Any] = json.loads(response.read())
    return answer


def serving(custom: client.CustomObjectsApi, namespace: str, name: str) -> dict[str, Any]:
    obj: dict[str, Any] = custom.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)
    return obj


def live_pods(core: client.CoreV1Api, namespace: str, model: str) -> list[client.V1Pod]:
    return [p for p in core.list_namespaced_pod(namespace, label_selector=f"{MODEL_LABEL}={model}").items
            if not p.metadata.deletion_timestamp]


def run_scenario(plane: ControlPlane, kube: client.ApiClient, chart: InstalledChart, workload_ns: str,
                 pool: str, workdir: Path) -> None:
    """Start kvsched and its kube-scheduler as the chart runs them, walk every API path, stop them."""
    core, apps = client.CoreV1Api(kube), client.AppsV1Api(kube)
    custom = client.CustomObjectsApi(kube)
    kubeconfig = chart.service_account_kubeconfig(workdir / "sa.kubeconfig")
    args = chart.kvsched_args()
    assert args[0] == "serve"
    metrics_port = next(int(a.split("=", 1)[1]) for a in args if a.startswith("--metrics-port="))
    extender_port = next(int(a.split("=", 1)[1]) for a in args if a.startswith("--port="))
    kvsched = Component("kvsched-audited", [str(kvsched_executable()), *args], workdir / "kvsched.log",
                        env={"KUBECONFIG": str(kubeconfig)})
    config = chart.local_scheduler_config(kubeconfig)
    assert config["extenders"][0]["urlPrefix"] == f"http://127.0.0.1:{extender_port}"
    (workdir / "scheduler.yaml").write_text(yaml.safe_dump(config))
    scheduler_port = free_port()
    scheduler = Component("kvsched-audited-scheduler", [
        str(plane.tools.kube_scheduler), f"--config={workdir / 'scheduler.yaml'}",
        f"--authentication-kubeconfig={kubeconfig}", f"--authorization-kubeconfig={kubeconfig}",
        "--bind-address=127.0.0.1", f"--secure-port={scheduler_port}", "--v=2",
    ], workdir / "kvsched-scheduler.log")
    for component in (kvsched, scheduler):
        plane.components.append(component)  # log tails on failure, stopped with the plane at the latest
    try:
        kvsched.start().wait_ready(lambda: http_ok(f"http://127.0.0.1:{metrics_port}/readyz"), 60.0,
                                   "ready (/readyz)")
        scheduler.start().wait_ready(lambda: http_ok(f"https://127.0.0.1:{scheduler_port}/readyz"), 60.0)

        # A model placed: ModelServing created and its status written, template patched, pod annotated and bound.
        names = [f"{pool}-a", f"{pool}-b"]
        create_gpu_nodes(core, [gpu_node_manifest(n, gpus=1, gpu_memory_mib=81920, labels={"e2e-pool": pool})
                                for n in names])
        apps.create_namespaced_deployment(workload_ns, deployment_manifest(
            "alpha", replicas=1, scheduler_name=DEFAULT_SCHEDULER_NAME,
            annotations={SIZE_ANNOTATION: "16Gi", RATE_ANNOTATION: "4", SLO_ANNOTATION: "1"}))
        # A pod kvsched does not manage goes through its scheduler too (the extender binds it as it is).
        core.create_namespaced_pod(workload_ns, {
            "metadata": {"name": "passthrough"},
            "spec": {"schedulerName": DEFAULT_SCHEDULER_NAME, "nodeSelector": {"e2e-pool": pool},
                     "containers": [{"name": "c", "image": "registry.invalid/kvsched/fake:latest"}]}})
        [placed] = wait_for(lambda: live_pods(core, workload_ns, "alpha"),
                            lambda pods: len(pods) == 1 and bool(pods[0].spec.node_name)
                            and GPU_ANNOTATION in (pods[0].metadata.annotations or {}),
                            60, "alpha's pod bound to a planned GPU")
        passthrough = wait_for(lambda: core.read_namespaced_pod("passthrough", workload_ns),
                               lambda p: bool(p.spec.node_name), 60, "the unmanaged pod bound")
        # kube-scheduler retries a bind that timed out: the Binding answers 409 and kvsched reads the pod.
        assert bind_again(f"http://127.0.0.1:{extender_port}", passthrough).get("Error", "") == ""

        # The spec follows the annotations (ModelServing patched).
        apps.patch_namespaced_deployment("alpha", workload_ns, {"metadata": {"annotations": {RATE_ANNOTATION: "2"}}})
        wait_for(lambda: serving(custom, workload_ns, "alpha"), lambda ms: ms["spec"]["requestRate"] == 2, 30,
                 "alpha's ModelServing at the new rate")

        # A node leaves the pool: its replica moves through the Eviction API.
        core.patch_node(placed.spec.node_name, {"spec": {"unschedulable": True}})

        def evicted() -> bool:
            try:
                return core.read_namespaced_pod(placed.metadata.name, workload_ns).metadata.deletion_timestamp \
                    is not None
            except ApiException as e:
                if e.status == 404:
                    return True
                raise

        wait_for(evicted, bool, 60, f"pod {placed.metadata.name} on cordoned {placed.spec.node_name} evicted")

        # Once it is gone, the GPU holder pod of its old GPU is deleted: nothing is planned on a cordoned node.
        def holders_on_cordoned() -> list[str]:
            return [p.metadata.name for p in core.list_namespaced_pod(
                chart.namespace, label_selector=f"{HOLDER_LABEL}=true").items
                if p.spec.node_name == placed.spec.node_name]

        wait_for(holders_on_cordoned, lambda names: not names, 60,
                 f"the GPU holder on cordoned {placed.spec.node_name} deleted")

        # No annotation left: the Deployment is not a model any more and its ModelServing goes.
        apps.patch_namespaced_deployment("alpha", workload_ns, {
            "metadata": {"annotations": dict.fromkeys(MODEL_ANNOTATIONS)}})

        def gone() -> bool:
            try:
                serving(custom, workload_ns, "alpha")
            except ApiException as e:
                if e.status == 404:
                    return True
                raise
            return False

        wait_for(gone, bool, 30, "alpha's ModelServing deleted")
    finally:
        scheduler.stop()
        kvsched.stop()  # SIGTERM: kvsched releases its Lease
        delete_nodes(core, [f"{pool}-a", f"{pool}-b"])


@pytest.fixture(scope="module")
def audited(control_plane: ControlPlane, kube: client.ApiClient, project_crds: list[str],
            tmp_path_factory: pytest.TempPathFactory) -> Iterator[Audited]:
    helm = control_plane.tools.helm
    if not os.access(helm, os.X_OK):
        reason = f"helm is not built: {helm} is missing (run `make e2e-tools`)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(reason, pytrace=False)
        pytest.skip(reason)
    assert "modelservings.kvsched.io" in project_crds
    core = client.CoreV1Api(kube)
    workdir = tmp_path_factory.mktemp("rbac-audit")
    suffix = uuid.uuid4().hex[:6]
    workload_ns, pool = f"e2e-audit-{suffix}", f"audit-{suffix}"
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=workload_ns)))
    wait_for(lambda: core.read_namespaced_service_account("default", workload_ns), lambda sa: True, 60.0,
             f"ServiceAccount {workload_ns}/default")
    values = {
        # kvsched and its scheduler run here; nothing may run the chart's own pod (KWOK would pretend it runs).
        "nodeSelector": {"kvsched.io/e2e": "nowhere"},
        "watchNamespace": workload_ns, "gpuNodeSelector": f"e2e-pool={pool}",
        "metricsPort": free_port(), "extenderPort": free_port(), "timeBudgetSeconds": 1,
        "extraArgs": ["--metrics-host=127.0.0.1"],
    }
    chart = install_chart(control_plane, kube, helm, workdir, f"kvsched-{suffix}", f"kvsched-{suffix}", values)
    try:
        chart.scale_in_cluster_pod_to_zero()
        rendered = documents(Helm(helm, control_plane.tools.k8s_version).template(
            values, release=chart.release, namespace=chart.namespace))
        user = f"system:serviceaccount:{chart.namespace}:{chart.service_account()}"
        try:
            run_scenario(control_plane, kube, chart, workload_ns, pool, workdir)
            error = ""
        except Exception as e:  # e.g. a step timed out because a request was denied: the log says which
            error = f"{type(e).__name__}: {e}"
        assert control_plane.creds is not None
        audit.fence(control_plane.server, control_plane.creds.admin_token, control_plane.creds.ca_cert,
                    control_plane.audit_log)
        mine = tuple(r for r in audit.requests(control_plane.audit_log) if r.username == user)
        yield Audited(granted_rules(rendered), mine, control_plane, error)
    finally:
        uninstall_chart(chart, helm, workdir)
        core.delete_namespace(workload_ns)


def describe(rules: AbstractSet[Rule]) -> list[str]:
    return sorted(f"{v} {g or 'core'}/{r}{'/' + s if s else ''}" for g, r, s, v in rules)


def test_no_request_of_the_charts_service_account_was_denied(audited: Audited) -> None:
    assert audited.kvsched, "no request of kvsched in the audit log: the scenario did not run"
    assert any(r.user_agent.startswith(SCHEDULER_USER_AGENT) for r in audited.requests), \
        "no request of the chart's kube-scheduler in the audit log"
    denied = sorted({str(r) for r in audited.requests if r.denied})
    assert not denied, "denied:\n" + "\n".join(denied)
    assert audited.scenario_error == ""


def test_kvsched_uses_every_grant_of_the_chart(audited: Audited) -> None:
    assert audited.scenario_error == "", "the scenario stopped early, so not every path ran"
    unused = audited.granted - audited.used - set(UNREACHABLE)
    print("kvsched used:", *describe(audited.used), sep="\n  ")
    assert not unused, (f"granted but never used by kvsched: {describe(unused)}; drop them from "
                        "helm/kvsched/templates/rbac.yaml, or list them in UNREACHABLE with the reason")


def test_kvsched_uses_nothing_the_chart_does_not_grant(audited: Audited) -> None:
    # Not implied by "nothing denied": the chart's kube-scheduler shares the ServiceAccount, and its built-in
    # roles allow some of what kvsched does (get pods, for one); kvsched's own roles must say all of it.
    beyond = describe(audited.used - audited.granted)
    assert not beyond, f"kvsched did these without a grant of its own ClusterRole or Role: {beyond}"


def test_unreachable_grants_are_granted_and_really_unused(audited: Audited) -> None:
    assert set(UNREACHABLE) <= audited.granted, "UNREACHABLE lists a grant the chart does not have"
    assert describe(set(UNREACHABLE) & audited.used) == [], "used after all: remove it from UNREACHABLE"
    # The owner-reference check behind the finalizers grant did run: the apiserver enforces it and the
    # controller's create of an owned ModelServing went through.
    [apiserver] = [c for c in audited.plane.components if c.name == "kube-apiserver"]
    assert any("OwnerReferencesPermissionEnforcement" in a for a in apiserver.argv)
    assert any(r.rule == (GROUP, PLURAL, "", "create") and r.code == 201 for r in audited.kvsched)
