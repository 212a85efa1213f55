"""The chart's RBAC is what kvsched and its kube-scheduler do, read from the apiserver's audit log, per ServiceAccount.

The chart is installed with `helm install`, once watching every namespace and once watching one (`watchNamespace`);
`kvsched serve` and a stock kube-scheduler run as local processes with the chart's rendered arguments and scheduler
configuration, kvsched with a token of the pod's ServiceAccount and the scheduler with the token
kube-controller-manager wrote into the chart's Secret for the scheduler's own ServiceAccount (as the two containers
mount them; `make cluster` runs them so too). A short scenario walks every path kvsched has to the API: leader
election, the informers, a model placed (ModelServing created, status written, template patched, pod annotated and
bound), an unmanaged pod bound and its bind retried (the Binding answers 409, kvsched reads the pod), a spec change,
the model's PodDisruptionBudget created, patched back after an edit and deleted on the Deployment's opt-out,
a GPU node left out of the pool (a Warning event about the Node, in `default`), a node cordoned (an eviction, and
the GPU holder pod of its old GPU deleted; holders are created and bound throughout), the annotations removed (the
ModelServing deleted), events throughout, the Lease released on shutdown; and a /metrics scrape of the scheduler
with a token (its delegated authentication and authorization). Then the audit log says, for each of the two
ServiceAccounts: (a) nothing it did was denied; (b) every request is allowed by a grant the chart gives that
ServiceAccount, and (c) every such grant -- (apiGroup, resource, subresource, verb, names) where it applies (the
cluster, or a Role's namespace) -- was used, except those in UNREACHABLE_KVSCHED (one, never a request of its
own) and UNREACHABLE_SCHEDULER (what the built-in roles grant for features no scenario here touches: volumes, DRA,
preemption, ...; each with its reason). A request uses the narrowest grant
that allows it (a Role in its namespace before the ClusterRole, a rule naming the object before one that does
not), so a cluster-wide grant that a namespaced one makes redundant shows up as unused. The grants come from
`helm template` of the chart with the values installed, and the built-in roles it binds from the apiserver.
"""
from __future__ import annotations

import json
import os
import ssl
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterable, Iterator
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
    MAKE_BEFORE_BREAK_ANNOTATION,
    MODEL_LABEL,
    PDB_ANNOTATION,
    PDB_PREFIX,
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
from .harness.tools import unavailable

pytestmark = pytest.mark.e2e

CLUSTER = "cluster"
Key = tuple[str, str, str, str, tuple[str, ...]]  # Grant.key: (apiGroup, resource, subresource, verb, names)


@dataclass(frozen=True, order=True)
class Grant:
    """One (apiGroup, resource, subresource, verb) a role grants, where (CLUSTER or a namespace) and for which
    object names (empty: all)."""

    scope: str
    group: str
    resource: str
    subresource: str
    verb: str
    names: tuple[str, ...] = ()

    @property
    def key(self) -> Key:
        """The grant without its scope: how UNREACHABLE names it."""
        return (self.group, self.resource, self.subresource, self.verb, self.names)

    def allows(self, r: audit.Request) -> bool:
        return ((self.group, self.resource, self.subresource, self.verb) == r.rule
                and self.scope in (CLUSTER, r.namespace) and (not self.names or r.name in self.names))

    def __str__(self) -> str:
        sub = f"/{self.subresource}" if self.subresource else ""
        names = f" [{','.join(self.names)}]" if self.names else ""
        return f"{self.verb} {self.group or 'core'}/{self.resource}{sub}{names} @ {self.scope}"


# Grants of the chart to kvsched that no request can show, each with the reason. Keep it short and true: the tests
# below fail when one of them is no longer granted or shows up in the log after all.
UNREACHABLE_KVSCHED: dict[Key, str] = {
    ("apps", "deployments", "finalizers", "update", ()):
        "never a request of its own: the OwnerReferencesPermissionEnforcement admission plugin (on in the e2e "
        "apiserver) checks it when the controller creates a ModelServing whose ownerReference sets "
        "blockOwnerDeletion; without the grant that create is a 403, which the no-denial test catches",
}


def each(reason: str, group: str, resources: Iterable[str], verbs: Iterable[str],
         names: tuple[str, ...] = ()) -> dict[Key, str]:
    """UNREACHABLE entries for every resource ("resource" or "resource/subresource") and verb, with one reason."""
    out: dict[Key, str] = {}
    for resource in resources:
        base, _, sub = resource.partition("/")
        out.update(((group, base, sub, verb, names), reason) for verb in verbs)
    return out


