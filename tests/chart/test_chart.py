"""The Helm chart (helm/kvsched): lint, rendering with default and other values, the values schema, the objects
it renders (security, scheduler configuration, RBAC), and deploy/ being its default rendering. The names the chart
shares with the code: test_names.py; the RBAC verbs against what kvsched does: tests/e2e/test_rbac_audit.py."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from hack.chart import CHART_DIR, Helm, RenderFailed, documents, stale_manifests
from kvsched.k8s.watch import DEPLOYMENTS, MODELSERVINGS, NODES, PDBS, PODS, Resource

NON_DEFAULT_VALUES: dict[str, Any] = {
    "replicas": 3,
    "schedulerName": "llm-scheduler",
    "gpuNodeSelector": "pool=llm,gpu!=reserved",
    "stabilityThreshold": 0.1,
    "maxMigrations": 0,
    "maxRestarting": 8,
    "maxRestartingPerNode": 2,
    "makeBeforeBreak": False,
    "modelPodDisruptionBudget": {"enabled": True, "maxUnavailable": 2},
    "metricsPort": 9100,
    "extenderPort": 9999,
    "leaderElection": {"namespace": "kube-system"},
    "extender": {"httpTimeout": "30s", "ignorable": True},
    "scheduler": {"image": {"tag": "v1.35.0"}, "leaderElect": False},
    "serviceMonitor": {"enabled": True, "labels": {"release": "prom"}},
    "networkPolicy": {"enabled": True, "metricsFrom": [
        {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}]},
    "dashboard": {"enabled": True, "namespace": "monitoring"},
    "nodeSelector": {"node-role.kubernetes.io/control-plane": ""},
    "tolerations": [{"key": "node-role.kubernetes.io/control-plane", "effect": "NoSchedule"}],
    "image": {"repository": "registry.example/kvsched", "tag": "dev"},
    "timeBudgetSeconds": 2.5,
    "startTimeoutSeconds": 600,
    "nodeNotReadyGraceSeconds": 60,
    "watchNamespace": "llm",
    "logLevel": "warning",
    "runtimeClassName": "nvidia-cdi",
    "gpuMemoryReserve": "2Gi",
    "engineOverhead": 2.5,
    "engineContext": "256Mi",
    "extraArgs": ["--debounce-seconds=1"],
    "gpuHolders": {"enabled": False, "priorityClass": {"name": "llm-gpu-holder", "value": 5000},
                   "serviceAccountName": "llm-holder"},
}


def render(helm: Helm, values: dict[str, Any] | None = None, **kwargs: Any) -> list[dict[str, Any]]:
    return documents(helm.template(values, **kwargs))


def only(docs: list[dict[str, Any]], kind: str, name_part: str = "") -> dict[str, Any]:
    found = [d for d in docs if d["kind"] == kind and name_part in d["metadata"]["name"]]
    assert len(found) == 1, f"expected one {kind} named *{name_part}*, got {[d['metadata']['name'] for d in found]}"
    return found[0]


def kinds(docs: list[dict[str, Any]]) -> list[str]:
    return sorted(d["kind"] for d in docs)


def containers(docs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    pod = only(docs, "Deployment")["spec"]["template"]["spec"]
    return {c["name"]: c for c in pod["containers"]}


def scheduler_config(docs: list[dict[str, Any]]) -> dict[str, Any]:
    cm = only(docs, "ConfigMap", "scheduler-config")
    return yaml.safe_load(cm["data"]["scheduler-config.yaml"])  # type: ignore[no-any-return]


# -- lint and render ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("values", [None, NON_DEFAULT_VALUES], ids=["default values", "non-default values"])
def test_helm_lint_passes(helm: Helm, values: dict[str, Any] | None, tmp_path: Path) -> None:
    args = ["lint", "--strict", str(CHART_DIR), "--kube-version", helm.k8s_version]
    if values is not None:
        (tmp_path / "values.yaml").write_text(yaml.safe_dump(values))
        args += ["--values", str(tmp_path / "values.yaml")]
    done = helm.run(*args, check=False)
    assert done.returncode == 0, done.stdout + done.stderr


def test_default_rendering_has_the_base_objects_only(helm: Helm) -> None:
    docs = render(helm)
    assert kinds(docs) == sorted([
        # kvsched's and its kube-scheduler's ServiceAccounts, the Secret with the scheduler's token, their roles
        # (templates/serviceaccount.yaml, rbac.yaml; tests/chart/test_rbac.py).
        "ServiceAccount", "ServiceAccount", "Secret",
        "ClusterRole", "ClusterRoleBinding", "ClusterRoleBinding", "ClusterRoleBinding",
        "Role", "RoleBinding", "Role", "RoleBinding", "RoleBinding", "ConfigMap", "Deployment", "Service",
        # GPU holders (templates/gpu-holders.yaml): their PriorityClass, ServiceAccount and Role, and kvsched's Role
        # to create and delete them.
        "PriorityClass", "ServiceAccount", "Role", "RoleBinding", "Role", "RoleBinding",
        # templates/admission-policy.yaml: who may write kvsched's pod fields.
        "ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding",
    ])
    assert all(d["metadata"].get("namespace") in (None, "kvsched-system", "kube-system") for d in docs)


def test_non_default_rendering_adds_the_optional_objects(helm: Helm) -> None:
    docs = render(helm, NON_DEFAULT_VALUES)
    assert only(docs, "PodDisruptionBudget")["spec"]["minAvailable"] == 1
    monitor = only(docs, "ServiceMonitor")
    assert monitor["metadata"]["labels"]["release"] == "prom"
    policy = only(docs, "NetworkPolicy")
    pod_labels = only(docs, "Deployment")["spec"]["template"]["metadata"]["labels"]
    assert policy["spec"]["podSelector"]["matchLabels"].items() <= pod_labels.items()
    assert policy["spec"]["policyTypes"] == ["Ingress"]
    metrics_rule, scheduler_rule = policy["spec"]["ingress"]
    assert metrics_rule["ports"] == [{"port": "metrics", "protocol": "TCP"}]
    assert metrics_rule["from"] == NON_DEFAULT_VALUES["networkPolicy"]["metricsFrom"]
    assert scheduler_rule == {"ports": [{"port": "scheduler", "protocol": "TCP"}]}
    # Every port the policy names is a named port of the pod: nothing else gets in.
    named = {p["name"] for c in only(docs, "Deployment")["spec"]["template"]["spec"]["containers"]
             for p in c.get("ports", [])}
    assert {r["ports"][0]["port"] for r in policy["spec"]["ingress"]} <= named
    assert monitor["spec"]["endpoints"][0]["port"] == "metrics"
    dashboard = only(docs, "ConfigMap", "dashboard")
    assert dashboard["metadata"]["namespace"] == "monitoring"
    assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"
    shipped = json.loads((CHART_DIR / "dashboards" / "kvsched.json").read_text())
    assert json.loads(dashboard["data"]["kvsched.json"]) == shipped
    deployment = only(docs, "Deployment")
    assert deployment["spec"]["replicas"] == 3
    assert deployment["spec"]["template"]["spec"]["tolerations"] == NON_DEFAULT_VALUES["tolerations"]


@pytest.mark.parametrize("replicas, has_pdb", [(1, False), (2, True)], ids=["one replica", "two replicas"])
def test_pod_disruption_budget_only_with_several_replicas(helm: Helm, replicas: int, has_pdb: bool) -> None:
    docs = render(helm, {"replicas": replicas})
    assert ("PodDisruptionBudget" in kinds(docs)) is has_pdb


# -- the values schema -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("values, field", [
    pytest.param({"replicas": 0}, "replicas", id="zero replicas"),
    pytest.param({"replicas": "two"}, "replicas", id="replicas not a number"),
    pytest.param({"replica": 2}, "replica", id="misspelt key"),
    pytest.param({"schedulerName": "Kvsched_1"}, "schedulerName", id="scheduler name not DNS-1123"),
    pytest.param({"stabilityThreshold": -0.1}, "stabilityThreshold", id="negative stability threshold"),
    pytest.param({"maxMigrations": -1}, "maxMigrations", id="negative migration budget"),
    pytest.param({"maxRestarting": 0}, "maxRestarting", id="a disruption budget of none"),
    pytest.param({"timeBudgetSeconds": -1}, "timeBudgetSeconds", id="negative time budget"),
    pytest.param({"startTimeoutSeconds": -5}, "startTimeoutSeconds", id="negative start timeout"),
    pytest.param({"nodeNotReadyGraceSeconds": -1}, "nodeNotReadyGraceSeconds", id="negative NotReady grace"),
    pytest.param({"gpuMemoryReserve": -1}, "gpuMemoryReserve", id="negative GPU memory reserve"),
    pytest.param({"engineOverhead": "-2Gi"}, "engineOverhead", id="negative engine overhead quantity"),
    pytest.param({"engineContext": "lots"}, "engineContext", id="engine context not a quantity"),
    pytest.param({"logLevel": "verbose"}, "logLevel", id="unknown log level"),
    pytest.param({"metricsPort": 70000}, "metricsPort", id="port out of range"),
    pytest.param({"extender": {"httpTimeout": "10"}}, "httpTimeout", id="timeout without a unit"),
    pytest.param({"extender": {"ignorable": "yes"}}, "ignorable", id="ignorable not a boolean"),
    pytest.param({"gpuNodeSelector": 3}, "gpuNodeSelector", id="selector not a string"),
    pytest.param({"image": {"pullPolicy": "Sometimes"}}, "pullPolicy", id="unknown pull policy"),
    pytest.param({"securityContext": {"readOnlyRootFilesystem": False}}, "readOnlyRootFilesystem",
                 id="writable root filesystem"),
    pytest.param({"securityContext": {"allowPrivilegeEscalation": True}}, "allowPrivilegeEscalation",
                 id="privilege escalation"),
    pytest.param({"securityContext": {"capabilities": {"drop": ["ALL"], "add": ["NET_ADMIN"]}}}, "add",
                 id="added capability"),
    pytest.param({"podSecurityContext": {"runAsNonRoot": False}}, "runAsNonRoot", id="root allowed"),
    pytest.param({"admissionPolicy": {"enabled": "yes"}}, "enabled", id="admission policy switch not a boolean"),
    pytest.param({"modelPodDisruptionBudget": {"maxUnavailable": 0}}, "maxUnavailable",
                 id="a model budget that allows no eviction"),
    pytest.param({"modelPodDisruptionBudget": {"maxUnavailable": "25%"}}, "maxUnavailable",
                 id="a model budget as a percentage"),
    pytest.param({"modelPodDisruptionBudget": {"enabled": "true"}}, "enabled", id="model budget switch a string"),
    pytest.param({"modelPodDisruptionBudget": {"minAvailable": 1}}, "minAvailable", id="model budget: unknown key"),
])
def test_schema_rejects_bad_values(helm: Helm, values: dict[str, Any], field: str) -> None:
    with pytest.raises(RenderFailed) as failed:
        helm.template(values)
    message = str(failed.value)
    assert "schema" in message and field in message, message


# -- what the objects say ----------------------------------------------------------------------------------------
RESTRICTED = {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True, "runAsNonRoot": True,
              "capabilities": {"drop": ["ALL"]}, "seccompProfile": {"type": "RuntimeDefault"}}


@pytest.mark.parametrize("values", [None, NON_DEFAULT_VALUES], ids=["default values", "non-default values"])
def test_every_container_is_restricted(helm: Helm, values: dict[str, Any] | None) -> None:
    docs = render(helm, values)
    pod = only(docs, "Deployment")["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] != 0
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert set(containers(docs)) == {"kvsched", "kube-scheduler"}
    for name, container in containers(docs).items():
        assert {k: container["securityContext"].get(k) for k in RESTRICTED} == RESTRICTED, name
        assert container["livenessProbe"] and container["readinessProbe"], name
        assert container["resources"]["requests"], name


@pytest.mark.parametrize("values, port, timeout, ignorable, profile", [
    pytest.param(None, 8888, "10s", False, "kvsched", id="default values"),
    pytest.param(NON_DEFAULT_VALUES, 9999, "30s", True, "llm-scheduler", id="non-default values"),
])
def test_scheduler_config_calls_the_extender_on_localhost(helm: Helm, values: dict[str, Any] | None, port: int,
                                                          timeout: str, ignorable: bool, profile: str) -> None:
    docs = render(helm, values)
    config = scheduler_config(docs)
    assert config["apiVersion"] == "kubescheduler.config.k8s.io/v1"
    assert config["kind"] == "KubeSchedulerConfiguration"
    assert config["profiles"] == [{"schedulerName": profile}]
    [extender] = config["extenders"]
    assert extender == {
        "urlPrefix": f"http://127.0.0.1:{port}", "filterVerb": "filter", "prioritizeVerb": "prioritize",
        "bindVerb": "bind", "weight": 1, "enableHTTPS": False, "nodeCacheCapable": True,
        "httpTimeout": timeout, "ignorable": ignorable,
    }
    assert config["leaderElection"]["resourceName"] == f"{profile}-scheduler"
    args = containers(docs)["kvsched"]["args"]
    assert args[0] == "serve"
    assert f"--port={port}" in args and "--host=127.0.0.1" in args and f"--scheduler-name={profile}" in args
    scheduler = containers(docs)["kube-scheduler"]
    assert "--config=/etc/kvsched/scheduler-config.yaml" in scheduler["command"]


def test_scheduler_leader_election_follows_values(helm: Helm) -> None:
    assert scheduler_config(render(helm))["leaderElection"]["leaderElect"] is True
    assert scheduler_config(render(helm, NON_DEFAULT_VALUES))["leaderElection"]["leaderElect"] is False


@pytest.mark.parametrize("values, expected", [
    pytest.param(None, ["serve", "--scheduler-name=kvsched", "--runtime-class-name=nvidia",
                        "--stability-threshold=0.05", "--max-migrations=4", "--max-restarting=4",
                        "--max-restarting-per-node=1", "--make-before-break=true",
                        "--pod-disruption-budget=false", "--pod-disruption-budget-max-unavailable=1",
                        "--time-budget-seconds=5", "--start-timeout-seconds=300",
                        "--node-not-ready-grace-seconds=300", "--gpu-memory-reserve-gib=1Gi",
                        "--engine-overhead-gib=3Gi", "--engine-context-gib=512Mi", "--log-level=info", "--metrics-port=8080", "--host=127.0.0.1", "--port=8888", "--leader-election=true",
                        "--leader-election-namespace=kvsched-system", "--gpu-holders=true",
                        "--holder-namespace=kvsched-system", "--holder-image=kvsched/kvsched:0.1.0",
                        "--holder-priority-class=kvsched-gpu-holder", "--holder-service-account=kvsched-gpu-holder"],
                 id="default values"),
    pytest.param(NON_DEFAULT_VALUES, ["serve", "--scheduler-name=llm-scheduler",
                                      "--runtime-class-name=nvidia-cdi", "--stability-threshold=0.1",
                                      "--max-migrations=0", "--max-restarting=8",
                                      "--max-restarting-per-node=2", "--make-before-break=false",
                                      "--pod-disruption-budget=true", "--pod-disruption-budget-max-unavailable=2",
                                      "--time-budget-seconds=2.5",
                                      "--start-timeout-seconds=600", "--node-not-ready-grace-seconds=60",
                                      "--gpu-memory-reserve-gib=2Gi", "--engine-overhead-gib=2.5",
                                      "--engine-context-gib=256Mi",
                                      "--log-level=warning", "--namespace=llm",
                                      "--node-selector=pool=llm,gpu!=reserved",
                                      "--metrics-port=9100", "--host=127.0.0.1", "--port=9999",
                                      "--leader-election=true", "--leader-election-namespace=kube-system",
                                      "--gpu-holders=false", "--holder-namespace=kvsched-system",
                                      "--holder-image=registry.example/kvsched:dev",
                                      "--holder-priority-class=llm-gpu-holder", "--holder-service-account=llm-holder",
                                      "--debounce-seconds=1"],
                 id="non-default values"),
])
def test_kvsched_flags_follow_values(helm: Helm, values: dict[str, Any] | None, expected: list[str]) -> None:
    assert containers(render(helm, values))["kvsched"]["args"] == expected


@pytest.mark.parametrize("values, headroom", [
    pytest.param(None, (1.0, 3.0, 0.5), id="default values"),
    pytest.param(NON_DEFAULT_VALUES, (2.0, 2.5, 0.25), id="non-default values"),
])
def test_the_headroom_values_reach_the_controller_and_the_extender(helm: Helm, values: dict[str, Any] | None,
                                                                   headroom: tuple[float, float, float]) -> None:
    # The rendered args, parsed by `kvsched serve` itself: one value for both halves, in GiB.
    from kvsched.cli import build_parser
    from kvsched.settings import ControllerSettings, ExtenderSettings, settings_from

    args = build_parser().parse_args(containers(render(helm, values))["kvsched"]["args"])
    for cls in (ControllerSettings, ExtenderSettings):
        settings = settings_from(cls, args, environ={})
        assert (settings.gpu_memory_reserve_gib, settings.engine_overhead_gib,  # type: ignore[attr-defined]
                settings.engine_context_gib) == headroom  # type: ignore[attr-defined]


@pytest.mark.parametrize("kube_version, values, image", [
    pytest.param("v1.36.5", None, "registry.k8s.io/kube-scheduler:v1.36.5", id="cluster version"),
    pytest.param("v1.30.2-eks-1234", None, "registry.k8s.io/kube-scheduler:v1.30.2", id="vendor suffix dropped"),
    pytest.param("v1.36.5", {"scheduler": {"image": {"tag": "v1.35.0"}}}, "registry.k8s.io/kube-scheduler:v1.35.0",
                 id="tag from values"),
])
def test_scheduler_image_defaults_to_the_cluster_version(helm: Helm, kube_version: str,
                                                         values: dict[str, Any] | None, image: str) -> None:
    assert containers(render(helm, values, kube_version=kube_version))["kube-scheduler"]["image"] == image


# -- RBAC -------------------------------------------------------------------------------------------------------
# Which verbs kvsched uses is read from the apiserver's audit log while it runs (tests/e2e/test_rbac_audit.py: no
# request denied, no grant unused). Here: what the code states without running, and the shape of the rules.
def cluster_role_grants(docs: list[dict[str, Any]]) -> set[tuple[str, str, str]]:
    """(apiGroup, resource, verb) of every rule of the chart's ClusterRole."""
    role = only(docs, "ClusterRole")
    return {(g, r, v) for rule in role["rules"] for g in rule["apiGroups"] for r in rule["resources"]
            for v in rule["verbs"]}


