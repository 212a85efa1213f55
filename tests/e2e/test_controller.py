"""The controller end to end: `kvsched serve` (controller + extender) with the RBAC the chart grants (deploy/kvsched.yaml), a
kube-scheduler with the `kvsched` profile, KWOK GPU nodes of a pool only this test plans on.

Scenarios (issue 7): (1) three annotated Deployments on mixed 80Gi/40Gi GPUs match one plan (statuses, templates,
memory shares, /metrics, and `kvsched plan --kubeconfig` prints that plan; one controller set up for the module);
(6) bad annotations -> Invalid and an event, the others placed; (4) a controller restart writes nothing;
(5) two controllers: one leads, SIGKILL hands over within the lease; (3) cordoning a node re-places its
replicas; (2) a rate change moves exactly the replicas the plan moves, an unchanged world writes nothing;
(7) an apiserver restart; (8) a rollout on a full cluster completes. Also: a replica added by scaling up binds in
seconds, and a pod kube-scheduler parked before its ModelServing existed binds once the controller nudges it.

That nothing was written is shown after the controller's loop decided again (its round counter,
kvsched_reconcile_rounds_total, advanced twice past the moment in question), never after a fixed sleep.
"""
from __future__ import annotations

import json
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from .harness.cluster import ControlPlane, ExtenderConfig
from .harness.controller import (
    E2E_HOLDER_PRIORITY_CLASS, KvschedProcess, kvsched_executable, lease_holder, resource_versions,
    service_account_kubeconfig, unique,
)
from .harness.example import migrations, placements, rounds
from .harness.headroom import cluster_violations
from .harness.kube import create_gpu_nodes, delete_nodes, deployment_manifest, gpu_node_manifest, wait_for
from .harness.processes import Component
from .harness.tools import unavailable

from kvsched.api.names import (
    DEFAULT_SCHEDULER_NAME,
    GPU_ANNOTATION,
    MEMORY_FRACTION_ANNOTATION,
    MODEL_LABEL,
    PLANNED_SLOTS_ANNOTATION,
    RATE_ANNOTATION,
    SIZE_ANNOTATION,
    SLO_ANNOTATION,
    share_of,
)
from kvsched.controller import DecisionConfig
from kvsched.runtime.controller import EXIT_LOST_LEADERSHIP
from kvsched.controller.headroom import Headroom

pytestmark = pytest.mark.e2e

LEASE_S = 6
RENEW_DEADLINE_S = 4  # a leader that cannot renew for this long stops writing and exits (the harness restarts it)
GROUP, VERSION, PLURAL = "kvsched.io", "v1alpha1", "modelservings"
MIB = {"80Gi": 81920, "40Gi": 40960}
# The decision knobs a test's controller runs with (`kvsched plan --kubeconfig` is given the same ones).
KNOBS = ["--time-budget-seconds=2"]
# A label nothing selects on: changing it on a pool node is a watch event for the controller, so a round of its
# loop, over plan inputs that did not change (GPU count and memory, the node selector's labels).
POKE_LABEL = "e2e.kvsched.io/poke"
# The memory headroom a controller started with KNOBS plans with: the settings' defaults.
DEFAULT_HEADROOM = DecisionConfig().headroom()
NO_HEADROOM_KNOBS = ["--gpu-memory-reserve-gib=0", "--engine-overhead-gib=0", "--engine-context-gib=0"]


@dataclass
class Pool:
    """GPU nodes labelled for this test only, and the `kvsched serve` processes planning on them."""

    plane: ControlPlane
    kube: client.ApiClient
    namespace: str
    label: str
    kubeconfig: Any
    start_scheduler: Callable[..., Component]
    nodes: list[str] = field(default_factory=list)
    processes: list[KvschedProcess] = field(default_factory=list)
    # The harness restarts a kvsched process that exits, as the kubelet would; that would hide a crash, so `close`
    # fails the test when one was restarted, unless the test makes kvsched exit on purpose (a lost lease, SIGKILL).
    restarts_expected: bool = False

    def add_nodes(self, spec: dict[str, tuple[int, str]]) -> None:
        """{"big": (2, "80Gi")} -> node `<label>-big` with 2 GPUs of 80Gi."""
        names = [f"{self.label}-{suffix}" for suffix in spec]
        create_gpu_nodes(client.CoreV1Api(self.kube), [
            gpu_node_manifest(n, gpus=g, gpu_memory_mib=MIB[m], labels={"e2e-pool": self.label})
            for n, (g, m) in zip(names, spec.values())])
        self.nodes.extend(names)

    @property
    def selection(self) -> list[str]:
        """What the pool's controllers plan on: its nodes, its namespace."""
        return [f"--node-selector=e2e-pool={self.label}", f"--namespace={self.namespace}",
                f"--holder-namespace={self.namespace}"]

    @property
    def holders(self) -> list[str]:
        """Where the pool's GPU holder pods go: its namespace, the harness's PriorityClass."""
        return [f"--holder-priority-class={E2E_HOLDER_PRIORITY_CLASS}"]

    def start(self, scheduler: bool = True, command: str = "serve", knobs: list[str] = KNOBS,
              lease_s: int = LEASE_S, renew_deadline_s: int = RENEW_DEADLINE_S,
              kubeconfig: Path | None = None) -> KvschedProcess:
        """Start one more kvsched process of the pool (restarted by the harness whenever it exits), and with
        `scheduler` a kube-scheduler calling its extender. `kubeconfig`: another way to the apiserver (a
        forwarder's) than the pool's."""
        proc = KvschedProcess(self.plane, kubeconfig or self.kubeconfig, [
            *self.selection, *self.holders, f"--leader-election-namespace={self.namespace}",
            f"--leader-election-name=kvsched-{self.label}", f"--lease-duration-seconds={lease_s}",
            f"--renew-deadline-seconds={renew_deadline_s}", "--retry-period-seconds=1", *knobs],
            name=f"kvsched-{command}-{len(self.processes) + 1}-{self.label}", command=command).start()
        self.processes.append(proc)
        if scheduler:
            self.start_scheduler(proc.extender_url)
        return proc

    def close(self) -> None:
        """Stop the processes and delete the nodes. Raises AssertionError when a process was restarted and
        `restarts_expected` is not set."""
        for proc in self.processes:
            proc.stop()
        delete_nodes(client.CoreV1Api(self.kube), self.nodes)
        restarted = {p.component.name: p.exit_codes for p in self.processes if p.restarts}
        assert self.restarts_expected or not restarted, (
            f"kvsched exited and was restarted during a test that expects no restart (exit codes): {restarted}")