# The chart's kube-scheduler has the built-in roles, bound rather than copied (they follow the cluster's version),
# and they cover kube-scheduler's every feature. What one scenario with KWOK nodes and no volumes leaves unused,
# by reason. Unlike kvsched's list, these may be used in another run (the test only requires that what is unused
# is here, and that all of it is granted).
INFORMED = ["namespaces", "nodes", "persistentvolumeclaims", "persistentvolumes", "pods", "replicationcontrollers",
            "services"]
UNREACHABLE_SCHEDULER: dict[Key, str] = {
    **each("its informers start with a streaming watch (sendInitialEvents: client-go's watch-list), not a list; "
           "get reads an object missing from a cache (volume binding, DRA)", "", INFORMED, ["get", "list"]),
    **each("as above", "apps", ["replicasets", "statefulsets"], ["get", "list"]),
    **each("as above", "policy", ["poddisruptionbudgets"], ["get", "list"]),
    **each("as above", "storage.k8s.io", ["csidrivers", "csinodes", "csistoragecapacities", "storageclasses",
                                          "volumeattachments"], ["get", "list"]),
    **each("as above", "resource.k8s.io", ["deviceclasses", "resourceclaims", "resourceslices"], ["get", "list"]),
    **each("as above (delegated authentication reads the client CA from it)", "", ["configmaps"], ["list"],
           ("extension-apiserver-authentication",)),
    **each("volume binding: no pod of the scenario has a PersistentVolumeClaim", "",
           ["persistentvolumeclaims", "persistentvolumes"], ["patch", "update"]),
    **each("dynamic resource allocation: no pod of the scenario has a ResourceClaim", "resource.k8s.io",
           ["resourceclaims"], ["create", "delete", "patch", "update"]),
    **each("as above", "resource.k8s.io", ["resourceclaims/binding"], ["patch", "update"]),
    **each("as above", "resource.k8s.io", ["resourceclaims/status"], ["get", "list", "watch", "patch", "update"]),
    **each("the extender binds (the profile's bindVerb): this kube-scheduler never posts a Binding itself", "",
           ["bindings", "pods/binding"], ["create"]),
    **each("preemption: nothing in the scenario has a lower priority than a pending pod that would fit", "",
           ["pods"], ["delete"]),
    **each("this kube-scheduler patches pod status (conditions, nominated node) and never updates it; the "
           "finalizers grant is for DRA", "", ["pods/status", "pods/finalizers"], ["update"]),
    **each("pod status is patched only when a pod is found unschedulable (PodScheduled=False) or nominated; "
           "whether a scenario's pod meets a full GPU first depends on timing", "", ["pods/status"], ["patch"]),
    **each("events go through events.k8s.io (created, then a series patched); core events only as a fallback",
           "", ["events"], ["patch", "update"]),
    **each("as above: never updated; a series is patched only when an event repeats within the scenario",
           "events.k8s.io", ["events"], ["update", "patch"]),
    **each("coordinated leader election (the CoordinatedLeaderElection feature gate, off by default)",
           "coordination.k8s.io", ["leasecandidates"],
           ["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"]),
    **each("the Lease named kube-scheduler is the cluster's default scheduler's; this one's is "
           "<schedulerName>-scheduler (the chart's own Role)", "coordination.k8s.io", ["leases"],
           ["get", "list", "update", "watch"], ("kube-scheduler",)),
    **each("a group the apiserver no longer serves (Kubernetes 1.16 removed it)", "extensions", ["replicasets"],
           ["get", "list", "watch"]),
}


def rules_of(role: dict[str, Any], scope: str) -> set[Grant]:
    """The grants of a Role's or ClusterRole's rules (as a dict) applied at `scope`."""
    out: set[Grant] = set()
    for rule in role.get("rules") or []:
        assert not rule.get("nonResourceURLs"), f"{role['metadata']['name']}: a nonResourceURLs rule: {rule}"
        assert "*" not in rule["verbs"] + rule["resources"] + rule["apiGroups"], rule
        names = tuple(sorted(rule.get("resourceNames") or ()))
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                base, _, sub = resource.partition("/")
                out.update(Grant(scope, group, base, sub, verb, names) for verb in rule["verbs"])
    return out