@pytest.mark.parametrize("resource", [PODS, NODES, DEPLOYMENTS, MODELSERVINGS, PDBS], ids=lambda r: r.collection)
def test_cluster_role_lets_every_informer_list_and_watch(helm: Helm, resource: Resource) -> None:
    # The collections the informers of kvsched.runtime open (kvsched.k8s.watch, named from kvsched.api.names).
    grants = cluster_role_grants(render(helm))
    assert {(resource.group, resource.plural, "list"), (resource.group, resource.plural, "watch")} <= grants


@pytest.mark.parametrize("values", [None, {"modelPodDisruptionBudget": {"enabled": True}}],
                         ids=["option off", "option on"])
def test_kvsched_may_write_pod_disruption_budgets_either_way(helm: Helm, values: dict[str, Any] | None) -> None:
    # A Deployment's kvsched.io/pod-disruption-budget annotation asks for one with the option off, and turning the
    # option off deletes the ones made: the grant does not depend on the value. No get, update or deletecollection.
    granted = {v for g, r, v in cluster_role_grants(render(helm, values)) if (g, r) == ("policy", PDBS.plural)}
    assert granted == {"list", "watch", "create", "patch", "delete"}


def test_cluster_role_rules_are_plain(helm: Helm) -> None:
    for rule in only(render(helm), "ClusterRole")["rules"]:
        assert set(rule) == {"apiGroups", "resources", "verbs"}, rule  # no resourceNames, no nonResourceURLs
        assert "*" not in rule["verbs"] + rule["resources"] + rule["apiGroups"], rule