def new_pool(plane: ControlPlane, kube: client.ApiClient, namespace: str,
             start_scheduler: Callable[..., Component]) -> Pool:
    return Pool(plane, kube, namespace, unique("pool"), service_account_kubeconfig(kube, plane, namespace),
                start_scheduler)


@pytest.fixture
def pool(control_plane: ControlPlane, kube: client.ApiClient, namespace: str, project_crds: list[str],
         kvsched_scheduler: Callable[..., Component]) -> Iterator[Pool]:
    assert "modelservings.kvsched.io" in project_crds
    p = new_pool(control_plane, kube, namespace, kvsched_scheduler)
    try:
        yield p
    finally:
        p.close()


def annotated(name: str, size: str, rate: float, slo: str, replicas: int) -> dict[str, Any]:
    return deployment_manifest(name, replicas=replicas, scheduler_name=DEFAULT_SCHEDULER_NAME, annotations={
        SIZE_ANNOTATION: size, RATE_ANNOTATION: str(rate), SLO_ANNOTATION: slo})


MODELS = {  # name: (size, rate, slo, replicas)
    "llama": ("16Gi", 4.0, "1", 2),
    "qwen": ("30Gi", 2.0, "1", 1),
    "mixtral": ("60Gi", 1.0, "2s", 1),
}


def create_models(pool: Pool, models: dict[str, tuple[str, float, str, int]] = MODELS) -> None:
    apps = client.AppsV1Api(pool.kube)
    for name, (size, rate, slo, replicas) in models.items():
        apps.create_namespaced_deployment(pool.namespace, annotated(name, size, rate, slo, replicas))


def serving(pool: Pool, name: str) -> dict[str, Any]:
    obj: dict[str, Any] = client.CustomObjectsApi(pool.kube).get_namespaced_custom_object(
        GROUP, VERSION, pool.namespace, PLURAL, name)
    return obj


def condition(ms: dict[str, Any], kind: str) -> dict[str, Any]:
    return next((c for c in (ms.get("status") or {}).get("conditions") or [] if c["type"] == kind), {})


def managed_pods(pool: Pool, name: str) -> list[client.V1Pod]:
    return [p for p in client.CoreV1Api(pool.kube).list_namespaced_pod(
        pool.namespace, label_selector=f"{MODEL_LABEL}={name}").items if not p.metadata.deletion_timestamp]


def slot_set(ms: dict[str, Any]) -> set[tuple[str, int]]:
    return {(s["node"], s["gpu"]) for s in (ms.get("status") or {}).get("slots") or []}


def settled(pool: Pool, names: list[str]) -> bool:
    """Every model fully placed, its pods exactly on its slots, Ready, nothing terminating."""
    core = client.CoreV1Api(pool.kube)
    pods = core.list_namespaced_pod(pool.namespace).items
    if any(p.metadata.deletion_timestamp for p in pods):
        return False
    for name in names:
        try:
            ms = serving(pool, name)
        except ApiException as e:
            if e.status == 404:  # not created yet
                return False
            raise
        status = ms.get("status") or {}
        if condition(ms, "Placed").get("status") != "True" or condition(ms, "Migrating").get("status") == "True":
            return False
        mine = [p for p in pods if (p.metadata.labels or {}).get(MODEL_LABEL) == name]
        held = {(p.spec.node_name, int((p.metadata.annotations or {}).get(GPU_ANNOTATION, -1))) for p in mine}
        ready = all(any(c.type == "Ready" and c.status == "True" for c in (p.status.conditions or []))
                    for p in mine)
        if len(mine) != status.get("replicas") or held != slot_set(ms) or not ready:
            return False
        if status.get("readyReplicas") != status.get("replicas"):
            return False
    return True


def leads(proc: KvschedProcess) -> bool:
    """`proc` says it leads (False while it is down or restarting and not serving /metrics yet)."""
    try:
        return proc.component.running and proc.metrics().get("kvsched_is_leader") == 1.0
    except OSError:
        return False


def leader(pool: Pool) -> KvschedProcess | None:
    leaders = [p for p in pool.processes if leads(p)]
    assert len(leaders) <= 1, "two processes lead at once"
    return leaders[0] if leaders else None


def wait_rounds(proc: KvschedProcess, since: float, n: int = 2, timeout_s: float = 90.0) -> dict[str, float]:
    """Wait until `proc`'s loop has made `n` more decisions than `since` (its kvsched_reconcile_rounds_total read
    earlier); returns its metrics then. The counter advances when a round has decided, before that round
    writes: once it shows since + 2, round since + 1 has made all its writes (and evictions), and round
    since + 2 decided over the world as it was after `since` was read. An idle loop decides on a watch event or
    at its 30 s resync, hence the default timeout."""
    return wait_for(proc.metrics, lambda m: rounds(m) >= since + n, timeout_s,
                    f"{n} rounds of {proc.component.name}'s loop past round {since:.0f}")


def poke(pool: Pool) -> None:
    """A watch event for the pool's controllers that changes no input of the plan (see POKE_LABEL)."""
    client.CoreV1Api(pool.kube).patch_node(pool.nodes[0], {"metadata": {"labels": {POKE_LABEL: uuid.uuid4().hex}}})