def built_in_role(rbac: client.RbacAuthorizationV1Api, kind: str, namespace: str, name: str) -> dict[str, Any]:
    """A role the chart binds but does not render (system:kube-scheduler, ...), as the apiserver has it."""
    role = rbac.read_cluster_role(name) if kind == "ClusterRole" else rbac.read_namespaced_role(name, namespace)
    out: dict[str, Any] = client.ApiClient().sanitize_for_serialization(role)
    return out


def granted_to(docs: list[dict[str, Any]], namespace: str, account: str,
               rbac: client.RbacAuthorizationV1Api) -> frozenset[Grant]:
    """Every grant the chart's bindings give ServiceAccount `namespace/account`: its rendered roles, and the
    built-in ones (read from the apiserver)."""
    rendered = {(d["kind"], d["metadata"].get("namespace", ""), d["metadata"]["name"]): d for d in docs
                if d["kind"] in ("ClusterRole", "Role")}
    out: set[Grant] = set()
    for binding in docs:
        if binding["kind"] not in ("ClusterRoleBinding", "RoleBinding"):
            continue
        if {"kind": "ServiceAccount", "name": account, "namespace": namespace} not in binding["subjects"]:
            continue
        where = binding["metadata"].get("namespace", "")
        ref = binding["roleRef"]
        role_ns = where if ref["kind"] == "Role" else ""
        role = rendered.get((ref["kind"], role_ns, ref["name"])) or built_in_role(rbac, ref["kind"], role_ns,
                                                                                   ref["name"])
        out |= rules_of(role, where or CLUSTER)
    return frozenset(out)


def narrowest(grants: Iterable[Grant], request: audit.Request) -> Grant | None:
    """The grant that allows `request` and applies most narrowly (a namespace before the cluster, named objects
    before all); None when none does."""
    allowing = [g for g in grants if g.allows(request)]
    return min(allowing, key=lambda g: (g.scope == CLUSTER, not g.names, g), default=None)


@dataclass(frozen=True)
class Account:
    """One ServiceAccount of the chart: what the chart grants it and what it did."""

    user: str
    granted: frozenset[Grant]
    requests: tuple[audit.Request, ...]  # for API objects (discovery and health URLs left out)

    @property
    def used(self) -> set[Grant]:
        """The narrowest grant behind each request the authorizer allowed (a 404 or 409 still used it)."""
        return {g for r in self.requests if r.decision == "allow" if (g := narrowest(self.granted, r)) is not None}

    @property
    def beyond(self) -> list[str]:
        """Allowed requests that no grant of the chart covers (another binding in the cluster allowed them)."""
        return sorted({str(r) for r in self.requests if r.decision == "allow"
                       and narrowest(self.granted, r) is None})


@dataclass(frozen=True)
class Audited:
    """What one scenario left: the chart's two ServiceAccounts, what went wrong, and the plane."""

    watch_namespace: str  # "" for every namespace
    kvsched: Account
    scheduler: Account
    plane: ControlPlane
    scenario_error: str  # "" when every step of the scenario went through


def describe(grants: Iterable[Grant]) -> list[str]:
    return [str(g) for g in sorted(grants)]