def test_gpu_holders_get_a_priority_class_an_account_and_kvsched_may_create_them(helm: Helm) -> None:
    """The names the controller writes on holder pods (kvsched.settings defaults, the chart's flags) exist."""
    from kvsched.api.names import DEFAULT_HOLDER_PRIORITY_CLASS, DEFAULT_HOLDER_SERVICE_ACCOUNT

    docs = render(helm)
    priority = only(docs, "PriorityClass")
    assert priority["metadata"]["name"] == DEFAULT_HOLDER_PRIORITY_CLASS and priority["value"] > 0
    assert priority["preemptionPolicy"] == "Never" and not priority["globalDefault"]
    holder_sa = only(docs, "ServiceAccount", DEFAULT_HOLDER_SERVICE_ACCOUNT)["metadata"]
    assert holder_sa["namespace"] == "kvsched-system"
    [own_pod] = [r for d in docs if d["kind"] == "Role" and d["metadata"]["name"].endswith("-gpu-holder")
                 for r in d["rules"]]
    assert (own_pod["resources"], own_pod["verbs"]) == (["pods"], ["get", "patch"])
    [manage] = only(docs, "Role", "gpu-holders")["rules"]
    assert (manage["resources"], sorted(manage["verbs"])) == (["pods"], ["create", "delete"])
    bound = {b["roleRef"]["name"]: b["subjects"][0]["name"] for b in docs if b["kind"] == "RoleBinding"}
    sa = only(docs, "Deployment")["spec"]["template"]["spec"]["serviceAccountName"]
    assert bound["kvsched-gpu-holders"] == sa and bound["kvsched-gpu-holder"] == DEFAULT_HOLDER_SERVICE_ACCOUNT