def wait_settled(pool: Pool, names: list[str], timeout_s: float = 120.0) -> dict[str, dict[str, Any]]:
    """Wait until `settled` holds, and still holds once a decision of the leading controller over the world as
    it was then has been carried out, having started no eviction and no solve: a decision may start a migration
    or a restart right after the world looked settled. That is three rounds past the moment (`wait_rounds`),
    each drawn by a `poke` rather than waited for (an idle loop's resync comes every 30 s)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        proc = leader(pool)
        if proc is None or not settled(pool, names):
            time.sleep(0.5)  # poll interval
            continue
        seen = proc.metrics()
        now = seen
        for n in (1, 2, 3):
            poke(pool)
            now = wait_rounds(proc, rounds(seen), n, timeout_s=max(1.0, deadline - time.monotonic()))
        if migrations(now) == migrations(seen) and placements(now) == placements(seen) and settled(pool, names):
            return {n: serving(pool, n) for n in names}
    raise AssertionError(f"models {names} not placed, bound and Ready, or not left so by a decision of the "
                         f"controller, after {timeout_s:.0f}s")


# -- (1) ------------------------------------------------------------------------------------------------------
@dataclass
class Placed:
    """MODELS placed on a 2 x 80Gi + 2 x 40Gi pool by one `kvsched serve` running with `knobs`, settled."""

    pool: Pool
    proc: KvschedProcess
    knobs: list[str]
    statuses: dict[str, dict[str, Any]]
    headroom: Headroom = Headroom()

    def gpu_memory_gib(self, node: str) -> float:
        return {f"{self.pool.label}-big": 80.0, f"{self.pool.label}-small": 40.0}[node]

    def per_gpu(self) -> tuple[dict[tuple[str, int], float], dict[tuple[str, int], float]]:
        """(load, weights GiB) per GPU from the statuses' slots and MODELS (load n = rate / SLO per replica)."""
        load: dict[tuple[str, int], float] = {}
        weights: dict[tuple[str, int], float] = {}
        for name, (size, rate, slo, replicas) in MODELS.items():
            for slot in slot_set(self.statuses[name]):
                load[slot] = load.get(slot, 0.0) + rate / float(slo.rstrip("s")) / replicas
                weights[slot] = weights.get(slot, 0.0) + float(size[:-2])
        return load, weights

    def kvpr(self, gpu: tuple[str, int]) -> float:
        """Load over the KV memory left: M - R - the weights, overheads and contexts of its replicas."""
        load, weights = self.per_gpu()
        h = self.headroom
        engines = sum(1 for name in MODELS if gpu in slot_set(self.statuses[name]))
        return load[gpu] / (self.gpu_memory_gib(gpu[0]) - h.reserve_gib - weights[gpu]
                            - engines * (h.overhead_gib + h.context_gib))

    def max_kvpr(self) -> float:
        return max(self.kvpr(g) for g in self.per_gpu()[0])


# Not the defaults, so that the controller, the extender and `kvsched plan` agreeing is not agreement of defaults.
PLACED_HEADROOM_KNOBS = ["--gpu-memory-reserve-gib=1.5", "--engine-overhead-gib=2Gi", "--engine-context-gib=256Mi"]
PLACED_HEADROOM = Headroom(reserve_gib=1.5, overhead_gib=2.0, context_gib=0.25)


@pytest.fixture(scope="module")
def placed(control_plane: ControlPlane, kube: client.ApiClient, project_crds: list[str],
           scheduler_kubeconfig: Path) -> Iterator[Placed]:
    """One controller and its scheduler for the read-only checks of scenario (1): set up once, torn down after
    the module (a namespace and a scheduler of its own, as the function-scoped fixtures make them)."""
    assert "modelservings.kvsched.io" in project_crds
    if not control_plane.tools.helm.exists():
        reason = f"helm is not built ({control_plane.tools.helm}; run `make e2e-tools`): it renders the chart"
        unavailable(reason)
    core = client.CoreV1Api(kube)
    namespace = f"e2e-{uuid.uuid4().hex[:8]}"
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=namespace)))
    schedulers: list[Component] = []

    def start_scheduler(url: str) -> Component:
        schedulers.append(control_plane.start_scheduler(ExtenderConfig(url=url, kubeconfig=scheduler_kubeconfig),
                                                        name=f"kvsched-scheduler-{namespace}"))
        return schedulers[-1]

    p = new_pool(control_plane, kube, namespace, start_scheduler)
    # This pool lives through the whole module, which restarts the apiserver
    # (test_apiserver_restart_loses_nothing_and_the_controller_resumes): its leader may lose its lease then, exit
    # and come back, as the chart's pod would. Its checks (the tests using `placed`) all run before that.
    p.restarts_expected = True
    try:
        wait_for(lambda: core.read_namespaced_service_account("default", namespace), lambda sa: True, 60.0,
                 f"ServiceAccount {namespace}/default")
        p.add_nodes({"big": (2, "80Gi"), "small": (2, "40Gi")})
        # Non-default knobs, so that `kvsched plan` agreeing with the controller is not agreement of defaults.
        knobs = [f"--scheduler-name={DEFAULT_SCHEDULER_NAME}", "--time-budget-seconds=2",
                 "--stability-threshold=0.1", "--max-migrations=3", *PLACED_HEADROOM_KNOBS]
        proc = p.start(knobs=knobs)
        create_models(p)
        statuses = wait_settled(p, list(MODELS))
        # Every pod is bound: the checks only read. One kube-scheduler of the `kvsched` profile at a time: the
        # other tests of this module start their own, and a second one would schedule their pods through this
        # controller's extender.
        for scheduler in schedulers:
            scheduler.stop()
        yield Placed(p, proc, knobs, statuses, PLACED_HEADROOM)
    finally:
        p.close()
        for scheduler in schedulers:
            scheduler.stop()
        core.delete_namespace(namespace)


def test_three_annotated_deployments_get_statuses_of_one_plan(placed: Placed) -> None:
    load, weights = placed.per_gpu()
    for name, (_, _, _, replicas) in MODELS.items():
        ms = placed.statuses[name]
        assert ms["status"]["placedReplicas"] == replicas == len(slot_set(ms))
        assert ms["status"]["observedGeneration"] == ms["metadata"]["generation"]
        assert [(o["kind"], o["name"]) for o in ms["metadata"]["ownerReferences"]] == [("Deployment", name)]
        assert ms["status"]["kvpr"] == pytest.approx(max(placed.kvpr(g) for g in slot_set(ms)), abs=1e-4)
    for gpu, w in weights.items():
        assert w < placed.gpu_memory_gib(gpu[0]), f"GPU {gpu} over memory"