def bind_again(extender_url: str, pod: client.V1Pod) -> dict[str, Any]:
    """POST /bind for a pod that is already bound, as kube-scheduler does when its first bind timed out."""
    body = json.dumps({"PodName": pod.metadata.name, "PodNamespace": pod.metadata.namespace,
                       "PodUID": pod.metadata.uid, "Node": pod.spec.node_name}).encode()
    request = urllib.request.Request(f"{extender_url}/bind", data=body,
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as response:
        answer: dict[str, Any] = json.loads(response.read())
    return answer


def kvsched_token(kubeconfig: Path) -> str:
    """The bearer token of a kubeconfig the harness wrote (one user)."""
    [user] = yaml.safe_load(kubeconfig.read_text())["users"]
    return str(user["user"]["token"])


def scrape_status(url: str, token: str) -> int:
    """The HTTP status of GET `url` with a bearer token (the scheduler's serving certificate is self-signed)."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})
    try:
        with urllib.request.urlopen(request, timeout=10, context=context) as response:
            return int(response.status)
    except urllib.error.HTTPError as e:
        return int(e.code)


def serving(custom: client.CustomObjectsApi, namespace: str, name: str) -> dict[str, Any]:
    obj: dict[str, Any] = custom.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)
    return obj


def live_pods(core: client.CoreV1Api, namespace: str, model: str) -> list[client.V1Pod]:
    return [p for p in core.list_namespaced_pod(namespace, label_selector=f"{MODEL_LABEL}={model}").items
            if not p.metadata.deletion_timestamp]


def run_scenario(plane: ControlPlane, kube: client.ApiClient, chart: InstalledChart, workload_ns: str,
                 pool: str, workdir: Path) -> None:
    """Start kvsched and its kube-scheduler as the chart runs them (each with its own ServiceAccount's token),
    walk every API path, stop them."""
    core, apps = client.CoreV1Api(kube), client.AppsV1Api(kube)
    nodes = [f"{pool}-a", f"{pool}-b", f"{pool}-small"]
    custom = client.CustomObjectsApi(kube)
    kubeconfig = chart.service_account_kubeconfig(workdir / "sa.kubeconfig")
    args = chart.kvsched_args()
    assert args[0] == "serve"
    metrics_port = next(int(a.split("=", 1)[1]) for a in args if a.startswith("--metrics-port="))
    extender_port = next(int(a.split("=", 1)[1]) for a in args if a.startswith("--port="))
    kvsched = Component("kvsched-audited", [str(kvsched_executable()), *args], workdir / "kvsched.log",
                        env={"KUBECONFIG": str(kubeconfig)})
    scheduler_kubeconfig = chart.scheduler_kubeconfig(workdir / "scheduler.kubeconfig")
    config = chart.local_scheduler_config(scheduler_kubeconfig)
    assert config["extenders"][0]["urlPrefix"] == f"http://127.0.0.1:{extender_port}"
    (workdir / "scheduler.yaml").write_text(yaml.safe_dump(config))
    scheduler_port = free_port()
    scheduler = Component("kvsched-audited-scheduler", [
        str(plane.tools.kube_scheduler), f"--config={workdir / 'scheduler.yaml'}",
        f"--authentication-kubeconfig={scheduler_kubeconfig}", f"--authorization-kubeconfig={scheduler_kubeconfig}",
        "--bind-address=127.0.0.1", f"--secure-port={scheduler_port}", "--v=2",
    ], workdir / "kvsched-scheduler.log")
    for component in (kvsched, scheduler):
        plane.components.append(component)  # log tails on failure, stopped with the plane at the latest
    try:
        kvsched.start().wait_ready(lambda: http_ok(f"http://127.0.0.1:{metrics_port}/readyz"), 60.0,
                                   "ready (/readyz)")
        scheduler.start().wait_ready(lambda: http_ok(f"https://127.0.0.1:{scheduler_port}/readyz"), 60.0)

        # A model placed: ModelServing created and its status written, template patched, pod annotated and bound.
        create_gpu_nodes(core, [gpu_node_manifest(n, gpus=1, gpu_memory_mib=81920, labels={"e2e-pool": pool})
                                for n in nodes[:2]])
        apps.create_namespaced_deployment(workload_ns, deployment_manifest(
            "alpha", replicas=1, scheduler_name=DEFAULT_SCHEDULER_NAME,
            # Evict-first moves: the cordon below then goes through the Eviction API (a make-before-break move would
            # surge the Deployment instead: deployments patch and pods patch, which the scenario uses anyway).
            annotations={SIZE_ANNOTATION: "16Gi", RATE_ANNOTATION: "4", SLO_ANNOTATION: "1",
                         MAKE_BEFORE_BREAK_ANNOTATION: "false"}))
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

        # The model's PodDisruptionBudget (modelPodDisruptionBudget.enabled): created; edited by someone, patched
        # back; opted out by the Deployment's annotation, deleted.
        policy = client.PolicyV1Api(kube)
        pdb = f"{PDB_PREFIX}alpha"

        def read_pdb() -> Any:
            try:
                return policy.read_namespaced_pod_disruption_budget(pdb, workload_ns)
            except ApiException as e:
                if e.status == 404:
                    return None
                raise

        wait_for(read_pdb, lambda p: p is not None and p.spec.max_unavailable == 1, 30, f"PDB {pdb} created")
        policy.patch_namespaced_pod_disruption_budget(pdb, workload_ns, {"spec": {"maxUnavailable": 3}})
        wait_for(read_pdb, lambda p: p is not None and p.spec.max_unavailable == 1, 30, f"PDB {pdb} patched back")
        apps.patch_namespaced_deployment("alpha", workload_ns,
                                         {"metadata": {"annotations": {PDB_ANNOTATION: "false"}}})
        wait_for(read_pdb, lambda p: p is None, 30, f"PDB {pdb} deleted")

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

        # A GPU node with less memory than the reserve is left out of the pool, with a Warning event about it (in
        # `default`, where events about cluster-scoped objects go).
        create_gpu_nodes(core, [gpu_node_manifest(nodes[2], gpus=1, gpu_memory_mib=512, labels={"e2e-pool": pool})])
        wait_for(lambda: core.list_namespaced_event("default", field_selector=f"involvedObject.name={nodes[2]}").items,
                 lambda events: any(e.reason == "GPUMemoryBelowReserve" for e in events), 60,
                 f"a GPUMemoryBelowReserve event about node {nodes[2]}")

        # The scheduler's /metrics with a token: it asks the apiserver who that is (a TokenReview) and whether they
        # may (a SubjectAccessReview; kvsched's ServiceAccount may not, so the answer is 403).
        assert scrape_status(f"https://127.0.0.1:{scheduler_port}/metrics", kvsched_token(kubeconfig)) == 403

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
        delete_nodes(core, nodes)


def account(docs: list[dict[str, Any]], namespace: str, name: str, log: Path,
            rbac: client.RbacAuthorizationV1Api) -> Account:
    user = f"system:serviceaccount:{namespace}:{name}"
    mine = tuple(r for r in audit.requests(log) if r.username == user and r.resource)
    return Account(user, granted_to(docs, namespace, name, rbac), mine)


@pytest.fixture(scope="module", params=["all namespaces", "one namespace"])
def audited(request: pytest.FixtureRequest, control_plane: ControlPlane, kube: client.ApiClient,
            project_crds: list[str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Audited]:
    helm = control_plane.tools.helm
    if not os.access(helm, os.X_OK):
        reason = f"helm is not built: {helm} is missing (run `make e2e-tools`)"
        unavailable(reason)
    assert "modelservings.kvsched.io" in project_crds
    core = client.CoreV1Api(kube)
    workdir = tmp_path_factory.mktemp("rbac-audit")
    suffix = uuid.uuid4().hex[:6]
    workload_ns, pool = f"e2e-audit-{suffix}", f"audit-{suffix}"
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=workload_ns)))
    wait_for(lambda: core.read_namespaced_service_account("default", workload_ns), lambda sa: True, 60.0,
             f"ServiceAccount {workload_ns}/default")
    watch = workload_ns if request.param == "one namespace" else ""
    values = {
        # kvsched and its scheduler run here; nothing may run the chart's own pod (KWOK would pretend it runs).
        "nodeSelector": {"kvsched.io/e2e": "nowhere"},
        "watchNamespace": watch, "gpuNodeSelector": f"e2e-pool={pool}",
        "metricsPort": free_port(), "extenderPort": free_port(), "timeBudgetSeconds": 1,
        "extraArgs": ["--metrics-host=127.0.0.1"],
        # PriorityClasses are cluster-wide: each release of this module creates its own.
        "gpuHolders": {"priorityClass": {"name": f"kvsched-gpu-holder-{suffix}"}},
        # Per-model PodDisruptionBudgets on, so that the scenario uses the grants for them.
        "modelPodDisruptionBudget": {"enabled": True},
    }
    chart = install_chart(control_plane, kube, helm, workdir, f"kvsched-{suffix}", f"kvsched-{suffix}", values)
    try:
        chart.scale_in_cluster_pod_to_zero()
        rendered = documents(Helm(helm, control_plane.tools.k8s_version).template(
            values, release=chart.release, namespace=chart.namespace))
        try:
            run_scenario(control_plane, kube, chart, workload_ns, pool, workdir)
            error = ""
        except Exception as e:  # e.g. a step timed out because a request was denied: the log says which
            error = f"{type(e).__name__}: {e}"
        assert control_plane.creds is not None
        audit.fence(control_plane.server, control_plane.creds.admin_token, control_plane.creds.ca_cert,
                    control_plane.audit_log)
        rbac = client.RbacAuthorizationV1Api(kube)
        log = control_plane.audit_log
        yield Audited(watch, account(rendered, chart.namespace, chart.service_account(), log, rbac),
                      account(rendered, chart.namespace, chart.scheduler_service_account(), log, rbac),
                      control_plane, error)
    finally:
        uninstall_chart(chart, helm, workdir)
        core.delete_namespace(workload_ns)


def table(account: Account, unreachable: dict[Key, str]) -> str:
    """Granted vs used, one line per grant (for the log of a run: `pytest -s`)."""
    used = account.used
    lines = [f"{account.user}: {len(account.granted)} granted, {len(used)} used, {len(account.requests)} requests"]
    for g in sorted(account.granted):
        mark = "used" if g in used else ("UNREACHABLE" if g.key in unreachable else "UNUSED")
        lines.append(f"  {mark:<11} {g}")
    return "\n".join(lines)


def accounts(audited: Audited) -> list[tuple[Account, dict[Key, str]]]:
    return [(audited.kvsched, UNREACHABLE_KVSCHED), (audited.scheduler, UNREACHABLE_SCHEDULER)]


def test_kvsched_and_its_scheduler_run_as_two_service_accounts(audited: Audited) -> None:
    assert audited.kvsched.user != audited.scheduler.user
    assert audited.kvsched.requests, "no request of kvsched in the audit log: the scenario did not run"
    assert audited.scheduler.requests, "no request of the chart's kube-scheduler in the audit log"
    assert {r.user_agent.split("/")[0] for r in audited.scheduler.requests} == {"kube-scheduler"}
    assert not any(r.user_agent.startswith("kube-scheduler/") for r in audited.kvsched.requests)


def test_no_request_of_either_service_account_was_denied(audited: Audited) -> None:
    denied = sorted({str(r) for a, _ in accounts(audited) for r in a.requests if r.denied})
    assert not denied, "denied:\n" + "\n".join(denied)
    assert audited.scenario_error == ""


@pytest.mark.parametrize("which", ["kvsched", "scheduler"])
def test_each_service_account_uses_every_grant_of_the_chart(audited: Audited, which: str) -> None:
    assert audited.scenario_error == "", "the scenario stopped early, so not every path ran"
    account, unreachable = accounts(audited)[0 if which == "kvsched" else 1]
    print(table(account, unreachable))
    unused = {g for g in account.granted - account.used if g.key not in unreachable}
    assert not unused, (f"granted to {account.user} but never used: {describe(unused)}; drop them from "
                        "helm/kvsched/templates/, or list them in UNREACHABLE with the reason")


@pytest.mark.parametrize("which", ["kvsched", "scheduler"])
def test_each_service_account_uses_nothing_the_chart_does_not_grant_it(audited: Audited, which: str) -> None:
    # Not implied by "nothing denied": another binding in the cluster (system:serviceaccounts groups, ...) may
    # allow what the chart's own roles do not say.
    account = audited.kvsched if which == "kvsched" else audited.scheduler
    assert not account.beyond, f"{account.user} did these without a grant of the chart: {account.beyond}"


def test_unreachable_grants_are_granted_and_kvscheds_really_unused(audited: Audited) -> None:
    for account, unreachable in accounts(audited):
        granted = {g.key for g in account.granted}
        assert set(unreachable) <= granted, f"UNREACHABLE lists a grant {account.user} does not have: " \
            f"{sorted(set(unreachable) - granted)}"
    assert sorted({g.key for g in audited.kvsched.used} & set(UNREACHABLE_KVSCHED)) == [], \
        "used by kvsched after all: remove it from UNREACHABLE_KVSCHED"
    # The owner-reference check behind the finalizers grant did run: the apiserver enforces it and the
    # controller's create of an owned ModelServing went through.
    [apiserver] = [c for c in audited.plane.components if c.name == "kube-apiserver"]
    assert any("OwnerReferencesPermissionEnforcement" in a for a in apiserver.argv)
    assert any(r.rule == (GROUP, PLURAL, "", "create") and r.code == 201 for r in audited.kvsched.requests)


def test_where_kvsched_writes_follows_the_watched_namespace(audited: Audited) -> None:
    """With watchNamespace set, kvsched's writes went only to the watched namespace, the release namespace (GPU
    holders, its Lease) and `default` (events about Nodes), each through a Role; with every namespace watched,
    those to the workloads' namespace went through its ClusterRole."""
    writes = [r for r in audited.kvsched.requests if r.verb not in ("get", "list", "watch")]
    assert writes
    scopes = {g.scope for r in writes if (g := narrowest(audited.kvsched.granted, r)) is not None}
    if audited.watch_namespace:
        cluster_wide = [str(r) for r in writes if (g := narrowest(audited.kvsched.granted, r)) is not None
                        and g.scope == CLUSTER]
        assert cluster_wide == []
        assert audited.watch_namespace in scopes and "default" in scopes
    else:
        assert CLUSTER in scopes