# -- the admission policy (templates/admission-policy.yaml; tests/e2e/test_admission_policy.py runs it) ----------
def policy_text(policy: dict[str, Any]) -> str:
    """Every CEL expression and message of the policy, one per line."""
    spec = policy["spec"]
    return "\n".join([*(v["expression"] for v in spec["variables"]),
                      *(v[k] for v in spec["validations"] for k in ("expression", "message", "messageExpression")
                        if k in v)])


@pytest.mark.parametrize("values, namespace, kvsched_sa, holder_sa, scheduler", [
    (None, "kvsched-system", "kvsched", "kvsched-gpu-holder", "kvsched"),
    (NON_DEFAULT_VALUES, "kvsched-system", "kvsched", "llm-holder", "llm-scheduler"),
    ({"serviceAccount": {"name": "gpu-planner"}}, "platform", "gpu-planner", "kvsched-gpu-holder", "kvsched"),
], ids=["default values", "non-default values", "own ServiceAccount name"])
def test_admission_policy_names_the_rendered_service_accounts_and_scheduler(
        helm: Helm, values: dict[str, Any] | None, namespace: str, kvsched_sa: str, holder_sa: str,
        scheduler: str) -> None:
    docs = render(helm, values, namespace=namespace)
    policy = only(docs, "ValidatingAdmissionPolicy")
    binding = only(docs, "ValidatingAdmissionPolicyBinding")
    assert binding["spec"]["policyName"] == policy["metadata"]["name"]
    assert binding["spec"]["validationActions"] == ["Deny"] and policy["spec"]["failurePolicy"] == "Fail"
    deployment_sa = only(docs, "Deployment")["spec"]["template"]["spec"]["serviceAccountName"]
    assert deployment_sa == kvsched_sa
    variables = {v["name"]: v["expression"] for v in policy["spec"]["variables"]}
    assert variables["byKvsched"] == f"request.userInfo.username == 'system:serviceaccount:{namespace}:{kvsched_sa}'"
    assert variables["byHolder"] == f"request.userInfo.username == 'system:serviceaccount:{namespace}:{holder_sa}'"
    assert f"object.spec.schedulerName == '{scheduler}'" in variables["kvschedPod"]
    [rule] = policy["spec"]["matchConstraints"]["resourceRules"]
    # The pod itself and ephemeral containers; never status, binding or eviction (kubelet, scheduler, drains).
    assert sorted(rule["resources"]) == ["pods", "pods/ephemeralcontainers"]
    assert sorted(rule["operations"]) == ["CREATE", "UPDATE"]