def test_managed_templates_get_the_scheduler_affinity_and_gpu_env(placed: Placed) -> None:
    apps = client.AppsV1Api(placed.pool.kube)
    for name, (size, _, _, _) in MODELS.items():
        dep = apps.read_namespaced_deployment(name, placed.pool.namespace)
        spec = dep.spec.template.spec
        assert spec.scheduler_name == DEFAULT_SCHEDULER_NAME
        assert dep.spec.template.metadata.labels[MODEL_LABEL] == name
        assert dep.spec.strategy.rolling_update.max_surge == 0
        terms = spec.affinity.node_affinity.required_during_scheduling_ignored_during_execution.node_selector_terms
        exprs = {(e.key, e.operator, tuple(e.values or ())) for e in terms[0].match_expressions}
        assert ("e2e-pool", "In", (placed.pool.label,)) in exprs
        # A GPU whose memory less the reserve exceeds a replica's weights, engine overhead and CUDA context.
        h = placed.headroom
        need_mib = int((float(size[:-2]) + h.overhead_gib + h.context_gib + h.reserve_gib) * 1024)
        assert ("nvidia.com/gpu.memory", "Gt", (str(need_mib),)) in exprs
        env = {e.name: e.value_from.field_ref.field_path for e in spec.containers[0].env}
        assert env["NVIDIA_VISIBLE_DEVICES"] == "metadata.annotations['kvsched.io/visible-devices']"


def test_pods_run_with_the_memory_shares_their_statuses_plan(placed: Placed) -> None:
    # Every pod runs with the share its status plans, except one a re-plan left running with a smaller one that
    # still keeps its KV-cache pressure within the stability threshold of the worst KVPR (docs/controller.md,
    # "Memory shares"); and no GPU is promised more memory than it has.
    running: dict[tuple[str, tuple[str, int]], float] = {}  # (model, GPU) -> the share its pod runs with
    wanted: dict[tuple[str, tuple[str, int]], float] = {}   # (model, GPU) -> the share ModelServing status plans
    for name in MODELS:
        planned = {(s["node"], s["gpu"]): s["memoryFraction"] for s in placed.statuses[name]["status"]["slots"]}
        for p in managed_pods(placed.pool, name):
            gpu = (p.spec.node_name, int(p.metadata.annotations[GPU_ANNOTATION]))
            assert gpu in planned
            running[(name, gpu)] = float(p.metadata.annotations[MEMORY_FRACTION_ANNOTATION])
            wanted[(name, gpu)] = planned[gpu]
    assert len(running) == sum(m[3] for m in MODELS.values())
    threshold = next(float(k.split("=", 1)[1]) for k in placed.knobs if k.startswith("--stability-threshold="))
    for (name, gpu), share in running.items():
        if share != pytest.approx(wanted[(name, gpu)], abs=1e-9):
            size, rate, slo, replicas = MODELS[name]
            assert share < wanted[(name, gpu)], f"{name} on {gpu} runs with more than planned"
            per_replica = rate / float(slo.rstrip("s")) / replicas
            kv_gib = share * placed.gpu_memory_gib(gpu[0]) - float(size[:-2]) - placed.headroom.overhead_gib
            assert per_replica / kv_gib <= placed.max_kvpr() * (1 + threshold) + 1e-9
    assert cluster_violations(placed.pool.kube, placed.pool.namespace, placed.headroom) == []


def test_every_gpu_keeps_the_memory_headroom(placed: Placed) -> None:
    # On every GPU the pods' shares leave the reserve and a CUDA context per engine, and each share holds its
    # model's weights plus engine overhead; the headroom is the controller's non-default one (PLACED_HEADROOM).
    pods = [p for name in MODELS for p in managed_pods(placed.pool, name)]
    assert len(pods) == sum(m[3] for m in MODELS.values())
    assert cluster_violations(placed.pool.kube, placed.pool.namespace, placed.headroom) == []
    h = placed.headroom
    for p in pods:
        share = float(p.metadata.annotations[MEMORY_FRACTION_ANNOTATION])
        size = float(MODELS[p.metadata.labels[MODEL_LABEL]][0][:-2])
        assert share * placed.gpu_memory_gib(p.spec.node_name) >= size + h.overhead_gib - 1e-6


def test_metrics_show_the_plan(placed: Placed) -> None:
    metrics = placed.proc.metrics()
    assert metrics["kvsched_max_kvpr"] == pytest.approx(placed.max_kvpr(), rel=1e-3)
    assert 0 < metrics["kvsched_kvpr_lower_bound"] <= metrics["kvsched_max_kvpr"] + 1e-9
    assert "kvsched_packer_retunes_total" in metrics
    assert metrics["kvsched_cache_synced"] == 1.0 and metrics["kvsched_is_leader"] == 1.0
    assert metrics['kvsched_models{state="placed"}'] == 3.0


def test_plan_kubeconfig_prints_the_plan_the_controller_made_and_writes_nothing(placed: Placed,
                                                                                tmp_path: Path) -> None:
    # `kvsched plan --kubeconfig`, with the controller's knobs, over the settled cluster: the placements it
    # prints are the statuses' slots (model -> (node, GPU, memory share as the status writes it)).
    pool = placed.pool
    statuses = {n: serving(pool, n) for n in MODELS}
    versions = resource_versions(pool.kube, pool.namespace)
    output = tmp_path / "plan.json"
    printed = subprocess.run([str(kvsched_executable()), "plan", f"--kubeconfig={pool.kubeconfig}",
                              f"--output={output}", *pool.selection, *placed.knobs],
                             capture_output=True, text=True, timeout=120)
    assert printed.returncode == 0, printed.stderr
    plan = json.loads(output.read_text())
    by_model: dict[str, list[tuple[str, int, float]]] = {}
    for p in plan["placements"]:
        namespace, name = p["model"].split("/", 1)
        assert namespace == pool.namespace
        by_model.setdefault(name, []).append((p["node"], p["gpu"], p["memoryFraction"]))
    # The same slots; the status writes each fraction to 3 decimals, per GPU (rounded down, or up to the least
    # share that holds weights + overhead), so within a step of the plan's exact fraction.
    assert {n: sorted((node, gpu) for node, gpu, _ in v) for n, v in by_model.items()} == {
        n: sorted((s["node"], s["gpu"]) for s in ms["status"]["slots"]) for n, ms in statuses.items()}
    for n, ms in statuses.items():
        exact = {(node, gpu): f for node, gpu, f in by_model[n]}
        for s in ms["status"]["slots"]:
            assert abs(s["memoryFraction"] - share_of(exact[(s["node"], s["gpu"])])) <= 0.001 + 1e-9
    assert plan["unplaced"] == []
    assert plan["maxKVPR"] == pytest.approx(placed.proc.metrics()["kvsched_max_kvpr"], rel=1e-6)
    assert plan["maxKVPR"] == pytest.approx(max(ms["status"]["kvpr"] for ms in statuses.values()), abs=1e-4)
    assert resource_versions(pool.kube, pool.namespace) == versions


