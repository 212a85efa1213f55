"""The chart's two identities and where their grants apply (templates/serviceaccount.yaml, rbac.yaml,
gpu-holders.yaml, deployment.yaml): kvsched and its kube-scheduler each have a ServiceAccount and mount only its
token; with `watchNamespace` set nothing kvsched writes is granted cluster-wide. Which verbs each uses is read from
the apiserver's audit log in tests/e2e/test_rbac_audit.py; here, what the rendering says."""
from __future__ import annotations

from typing import Any

import pytest

from hack.chart import Helm, documents

RELEASE_NS = "kvsched-system"
TOKEN_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"
READ_VERBS = {"get", "list", "watch"}

Grant = tuple[str, str, str, str]  # (scope: "cluster" or a namespace, apiGroup, resource, verb)


def render(helm: Helm, values: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    return documents(helm.template(values, namespace=RELEASE_NS))


def pod_spec(docs: list[dict[str, Any]]) -> dict[str, Any]:
    [deployment] = [d for d in docs if d["kind"] == "Deployment"]
    return deployment["spec"]["template"]["spec"]  # type: ignore[no-any-return]


def scheduler_account(docs: list[dict[str, Any]]) -> str:
    """The ServiceAccount whose token the kube-scheduler container mounts (its Secret's annotation)."""
    spec = pod_spec(docs)
    [container] = [c for c in spec["containers"] if c["name"] == "kube-scheduler"]
    [mount] = [m for m in container["volumeMounts"] if m["mountPath"] == TOKEN_DIR]
    [volume] = [v for v in spec["volumes"] if v["name"] == mount["name"]]
    [secret] = [d for d in docs if d["kind"] == "Secret" and d["metadata"]["name"] == volume["secret"]["secretName"]]
    assert secret["type"] == "kubernetes.io/service-account-token"
    return str(secret["metadata"]["annotations"]["kubernetes.io/service-account.name"])


def grants(docs: list[dict[str, Any]], account: str) -> set[Grant]:
    """What the chart's bindings grant ServiceAccount `RELEASE_NS/account`, rule by rule, with where it applies.
    Built-in roles the chart binds but does not render show as (scope, "builtin", role name, "")."""
    roles: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    for d in docs:
        if d["kind"] in ("ClusterRole", "Role"):
            roles[(d["kind"], d["metadata"].get("namespace", ""), d["metadata"]["name"])] = d["rules"]
    out: set[Grant] = set()
    for b in docs:
        if b["kind"] not in ("ClusterRoleBinding", "RoleBinding"):
            continue
        if {"kind": "ServiceAccount", "name": account, "namespace": RELEASE_NS} not in b["subjects"]:
            continue
        namespace = b["metadata"].get("namespace", "")
        scope = namespace or "cluster"
        ref = b["roleRef"]
        key = (ref["kind"], namespace if ref["kind"] == "Role" else "", ref["name"])
        if key not in roles:
            out.add((scope, "builtin", ref["name"], ""))
            continue
        for rule in roles[key]:
            out.update((scope, g, r, v) for g in rule["apiGroups"] for r in rule["resources"] for v in rule["verbs"])
    return out


@pytest.mark.parametrize("values", [None, {"watchNamespace": "llm", "schedulerName": "llm-scheduler"}],
                         ids=["all namespaces", "one namespace"])
def test_kvsched_and_its_scheduler_have_their_own_accounts_and_tokens(helm: Helm,
                                                                      values: dict[str, Any] | None) -> None:
    docs = render(helm, values)
    spec = pod_spec(docs)
    kvsched = spec["serviceAccountName"]
    scheduler = scheduler_account(docs)
    assert scheduler != kvsched
    assert {kvsched, scheduler} <= {d["metadata"]["name"] for d in docs if d["kind"] == "ServiceAccount"}
    # No token is mounted behind the containers' backs; each mounts its own where in-cluster clients read it.
    assert spec["automountServiceAccountToken"] is False
    mounts = {c["name"]: [m for m in c.get("volumeMounts", []) if m["mountPath"] == TOKEN_DIR]
              for c in spec["containers"]}
    assert all(len(m) == 1 and m[0]["readOnly"] for m in mounts.values()), mounts
    volumes = {v["name"]: v for v in spec["volumes"]}
    projected = volumes[mounts["kvsched"][0]["name"]]["projected"]["sources"]
    # The pod's own (kvsched's) bound token, the CA and the namespace: the files of the automount.
    assert [s["serviceAccountToken"]["path"] for s in projected if "serviceAccountToken" in s] == ["token"]
    assert {i["path"] for s in projected for k in ("configMap", "downwardAPI") if k in s for i in s[k]["items"]} \
        == {"ca.crt", "namespace"}
    secret = volumes[mounts["kube-scheduler"][0]["name"]]["secret"]
    assert {i["path"] for i in secret["items"]} == {"token", "ca.crt", "namespace"}
    # Nothing of the scheduler's is granted to kvsched and the reverse.
    kvsched_grants, scheduler_grants = grants(docs, kvsched), grants(docs, scheduler)
    assert {g for g in kvsched_grants if g[1] == "builtin"} == set()
    assert {(s, r) for s, g, r, v in scheduler_grants if g == "builtin"} == {
        ("cluster", "system:kube-scheduler"), ("cluster", "system:volume-scheduler"),
        ("kube-system", "extension-apiserver-authentication-reader")}
    # The scheduler's only own rule: its Lease (the built-in role covers only the one named kube-scheduler).
    [lease_role] = [d for d in docs if d["kind"] == "Role" and any(
        b["kind"] == "RoleBinding" and b["roleRef"]["name"] == d["metadata"]["name"]
        and b["subjects"][0]["name"] == scheduler for b in docs)]
    lease_name = f"{(values or {}).get('schedulerName', 'kvsched')}-scheduler"
    assert lease_role["rules"] == [{"apiGroups": ["coordination.k8s.io"], "resources": ["leases"],
                                    "resourceNames": [lease_name], "verbs": ["get", "update"]}]


# Where each write of kvsched is granted when it watches one namespace W: (apiGroup, resource, verb) -> scopes.
WRITES_IN = {
    ("kvsched.io", "modelservings", "create"): {"W"}, ("kvsched.io", "modelservings", "patch"): {"W"},
    ("kvsched.io", "modelservings", "delete"): {"W"}, ("kvsched.io", "modelservings/status", "patch"): {"W"},
    ("apps", "deployments", "patch"): {"W"}, ("apps", "deployments/finalizers", "update"): {"W"},
    ("", "pods", "patch"): {"W"}, ("", "pods/eviction", "create"): {"W"},
    ("", "bindings", "create"): {"W", "R"},  # the GPU holders' Bindings, in the release namespace
    ("", "pods", "create"): {"R"}, ("", "pods", "delete"): {"R"},  # GPU holder pods
    ("", "events", "create"): {"W", "default"},  # events about Nodes go to `default`
    ("coordination.k8s.io", "leases", "create"): {"R"}, ("coordination.k8s.io", "leases", "update"): {"R"},
    # kvsched's per-model PodDisruptionBudgets (kvsched.controller.pdb), in the models' namespace
    ("policy", "poddisruptionbudgets", "create"): {"W"}, ("policy", "poddisruptionbudgets", "patch"): {"W"},
    ("policy", "poddisruptionbudgets", "delete"): {"W"},
}


@pytest.mark.parametrize("watch", ["llm", RELEASE_NS, "default"])
def test_with_a_watched_namespace_nothing_kvsched_writes_is_granted_cluster_wide(helm: Helm, watch: str) -> None:
    all_namespaces = grants(render(helm), "kvsched")
    docs = render(helm, {"watchNamespace": watch})
    scoped = grants(docs, pod_spec(docs)["serviceAccountName"])
    cluster_wide = {(g, r, v) for s, g, r, v in scoped if s == "cluster"}
    assert {v for g, r, v in cluster_wide} <= READ_VERBS, sorted(cluster_wide)
    # Only reads the extender needs in every namespace stay cluster-wide (nodes are cluster-scoped).
    assert cluster_wide == {("", "nodes", "list"), ("", "nodes", "watch"), ("", "pods", "get"), ("", "pods", "list"),
                            ("", "pods", "watch"), ("kvsched.io", "modelservings", "list"),
                            ("kvsched.io", "modelservings", "watch")}
    writes: dict[tuple[str, str, str], set[str]] = {}
    for s, g, r, v in scoped:
        if v not in READ_VERBS:
            writes.setdefault((g, r, v), set()).add(s)
    names = {"W": watch, "R": RELEASE_NS, "default": "default"}
    assert writes == {k: {names[s] for s in v} for k, v in WRITES_IN.items()}
    # The same rules as with every namespace watched, only scoped: nothing dropped, nothing added.
    assert {(g, r, v) for s, g, r, v in scoped} == {(g, r, v) for s, g, r, v in all_namespaces}
    # The informers of the watched namespace may read its Deployments.
    assert {(watch, "apps", "deployments", "list"), (watch, "apps", "deployments", "watch")} <= scoped
    assert {(watch, "policy", "poddisruptionbudgets", "list"), (watch, "policy", "poddisruptionbudgets", "watch")} \
        <= scoped


def test_with_every_namespace_watched_kvsched_writes_through_its_cluster_role(helm: Helm) -> None:
    scoped = grants(render(helm), "kvsched")
    namespaced = {(s, g, r, v) for s, g, r, v in scoped if s != "cluster"}
    # Besides the ClusterRole: only its Lease and the GPU holder pods, in the release namespace.
    assert namespaced == {(RELEASE_NS, "coordination.k8s.io", "leases", v) for v in ("get", "create", "update")} \
        | {(RELEASE_NS, "", "pods", v) for v in ("create", "delete")}