def test_admission_policy_guards_the_codes_names(helm: Helm) -> None:
    """The fields the policy's expressions guard are kvsched.api.names' (the chart's YAML cannot import them)."""
    from kvsched.api import names

    text = policy_text(only(render(helm), "ValidatingAdmissionPolicy"))
    for name in (names.GPU_ANNOTATION, names.MEMORY_FRACTION_ANNOTATION, names.VISIBLE_DEVICES_ANNOTATION,
                 names.HOLDER_NODE_ANNOTATION, names.HOLDER_GPU_ANNOTATION, names.HOLDER_LABEL,
                 names.GPU_UUID_ANNOTATION, names.MODEL_LABEL, names.VISIBLE_DEVICES_ENV,
                 f"metadata.annotations['{names.VISIBLE_DEVICES_ANNOTATION}']"):
        assert name in text, name


def test_admission_policy_binding_follows_the_watched_namespace(helm: Helm) -> None:
    everywhere = only(render(helm), "ValidatingAdmissionPolicyBinding")["spec"]
    assert "matchResources" not in everywhere
    scoped = only(render(helm, {"watchNamespace": "llm"}), "ValidatingAdmissionPolicyBinding")["spec"]
    [term] = scoped["matchResources"]["namespaceSelector"]["matchExpressions"]
    assert term == {"key": "kubernetes.io/metadata.name", "operator": "In", "values": ["llm", "kvsched-system"]}


def test_admission_policy_off_by_value(helm: Helm) -> None:
    on, off = render(helm), render(helm, {"admissionPolicy": {"enabled": False}})
    assert {"ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding"} <= set(kinds(on))
    assert not {"ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding"} & set(kinds(off))
    assert sorted(d["kind"] for d in on if not d["kind"].startswith("ValidatingAdmission")) == kinds(off)


def test_metrics_service_publishes_standbys_too(helm: Helm) -> None:
    service = only(render(helm), "Service")
    assert service["spec"]["publishNotReadyAddresses"] is True
    assert service["spec"]["ports"] == [{"name": "metrics", "port": 8080, "targetPort": "metrics",
                                         "protocol": "TCP"}]


def test_deploy_dir_is_the_default_rendering(helm: Helm) -> None:
    assert stale_manifests(helm) == [], "deploy/ is stale: run `make manifests`"