# -- (6) ------------------------------------------------------------------------------------------------------
def test_bad_annotations_are_invalid_with_an_event_and_others_stay_placed(pool: Pool) -> None:
    pool.add_nodes({"big": (2, "80Gi"), "small": (2, "40Gi")})
    proc = pool.start()
    create_models(pool)
    before = wait_settled(pool, list(MODELS))
    apps, core = client.AppsV1Api(pool.kube), client.CoreV1Api(pool.kube)
    created = apps.create_namespaced_deployment(pool.namespace, annotated("broken", "lots", -3, "0", 1))

    def events(name: str) -> list[str]:
        return [f"{e.reason}: {e.message}" for e in core.list_namespaced_event(
            pool.namespace, field_selector=f"involvedObject.name={name}").items]

    seen = wait_for(lambda: events("broken"), lambda ev: any(e.startswith("InvalidAnnotation") for e in ev), 30,
                    "InvalidAnnotation event on Deployment broken")
    assert any(SIZE_ANNOTATION in e for e in seen if e.startswith("InvalidAnnotation")), seen
    # A new Deployment with bad annotations still gets its own ModelServing, which says what is wrong.
    broken = wait_for(lambda: serving(pool, "broken"), lambda ms: condition(ms, "Invalid").get("status") == "True",
                      30, "ModelServing broken Invalid")
    assert condition(broken, "Invalid")["reason"] == "InvalidAnnotation"
    for named in (f"{SIZE_ANNOTATION}: 'lots'", f"{RATE_ANNOTATION}: must be a finite number >= 0, got '-3'",
                  f"{SLO_ANNOTATION}: must be greater than zero, got '0'"):
        assert named in condition(broken, "Invalid")["message"], condition(broken, "Invalid")
    assert (condition(broken, "Placed")["status"], condition(broken, "Placed")["reason"]) == (
        "False", "InvalidAnnotation")
    assert [(o["kind"], o["name"], o["uid"], o.get("controller")) for o in broken["metadata"]["ownerReferences"]] == [
        ("Deployment", "broken", created.metadata.uid, True)]
    assert broken["spec"] == {"workloadRef": {"kind": "Deployment", "name": "broken"}, "replicas": 1,
                              "fromAnnotations": True}
    assert not slot_set(broken)
    # Only such a ModelServing may leave values out: the CRD refuses a hand-written one without them.
    with pytest.raises(ApiException) as refused:
        client.CustomObjectsApi(pool.kube).create_namespaced_custom_object(GROUP, VERSION, pool.namespace, PLURAL, {
            "apiVersion": f"{GROUP}/{VERSION}", "kind": "ModelServing", "metadata": {"name": "handmade"},
            "spec": {"workloadRef": {"name": "llama"}, "requestRate": 1, "sloSeconds": 1}})
    assert refused.value.status == 422 and "modelSize, requestRate and sloSeconds are required" in str(
        refused.value.body), refused.value.body
    wait_for(proc.metrics, lambda m: m.get('kvsched_models{state="invalid"}') == 1.0, 30,
             "kvsched_models{state=\"invalid\"} == 1")
    # A managed Deployment whose annotation turns bad: Invalid, and its placement kept.
    apps.patch_namespaced_deployment("qwen", pool.namespace,
                                     {"metadata": {"annotations": {RATE_ANNOTATION: "-1"}}})
    qwen = wait_for(lambda: serving(pool, "qwen"), lambda ms: condition(ms, "Invalid").get("status") == "True",
                    30, "ModelServing qwen Invalid")
    assert condition(qwen, "Invalid")["reason"] == "InvalidAnnotation"
    assert slot_set(qwen) == slot_set(before["qwen"])
    # The event follows the status write (the loop writes, then records events).
    wait_for(lambda: events("qwen"), lambda ev: any(e.startswith("InvalidAnnotation") for e in ev), 30,
             "InvalidAnnotation event on qwen")
    after = wait_settled(pool, list(MODELS))
    assert {n: slot_set(ms) for n, ms in after.items()} == {n: slot_set(ms) for n, ms in before.items()}
    # Fixing the broken Deployment's annotations makes it a normal placed model (the others stay placed).
    apps.patch_namespaced_deployment("broken", pool.namespace, {"metadata": {"annotations": {
        SIZE_ANNOTATION: "8Gi", RATE_ANNOTATION: "1", SLO_ANNOTATION: "1"}}})
    fixed = wait_settled(pool, [*MODELS, "broken"])["broken"]
    assert condition(fixed, "Invalid")["status"] == "False"
    assert (fixed["spec"]["modelSize"], fixed["status"]["placedReplicas"], len(slot_set(fixed))) == ("8Gi", 1, 1)
    assert fixed["metadata"]["uid"] == broken["metadata"]["uid"]


def test_poisoned_deployments_get_what_the_bounded_crd_takes_and_the_others_are_placed(pool: Pool) -> None:
    """Issue 16: with the CRD's bounds, the ModelServing the controller keeps for a Deployment whose annotations
    break one (an infinite load, an SLO over a day) leaves the field out and says why, so the apiserver takes it;
    a Deployment whose name is too long for the model label gets an InvalidName event and no ModelServing. No
    owned write is refused, and the good model is placed."""
    pool.add_nodes({"big": (2, "80Gi")})
    proc = pool.start()
    apps, core = client.AppsV1Api(pool.kube), client.CoreV1Api(pool.kube)
    long_name = "m" * 64
    apps.create_namespaced_deployment(pool.namespace, annotated("load", "16Gi", 1e308, "0.5", 1))
    apps.create_namespaced_deployment(pool.namespace, annotated("slow", "16Gi", 1.0, "90000", 1))
    too_long = annotated(long_name, "16Gi", 1.0, "1", 1)
    too_long["spec"]["selector"]["matchLabels"] = too_long["spec"]["template"]["metadata"]["labels"] = {
        "app": "long"}  # the harness labels pods app=<name>, and a label value has at most 63 characters
    apps.create_namespaced_deployment(pool.namespace, too_long)
    create_models(pool, {"llama": MODELS["llama"]})
    wait_settled(pool, ["llama"])
    for name, annotation, left_out, kept in (("load", RATE_ANNOTATION, "requestRate", ("sloSeconds", 0.5)),
                                             ("slow", SLO_ANNOTATION, "sloSeconds", ("requestRate", 1))):
        ms = wait_for(lambda: serving(pool, name), lambda ms: condition(ms, "Invalid").get("status") == "True",
                      30, f"ModelServing {name} Invalid")
        invalid = condition(ms, "Invalid")
        assert invalid["reason"] == "InvalidAnnotation" and f"annotation {annotation}" in invalid["message"], invalid
        assert left_out not in ms["spec"] and ms["spec"][kept[0]] == kept[1], ms["spec"]
    seen = wait_for(lambda: [f"{e.reason}: {e.message}" for e in core.list_namespaced_event(
        pool.namespace, field_selector=f"involvedObject.name={long_name}").items],
        lambda ev: any(e.startswith("InvalidName") for e in ev), 30, "InvalidName event on the Deployment")
    assert any("64 characters" in e for e in seen), seen
    with pytest.raises(ApiException) as missing:
        serving(pool, long_name)
    assert missing.value.status == 404
    wait_for(proc.metrics, lambda m: m.get('kvsched_models{state="invalid"}') == 3.0, 30,
             "kvsched_models{state=\"invalid\"} == 3")
    log = proc.component.log_path.read_text(errors="replace")
    assert "writing owned" not in log, [line for line in log.splitlines() if "writing owned" in line]


# -- (4) ------------------------------------------------------------------------------------------------------
def test_restarting_the_controller_patches_and_migrates_nothing(pool: Pool) -> None:
    pool.add_nodes({"big": (2, "80Gi"), "small": (2, "40Gi")})
    first = pool.start()
    create_models(pool)
    wait_settled(pool, list(MODELS))
    before = resource_versions(pool.kube, pool.namespace)
    first.stop()
    second = pool.start(scheduler=False)  # the scheduler keeps calling the old URL; nothing needs binding
    leading = wait_for(second.metrics, lambda m: m.get("kvsched_is_leader") == 1.0, LEASE_S + 10,
                       "the restarted controller leads")
    # Two more decisions as leader (the idle loop's resyncs, if nothing else wakes it), then: nothing written.
    metrics = wait_rounds(second, rounds(leading))
    after = resource_versions(pool.kube, pool.namespace)
    assert metrics['kvsched_models{state="placed"}'] == len(MODELS)  # it did decide over the models
    assert migrations(metrics) == 0
    changed = {k: (before.get(k), after.get(k)) for k in set(before) | set(after) if before.get(k) != after.get(k)}
    assert changed == {}


# -- (5) ------------------------------------------------------------------------------------------------------
def test_two_controllers_one_leads_and_sigkill_hands_over_within_the_lease(pool: Pool) -> None:
    pool.restarts_expected = True  # the SIGKILLed one comes back, as a crashed container would
    pool.add_nodes({"big": (2, "80Gi")})
    a = pool.start(scheduler=False, command="controller")
    b = pool.start(scheduler=False, command="controller")
    first = wait_for(lambda: leader(pool), lambda p: p is not None, LEASE_S + 10, "a leader")
    assert first is not None
    other = b if first is a else a
    assert other.metrics()["kvsched_is_leader"] == 0.0
    assert "(this process)" in first.readyz() and "(this process)" not in other.readyz()
    holder = lease_holder(pool.kube, pool.namespace, f"kvsched-{pool.label}")
    assert holder is not None and holder in other.readyz()
    first.kill()
    killed_at = time.monotonic()
    wait_for(lambda: other.metrics().get("kvsched_is_leader"), lambda v: v == 1.0, LEASE_S + 5,
             "the follower takes over")
    handover_s = time.monotonic() - killed_at
    assert handover_s <= LEASE_S + 2, handover_s
    print(f"handover after SIGKILL: {handover_s:.1f}s (lease {LEASE_S}s)")


# -- (3, adding a replica) --------------------------------------------------------------------------------------
def test_a_replica_added_by_scaling_up_binds_without_the_schedulers_retry_timeout(pool: Pool) -> None:
    # The new pod exists before its slot is planned: kube-scheduler asks the extender at once, which rejects it
    # (no free slot of llama yet). kube-scheduler does not watch ModelServings; it retries the pod on its own
    # events or on any cluster event, and the controller annotates a pod still pending once its slot is written
    # (kvsched.io/planned-slots), so it is never left for the scheduler's 5-minute flush.
    pool.add_nodes({"big": (2, "80Gi"), "small": (2, "40Gi")})
    pool.start()
    create_models(pool)
    wait_settled(pool, list(MODELS))
    started = time.monotonic()
    client.AppsV1Api(pool.kube).patch_namespaced_deployment_scale("llama", pool.namespace,
                                                                  {"spec": {"replicas": 3}})
    after = wait_settled(pool, list(MODELS), timeout_s=120)
    bound_s = time.monotonic() - started
    assert len(slot_set(after["llama"])) == 3
    nudged = [p.metadata.name for p in managed_pods(pool, "llama")
              if PLANNED_SLOTS_ANNOTATION in (p.metadata.annotations or {})]
    print(f"scale-up: settled {bound_s:.1f}s after the scale; nudged: {nudged}")
    assert bound_s < 30.0  # kube-scheduler's own retry of a parked pod comes after up to 5 minutes


# -- (3, a pod parked before its plan) ------------------------------------------------------------------------
def test_a_pod_parked_before_its_plan_existed_is_nudged_and_binds(pool: Pool) -> None:
    # kube-scheduler parks a pod the extender rejected and does not watch ModelServings: with no other cluster
    # event it would retry only at its 5-minute flush. A user-written ModelServing adopts a Deployment; the
    # ModelServing is deleted and the Deployment scaled up, so the new pod is rejected ("no ModelServing") and
    # parked; written again, the ModelServing gets its slots and the template is already as needed (no
    # rollout), so only the controller's annotation wakes the parked pod.
    # GPU holders off: with them on, the holder pod created for the new slot is itself a cluster event that
    # requeues the parked pod, and this test is about the controller's nudge when nothing else happens.
    pool.add_nodes({"big": (2, "80Gi")})
    pool.start(knobs=[*KNOBS, "--gpu-holders=false"])
    custom, apps, core = (client.CustomObjectsApi(pool.kube), client.AppsV1Api(pool.kube),
                          client.CoreV1Api(pool.kube))
    body = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "ModelServing", "metadata": {"name": "solo"},
            "spec": {"workloadRef": {"kind": "Deployment", "name": "solo"}, "modelSize": "16Gi",
                     "requestRate": 1, "sloSeconds": 1}}
    custom.create_namespaced_custom_object(GROUP, VERSION, pool.namespace, PLURAL, body)
    apps.create_namespaced_deployment(pool.namespace,
                                      deployment_manifest("solo", scheduler_name=DEFAULT_SCHEDULER_NAME))
    wait_settled(pool, ["solo"])
    custom.delete_namespaced_custom_object(GROUP, VERSION, pool.namespace, PLURAL, "solo")
    apps.patch_namespaced_deployment_scale("solo", pool.namespace, {"spec": {"replicas": 2}})

    def rejected() -> list[str]:
        return [e.involved_object.name for e in core.list_namespaced_event(
            pool.namespace, field_selector="reason=FailedScheduling").items if "no ModelServing" in (e.message or "")]

    parked = wait_for(rejected, bool, 30, "the new pod rejected for want of a ModelServing")[0]
    time.sleep(12)  # past kube-scheduler's 10 s maximum backoff: the pod sits in the unschedulable pool now
    assert core.read_namespaced_pod(parked, pool.namespace).spec.node_name is None
    started = time.monotonic()
    custom.create_namespaced_custom_object(GROUP, VERSION, pool.namespace, PLURAL, body)
    bound = wait_for(lambda: core.read_namespaced_pod(parked, pool.namespace), lambda p: p.spec.node_name, 60,
                     f"parked pod {parked} bound")
    waited_s = time.monotonic() - started
    print(f"parked pod bound {waited_s:.1f}s after its ModelServing was written again")
    assert PLANNED_SLOTS_ANNOTATION in (bound.metadata.annotations or {})
    assert waited_s < 30.0


# -- (3) ------------------------------------------------------------------------------------------------------
def test_cordoning_a_node_replaces_its_replicas(pool: Pool) -> None:
    # Without memory headroom: the counts below (four llama replicas fit next to the others) are its figures.
    pool.add_nodes({"big": (2, "80Gi"), "small": (2, "40Gi"), "spare": (2, "80Gi")})
    pool.start(knobs=[*KNOBS, *NO_HEADROOM_KNOBS])
    create_models(pool)
    before = wait_settled(pool, list(MODELS))
    busy = sorted({node for ms in before.values() for node, _ in slot_set(ms)})
    target = busy[0]
    client.CoreV1Api(pool.kube).patch_node(target, {"spec": {"unschedulable": True}})
    wait_for(lambda: [n for n in MODELS if any(node == target for node, _ in slot_set(serving(pool, n)))],
             lambda left: left == [], 60, f"no slot planned on cordoned {target}")
    after = wait_settled(pool, list(MODELS), timeout_s=180)
    assert all(p.spec.node_name != target for n in MODELS for p in managed_pods(pool, n))
    assert all(after[n]["status"]["placedReplicas"] == MODELS[n][3] for n in MODELS)
    assert cluster_violations(pool.kube, pool.namespace, Headroom()) == []
    # More llama replicas than GPUs that can take one: the extra waits, Unschedulable; a new node places it.
    client.AppsV1Api(pool.kube).patch_namespaced_deployment_scale("llama", pool.namespace, {"spec": {"replicas": 5}})
    waiting = wait_for(lambda: serving(pool, "llama"),
                       lambda ms: condition(ms, "Unschedulable").get("status") == "True", 60, "llama Unschedulable")
    assert condition(waiting, "Unschedulable")["reason"] == "TooFewGPUs"
    assert waiting["status"]["placedReplicas"] == 4
    pool.add_nodes({"extra": (1, "40Gi")})
    placed = wait_settled(pool, list(MODELS), timeout_s=180)
    assert placed["llama"]["status"]["placedReplicas"] == 5
    assert (f"{pool.label}-extra", 0) in slot_set(placed["llama"])
    assert cluster_violations(pool.kube, pool.namespace, Headroom()) == []


# -- (2) ------------------------------------------------------------------------------------------------------
QUAD = {name: ("10Gi", 1.0, "1", 1) for name in ("m1", "m2", "m3", "m4")}


def test_rate_change_moves_exactly_the_replanned_replicas_and_quiet_writes_nothing(pool: Pool) -> None:
    # Four equal models on two 80Gi GPUs: two per GPU is optimal (KVPR 2/52 with the default headroom: 80 - 1 -
    # 2 x (10 + 3 + 0.5)). Twenty times the rate on one of them makes it worth one move (its GPU-mate leaves:
    # 21/52 = 0.40 -> 20/65.5 = 0.31, beyond the 5% stability threshold).
    pool.add_nodes({"big": (2, "80Gi")})
    proc = pool.start()
    create_models(pool, QUAD)
    before = wait_settled(pool, list(QUAD))
    assert cluster_violations(pool.kube, pool.namespace, DEFAULT_HEADROOM) == []
    assert sorted(len([n for n in QUAD if gpu in slot_set(before[n])]) for gpu in
                  {g for ms in before.values() for g in slot_set(ms)}) == [2, 2]
    versions = resource_versions(pool.kube, pool.namespace)
    seen = proc.metrics()
    quiet = wait_rounds(proc, rounds(seen))  # two decisions over the unchanged world (its resyncs)
    assert resource_versions(pool.kube, pool.namespace) == versions, "an unchanged world was written to"
    assert (placements(quiet), migrations(quiet)) == (placements(seen), migrations(seen)), "an idle loop solved"
    pods_before = {n: {p.metadata.name for p in managed_pods(pool, n)} for n in QUAD}
    shares_before = {n: float(p.metadata.annotations[MEMORY_FRACTION_ANNOTATION])
                     for n in QUAD for p in managed_pods(pool, n)}
    client.AppsV1Api(pool.kube).patch_namespaced_deployment(
        "m1", pool.namespace, {"metadata": {"annotations": {RATE_ANNOTATION: "20"}}})
    wait_for(lambda: serving(pool, "m1"), lambda ms: (ms.get("status") or {}).get("kvpr", 0) > 0.2, 30,
             "m1's status re-planned for the new rate")
    after = wait_settled(pool, list(QUAD), timeout_s=180)
    assert cluster_violations(pool.kube, pool.namespace, DEFAULT_HEADROOM) == []
    moved = {n for n in QUAD if slot_set(before[n]) - slot_set(after[n])}
    recreated = {n for n in QUAD if pods_before[n] - {p.metadata.name for p in managed_pods(pool, n)}}
    assert len(moved) == 1, moved  # the fewest moves that reach the better plan
    # Memory shares are fixed at start, so a pod that stays restarts too when its GPU's shares must change
    # (docs/controller.md, "Memory shares"): here the moved model's new GPU-mates, whose 0.5 would leave it
    # nothing, and m1, whose 0.5 of a GPU it now has alone would keep its pressure far above the plan.
    resized = recreated - moved
    assert moved <= recreated
    planned_after = {n: after[n]["status"]["slots"][0]["memoryFraction"] for n in QUAD}
    for n in resized:
        assert shares_before[n] != pytest.approx(planned_after[n], abs=1e-9), f"{n} restarted with the same share"
    for n in QUAD:
        share = float(managed_pods(pool, n)[0].metadata.annotations[MEMORY_FRACTION_ANNOTATION])
        assert share <= planned_after[n] + 1e-9 and (n not in recreated or share == planned_after[n])
    metrics = proc.metrics()
    assert metrics.get('kvsched_migrations_total{reason="Rebalance"}') == 1.0
    assert metrics.get('kvsched_migrations_total{reason="Resize"}', 0.0) == len(resized)
    print(f"rate x20 on m1: moved {sorted(moved)}, restarted with a new share {sorted(resized)}")


# -- (7) ------------------------------------------------------------------------------------------------------
def test_apiserver_restart_loses_nothing_and_the_controller_resumes(pool: Pool) -> None:
    pool.restarts_expected = True  # the leader may lose its lease while the apiserver is down, and exit
    pool.add_nodes({"big": (2, "80Gi"), "small": (2, "40Gi")})
    proc = pool.start()
    create_models(pool)
    before = wait_settled(pool, list(MODELS))
    pool.plane.restart_apiserver()
    client.AppsV1Api(pool.kube).patch_namespaced_deployment_scale("llama", pool.namespace,
                                                                  {"spec": {"replicas": 3}})
    wait_for(lambda: serving(pool, "llama"), lambda ms: (ms.get("status") or {}).get("replicas") == 3, 120,
             "the controller sees llama scaled to 3 after the apiserver restart")
    after = wait_settled(pool, list(MODELS), timeout_s=180)
    assert cluster_violations(pool.kube, pool.namespace, DEFAULT_HEADROOM) == []
    # A leader that cannot renew for RENEW_DEADLINE_S while the apiserver is down exits (code 1) and is
    # restarted, as the kubelet would; it exits for no other reason.
    print(f"kvsched restarted {proc.restarts} times during the apiserver restart (exit codes {proc.exit_codes})")
    assert set(proc.exit_codes) <= {EXIT_LOST_LEADERSHIP}, proc.exit_codes
    assert proc.component.running
    assert after["llama"]["status"]["placedReplicas"] == 3
    for n in ("qwen", "mixtral"):
        assert slot_set(after[n]) == slot_set(before[n])
    assert slot_set(before["llama"]) <= slot_set(after["llama"])


# -- (8) ------------------------------------------------------------------------------------------------------
def test_rollout_on_a_full_cluster_completes(pool: Pool) -> None:
    pool.add_nodes({"big": (2, "80Gi")})
    pool.start()
    # Two models, each with a replica on both GPUs: a surge pod would find no GPU with room for its weights
    # (2 x (34 + 3 + 0.5) = 75 of the 79 GiB the default headroom leaves; a third would need 112.5).
    full = {"a": ("34Gi", 2.0, "1", 2), "b": ("34Gi", 2.0, "1", 2)}
    create_models(pool, full)
    wait_settled(pool, list(full))
    old = {p.metadata.name for p in managed_pods(pool, "a")}
    client.AppsV1Api(pool.kube).patch_namespaced_deployment("a", pool.namespace, {"spec": {"template": {"spec": {
        "containers": [{"name": "server", "image": "registry.invalid/kvsched/fake:v2"}]}}}})

    def rolled() -> bool:
        pods = managed_pods(pool, "a")
        return (len(pods) == 2 and not {p.metadata.name for p in pods} & old
                and all(p.spec.containers[0].image.endswith(":v2") for p in pods) and settled(pool, list(full)))

    wait_for(rolled, bool, 180, "deployment a rolled out on a full cluster")
    assert cluster_violations(pool.kube, pool.namespace, DEFAULT_HEADROOM) == []
