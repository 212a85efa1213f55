"""A simulated cluster around the real `Reconciler`: the API server, the ReplicaSet and Deployment controllers,
kube-scheduler with kvsched's extender, the kubelet and pod garbage collection, stepped by hand with injected
clocks (no threads of its own, no sleeps).

What behaves like the cluster (STYLE.md, Tests: "replacements bind where the status says, evicted pods come back
pending"):
- **API server**: objects are the JSON-shaped dicts the informers deliver, each write bumps `resourceVersion`;
  ModelServing status writes are JSON merge patches (as `ApiWriter.write_status` sends), spec patches bump
  `generation`, Deployment patches are strategic merges; every write comes back to the reconciler through a
  "watch" at the end of the phase that made it (read with the production readers, kvsched.api.readers).
- **`SimWriter`** is the `Writer` the reconciler calls: it plays those writes and counts each kind. An eviction
  marks the pod terminating (an eviction of a pod already gone succeeds, as `ApiWriter.evict` treats a 404);
  annotating a pod that is gone is no error either (as `ApiWriter.annotate_pod`).
- **ReplicaSets and Deployments**: a Deployment keeps `replicas` live pods of its current template (terminating
  pods do not count, so an evicted pod's replacement is created at once, pending); a template change rolls out
  with the Deployment's strategy (maxSurge/maxUnavailable, percentages resolved as the Deployment controller
  does); scale-down deletes unbound, then not-Ready, then the newest pods first.
- **kube-scheduler + extender**: every pending pod of kvsched's scheduler is tried each step against the nodes
  that are schedulable, Ready and match its required node affinity, through the real extender cache
  (kvsched.extender.cache.Cache: `filter`, `score`, `reserve`, i.e. the slot rule of kvsched.controller.slots);
  the best-scored node wins (ties broken by the seeded rng, as kube-scheduler picks among equal scores at
  random), and bind writes `kvsched.io/gpu` and `kvsched.io/gpu-memory-fraction` as the extender's bind does.
  Unmanaged pods are bound to the first schedulable node.
  Bind sets the PodScheduled condition at the sim's wall clock, and the extender's start gate runs on that clock
  (one pod starting per GPU until it is Ready).
- **device plugin + `kvsched gpu-holder`**: a bound holder pod reports a UUID (`GPU-<its uid>`) in the kubelet
  phase of the step it was bound in. Bind also writes `kvsched.io/visible-devices`; GPU holder pods (kvsched's
  scheduler, no model label) are bound to their node when its `nvidia.com/gpu` is not all requested by bound pods.
- **kubelet**: a bound pod is Ready `ready_after` steps after binding; a terminating pod is gone
  `terminate_after` steps after its deletion started. Deleting a Node deletes its pods (pod GC).

Each pod carries a *replica lineage*: a pod created to replace a deleted one inherits its lineage, so "one
replica evicted twice" is seen across the pods that successively play it. `SimCluster.step()` is one round of
everyone: watch delivery, one `reconcile_once`, scheduler, kubelet, controllers. `settle()` steps until a step
changes nothing; `idle(n)` runs n steps and reports every write.

Called by: tests/controller/test_convergence.py.
"""
from __future__ import annotations

import copy
import dataclasses
import hashlib
import itertools
import json
import math
import random
import threading
from collections import Counter, defaultdict
from typing import Any, Callable, Iterable, Mapping, Sequence

from kvsched.api.names import (
    API_VERSION,
    GPU_ANNOTATION,
    GPU_RESOURCE,
    GPU_UUID_ANNOTATION,
    HOLDER_LABEL,
    MEMORY_FRACTION_ANNOTATION,
    MODEL_LABEL,
    POD_DELETION_COST_ANNOTATION,
    VISIBLE_DEVICES_ANNOTATION,
    share_text,
)
from kvsched.api.readers import pod_gpu_request
from kvsched.api.objects import ObjectKey
from kvsched.api.records import Event, HolderChange, OwnedChange
from kvsched.controller import DecisionConfig
from kvsched.extender.cache import Cache
from kvsched.controller.slots import PlannedSlot, PodRef
from kvsched.api.readers import read_deployment, read_model_serving, read_node, read_pod
from kvsched.metrics import Metrics
from kvsched.packer import Plan, solve
from kvsched.runtime.loop import Reconciler, RoundReport

from .fake import _merge as strategic_merge

Obj = dict[str, Any]
EPOCH = 1_790_000_000  # the sim's wall clock starts here (2026-09-21), in seconds
PACKER_TICK_S = 1e-4   # the packer's clock advances this much per read: a solve's budget is a count of reads


def ticking_solver(tick_s: float = PACKER_TICK_S) -> Callable[..., Plan]:
    """`kvsched.packer.solve` with a clock that advances `tick_s` per read: the time budget becomes a fixed amount
    of work, so the same world gives the same plan on any machine and under any load. Forwards every other
    argument as the reconciler passes it."""

    def solver(*args: Any, **kw: Any) -> Plan:
        ticks = itertools.count()
        return solve(*args, clock=lambda: next(ticks) * tick_s, **kw)

    return solver


def rfc3339(seconds: float) -> str:
    import datetime
    return datetime.datetime.fromtimestamp(EPOCH + int(seconds), datetime.timezone.utc).strftime(
        "%Y-%m-%dT%H:%M:%SZ")


def merge_patch(target: Obj, patch: Mapping[str, Any]) -> None:
    """RFC 7386 JSON merge patch: maps merge, null deletes, everything else replaces."""
    for key, value in patch.items():
        if value is None:
            target.pop(key, None)
        elif isinstance(value, dict) and isinstance(target.get(key), dict):
            merge_patch(target[key], value)
        else:
            target[key] = copy.deepcopy(value)


def _int_or_percent(value: object, total: int, round_up: bool) -> int:
    if isinstance(value, str) and value.endswith("%"):
        x = float(value[:-1]) * total / 100.0
        return math.ceil(x) if round_up else math.floor(x)
    return int(value) if value is not None else 0  # type: ignore[call-overload]


def _matches(expr: Mapping[str, Any], labels: Mapping[str, str]) -> bool:
    key, op, values = expr.get("key"), expr.get("operator"), list(expr.get("values") or [])
    have = labels.get(str(key))
    if op == "In":
        return have is not None and have in values
    if op == "NotIn":
        return have is None or have not in values
    if op == "Exists":
        return have is not None
    if op == "DoesNotExist":
        return have is None
    if op in ("Gt", "Lt"):
        try:
            mine, theirs = int(have or ""), int(values[0])
        except (ValueError, IndexError):
            return False
        return mine > theirs if op == "Gt" else mine < theirs
    return False


def node_fits_affinity(pod: Obj, node: Obj) -> bool:
    """The pod's required node affinity (terms ORed, expressions ANDed) and nodeSelector against the node."""
    labels = node["metadata"].get("labels") or {}
    spec = pod["spec"]
    if any(labels.get(k) != v for k, v in (spec.get("nodeSelector") or {}).items()):
        return False
    terms = ((((spec.get("affinity") or {}).get("nodeAffinity") or {})
              .get("requiredDuringSchedulingIgnoredDuringExecution") or {}).get("nodeSelectorTerms"))
    if not terms:
        return True
    name = node["metadata"]["name"]
    return any(all(_matches(e, labels) for e in t.get("matchExpressions") or [])
               and all(f.get("key") == "metadata.name" and f.get("operator") == "In" and name in f.get("values", [])
                       for f in t.get("matchFields") or [])
               for t in terms)


@dataclasses.dataclass
class Writes:
    """What the reconciler wrote, by kind (events are not writes)."""

    statuses: int = 0
    patches: int = 0
    owned: int = 0
    evictions: int = 0
    nudges: int = 0
    events: int = 0
    holders: int = 0

    @property
    def total(self) -> int:
        return self.statuses + self.patches + self.owned + self.evictions + self.nudges + self.holders

    def minus(self, before: Writes) -> Writes:
        return Writes(*(a - b for a, b in zip(dataclasses.astuple(self), dataclasses.astuple(before))))

    def __str__(self) -> str:
        return (f"{self.statuses} status(es), {self.patches} Deployment patch(es), {self.owned} owned "
                f"ModelServing change(s), {self.evictions} eviction(s), {self.nudges} nudge(s), {self.holders} "
                f"GPU holder change(s)")


@dataclasses.dataclass
class EvictionRecord:
    step: int
    pod: str
    lineage: str
    model: str
    node: str | None
    gpu: str | None


class SimWriter:
    """The `Writer` the reconciler gets: plays each write on the simulated API server, counts it."""

    def __init__(self, cluster: SimCluster) -> None:
        self.cluster = cluster
        self.writes = Writes()
        self.log: list[tuple[int, str, str]] = []  # (step, kind, object) of every write
        self._lock = threading.Lock()  # the reconciler writes to different objects from 8 threads

    def _note(self, kind: str, what: object) -> None:
        self.log.append((self.cluster.steps, kind, str(what)))

    def write_status(self, key: ObjectKey, status: Mapping[str, Any]) -> Obj:
        with self._lock:
            self.writes.statuses += 1
            self._note("status", key)
            return self.cluster.api_patch_status(key, status)

    def patch_deployment(self, key: ObjectKey, patch: Mapping[str, Any]) -> Obj:
        with self._lock:
            self.writes.patches += 1
            self._note("patch", key)
            return self.cluster.api_patch_deployment(key, patch)

    def owned_change(self, change: OwnedChange) -> Obj:
        with self._lock:
            self.writes.owned += 1
            self._note(f"modelserving {change.action}", change.key)
            return self.cluster.api_owned_change(change)

    def evict(self, pod: ObjectKey) -> None:
        with self._lock:
            self.writes.evictions += 1
            self._note("evict", pod)
            self.cluster.api_evict(pod)

    def annotate_pod(self, pod: ObjectKey, annotations: Mapping[str, str]) -> Obj:
        with self._lock:
            self.writes.nudges += 1
            self._note("nudge", pod)
            return self.cluster.api_annotate_pod(pod, annotations)

    def holder_change(self, change: HolderChange) -> Obj:
        with self._lock:
            self.writes.holders += 1
            self._note(f"holder {change.action}", change.key)
            return self.cluster.api_holder_change(change)

    def event(self, event: Event) -> None:
        with self._lock:
            self.writes.events += 1


class SimCluster:
    """See the module docstring. Build it, `add_node`/`add_deployment` (and optionally `add_pod` for pods that run
    already), then `start()` to hand the lists to a reconciler, then `step()`/`settle()`/`idle()`."""

    def __init__(self, config: DecisionConfig = DecisionConfig(time_budget_s=0.5), *, seed: int = 0,
                 ready_after: int = 0, terminate_after: int = 0, step_s: float = 1.0,
                 solver: Callable[..., Plan] | None = None, namespace: str = "ns") -> None:
        self.config = config
        self.namespace = namespace
        self.ready_after = ready_after
        self.terminate_after = terminate_after
        self.step_s = step_s
        self.rng = random.Random(seed)
        self.now = 0.0
        self.steps = 0
        self._rv = itertools.count(1)
        self._uid = itertools.count(1)
        self._lineages = itertools.count(1)
        self.nodes: dict[str, Obj] = {}
        self.pods: dict[ObjectKey, Obj] = {}
        self.deployments: dict[ObjectKey, Obj] = {}
        self.servings: dict[ObjectKey, Obj] = {}
        self.bound_at: dict[str, int] = {}       # pod uid -> step it was bound
        self.bound_at_s: dict[str, float] = {}   # pod uid -> sim time it was bound (its PodScheduled time)
        self.deleting_at: dict[str, int] = {}    # pod uid -> step its deletion started
        self.lineage: dict[str, str] = {}        # pod uid -> replica lineage
        self.orphaned: dict[ObjectKey, list[str]] = defaultdict(list)  # deployment -> lineages of deleted pods
        self.evictions: list[EvictionRecord] = []
        self.api_writes = 0                      # every write by anyone (controller, scheduler, kubelet, RS)
        self._pending_watch: list[tuple[str, str, Obj]] = []  # (kind, type, object) not yet delivered
        self.extender = Cache(config.scheduler_name, config.headroom(), start_timeout_s=config.start_timeout_s,
                              wall=lambda: EPOCH + self.now, gpu_holders=config.gpu_holders,
                              holder_namespace=config.holder_namespace)
        self.writer = SimWriter(self)
        self.metrics = Metrics()
        self.reports: list[RoundReport] = []
        self.reconciler = Reconciler(config, self.writer, self.metrics, clock=lambda: self.now,
                                     wall=lambda: rfc3339(self.now), solver=solver or ticking_solver())

    # -- the API server -------------------------------------------------------------------------------------------
    def _stamp(self, obj: Obj) -> Obj:
        obj["metadata"]["resourceVersion"] = str(next(self._rv))
        self.api_writes += 1
        return obj

    def _emit(self, kind: str, event: str, obj: Obj) -> None:
        self._pending_watch.append((kind, event, copy.deepcopy(obj)))

    def _deliver(self) -> None:
        """The watches: every event since the last delivery, in order, to the reconciler and the extender."""
        events, self._pending_watch = self._pending_watch, []
        r = self.reconciler
        for kind, event, obj in events:
            deleted = event == "DELETED"
            if kind == "node":
                r.observe_node(read_node(obj), deleted)
                self.extender.on_node(event, obj)
            elif kind == "pod":
                r.observe_pod(read_pod(obj), deleted)
                self.extender.on_pod(event, obj)
            elif kind == "deployment":
                r.observe_deployment(read_deployment(obj), deleted)
            else:
                r.observe_model_serving(read_model_serving(obj), deleted)
                self.extender.on_model(event, obj)

    def api_patch_status(self, key: ObjectKey, status: Mapping[str, Any]) -> Obj:
        ms = self.servings.get(key)
        if ms is None:
            from kvsched.k8s.rest import ApiError
            raise ApiError(404, "NotFound", f"modelservings.kvsched.io \"{key.name}\" not found")
        merge_patch(ms, {"status": dict(status)})
        self._emit("modelserving", "MODIFIED", self._stamp(ms))
        return ms

    def api_owned_change(self, change: OwnedChange) -> Obj:
        if change.action == "create":
            if change.key in self.servings:
                return {}  # 409: ApiWriter reads it as done
            body = copy.deepcopy(dict(change.body))
            body.setdefault("metadata", {}).update(
                {"namespace": change.key.namespace, "name": change.key.name, "uid": f"uid-{next(self._uid)}",
                 "generation": 1, "creationTimestamp": rfc3339(self.now)})
            body.setdefault("status", {})
            self.servings[change.key] = body
            self._emit("modelserving", "ADDED", self._stamp(body))
            return body
        ms = self.servings.get(change.key)
        if change.action == "delete":
            if ms is not None:
                del self.servings[change.key]
                self.api_writes += 1
                self._emit("modelserving", "DELETED", ms)
            return {}
        if ms is None:
            from kvsched.k8s.rest import ApiError
            raise ApiError(404, "NotFound", f"modelservings.kvsched.io \"{change.key.name}\" not found")
        before = json.dumps(ms.get("spec"), sort_keys=True)
        merge_patch(ms, dict(change.body))
        if json.dumps(ms.get("spec"), sort_keys=True) != before:
            ms["metadata"]["generation"] += 1
        self._emit("modelserving", "MODIFIED", self._stamp(ms))
        return ms

    def api_patch_deployment(self, key: ObjectKey, patch: Mapping[str, Any]) -> Obj:
        dep = self.deployments[key]
        spec = dep["spec"]
        whole = {"template": spec["template"], "strategy": spec.setdefault("strategy", {})}
        before = json.dumps(whole, sort_keys=True)
        strategic_merge(whole, copy.deepcopy(dict(patch.get("spec") or {})))
        spec["template"], spec["strategy"] = whole["template"], whole["strategy"]
        if json.dumps(whole, sort_keys=True) != before:
            dep["metadata"]["generation"] = dep["metadata"].get("generation", 1) + 1
        if "replicas" in (patch.get("spec") or {}):  # a scale (make-before-break surges)
            spec["replicas"] = int(patch["spec"]["replicas"])
            dep["metadata"]["generation"] = dep["metadata"].get("generation", 1) + 1
        for name, value in ((patch.get("metadata") or {}).get("annotations") or {}).items():
            notes = dep["metadata"].setdefault("annotations", {})
            if value is None:
                notes.pop(name, None)
            else:
                notes[name] = value
        self._emit("deployment", "MODIFIED", self._stamp(dep))
        return dep

    def api_evict(self, key: ObjectKey) -> None:
        pod = self.pods.get(key)
        if pod is None:
            return  # 404: ApiWriter.evict reads a pod already gone as done
        if not pod["metadata"].get("deletionTimestamp"):
            meta = pod["metadata"]
            self.evictions.append(EvictionRecord(
                self.steps, meta["name"], self.lineage[meta["uid"]], meta.get("labels", {}).get(MODEL_LABEL, ""),
                pod["spec"].get("nodeName"), (meta.get("annotations") or {}).get(GPU_ANNOTATION)))
            self._start_deletion(pod)

    def api_annotate_pod(self, key: ObjectKey, annotations: Mapping[str, str]) -> Obj:
        pod = self.pods.get(key)
        if pod is None:
            return {}  # 404: ApiWriter.annotate_pod reads a pod already gone as done
        pod["metadata"].setdefault("annotations", {}).update(annotations)
        self._emit("pod", "MODIFIED", self._stamp(pod))
        return pod

    def api_holder_change(self, change: HolderChange) -> Obj:
        """Create a holder pod (a name taken: the existing pod, as ApiWriter.holder_change reads a 409 on a live
        pod) or start deleting one (gone: done)."""
        pod = self.pods.get(change.key)
        if change.action == "create":
            if pod is not None:
                return pod
            body = copy.deepcopy(dict(change.body or {}))
            body["metadata"].update({"uid": f"uid-{next(self._uid)}", "creationTimestamp": rfc3339(self.now)})
            body["status"] = {"phase": "Pending"}
            self.pods[change.key] = body
            self.lineage[body["metadata"]["uid"]] = "holder"
            self._emit("pod", "ADDED", self._stamp(body))
            return body
        if pod is not None and not pod["metadata"].get("deletionTimestamp"):
            self._start_deletion(pod)
        return {}

    def _start_deletion(self, pod: Obj) -> None:
        pod["metadata"]["deletionTimestamp"] = rfc3339(self.now)
        self.deleting_at[pod["metadata"]["uid"]] = self.steps
        owner = pod["metadata"].get("_deployment")
        if owner is not None:
            self.orphaned[ObjectKey(*owner)].append(self.lineage[pod["metadata"]["uid"]])
        self._emit("pod", "MODIFIED", self._stamp(pod))

    def _remove_pod(self, pod: Obj) -> None:
        key = ObjectKey(pod["metadata"]["namespace"], pod["metadata"]["name"])
        del self.pods[key]
        self.api_writes += 1
        self._emit("pod", "DELETED", pod)

    # -- building the world (the user's writes) -------------------------------------------------------------------
    def add_node(self, manifest: Mapping[str, Any]) -> None:
        node = copy.deepcopy(dict(manifest))
        node["metadata"].setdefault("uid", f"uid-{next(self._uid)}")
        node.setdefault("status", {})["conditions"] = [{"type": "Ready", "status": "True"}]
        self.nodes[node["metadata"]["name"]] = node
        self._emit("node", "ADDED", self._stamp(node))

    def delete_node(self, name: str) -> None:
        """The Node deleted; pod GC deletes its pods (at once: they can run nowhere)."""
        node = self.nodes.pop(name)
        self.api_writes += 1
        self._emit("node", "DELETED", node)
        for pod in [p for p in self.pods.values() if p["spec"].get("nodeName") == name]:
            if not pod["metadata"].get("deletionTimestamp"):
                self._start_deletion(pod)
            self._remove_pod(pod)
        self._controllers()

    def cordon(self, name: str, unschedulable: bool = True) -> None:
        node = self.nodes[name]
        node.setdefault("spec", {})["unschedulable"] = unschedulable
        self._emit("node", "MODIFIED", self._stamp(node))

    def add_deployment(self, manifest: Mapping[str, Any], create_pods: bool = True) -> None:
        """A Deployment created; its ReplicaSet creates its pods at once unless `create_pods` is False (then the
        caller adds the pods that exist with `add_pod`, and `start` fills up the rest)."""
        dep = copy.deepcopy(dict(manifest))
        dep["metadata"].update(namespace=dep["metadata"].get("namespace") or self.namespace,
                               uid=f"uid-{next(self._uid)}", generation=1)
        key = ObjectKey(dep["metadata"]["namespace"], dep["metadata"]["name"])
        self.deployments[key] = dep
        self._emit("deployment", "ADDED", self._stamp(dep))
        if create_pods:
            self._controllers()

    def delete_deployment(self, name: str) -> None:
        """The Deployment deleted: garbage collection deletes its pods and the ModelServing it owns."""
        key = ObjectKey(self.namespace, name)
        dep = self.deployments.pop(key)
        self.api_writes += 1
        self._emit("deployment", "DELETED", dep)
        for pod in self._pods_of(key):
            if not pod["metadata"].get("deletionTimestamp"):
                self._start_deletion(pod)
        ms = self.servings.get(key)
        if ms is not None and any(o.get("uid") == dep["metadata"]["uid"]
                                  for o in ms["metadata"].get("ownerReferences") or []):
            del self.servings[key]
            self.api_writes += 1
            self._emit("modelserving", "DELETED", ms)

    def annotate_deployment(self, name: str, annotations: Mapping[str, str]) -> None:
        dep = self.deployments[ObjectKey(self.namespace, name)]
        dep["metadata"].setdefault("annotations", {}).update(annotations)
        self._emit("deployment", "MODIFIED", self._stamp(dep))

    def scale(self, name: str, replicas: int) -> None:
        dep = self.deployments[ObjectKey(self.namespace, name)]
        dep["spec"]["replicas"] = replicas
        dep["metadata"]["generation"] = dep["metadata"].get("generation", 1) + 1
        self._emit("deployment", "MODIFIED", self._stamp(dep))
        self._controllers()

    def add_pod(self, deployment: str, node: str | None = None, gpu: int | None = None,
                fraction: float | None = None, ready: bool = True, terminating: bool = False) -> Obj:
        """A pod of `deployment`'s current template that exists already (before the reconciler starts): bound to
        (node, gpu) with a share, or pending; Ready or not; terminating or not."""
        key = ObjectKey(self.namespace, deployment)
        pod = self._new_pod(self.deployments[key], self._new_lineage())
        if node is not None:
            pod["spec"]["nodeName"] = node
            notes = pod["metadata"].setdefault("annotations", {})
            if gpu is not None:
                notes[GPU_ANNOTATION] = str(gpu)
            if fraction is not None:
                notes[MEMORY_FRACTION_ANNOTATION] = share_text(fraction)
            self.bound_at[pod["metadata"]["uid"]] = self.steps - self.ready_after
            if ready:
                pod["status"]["conditions"] = [{"type": "Ready", "status": "True"}]
                pod["status"]["phase"] = "Running"
        self._emit("pod", "ADDED", self._stamp(pod))
        if terminating:
            self._start_deletion(pod)
        return pod

    # -- ReplicaSets and Deployments ------------------------------------------------------------------------------
    def _new_lineage(self) -> str:
        return f"r{next(self._lineages)}"

    @staticmethod
    def template_hash(dep: Obj) -> str:
        return hashlib.sha256(json.dumps(dep["spec"]["template"], sort_keys=True).encode()).hexdigest()[:10]

    def _new_pod(self, dep: Obj, lineage: str) -> Obj:
        template = copy.deepcopy(dep["spec"]["template"])
        meta = template.get("metadata") or {}
        h = self.template_hash(dep)
        suffix = "".join(self.rng.choice("bcdfghjklmnpqrstvwxz2456789") for _ in range(5))
        name = f"{dep['metadata']['name']}-{h}-{suffix}"
        uid = f"uid-{next(self._uid)}"
        pod = {
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": dep["metadata"]["namespace"], "uid": uid,
                         "labels": {**(meta.get("labels") or {}), "pod-template-hash": h},
                         "annotations": dict(meta.get("annotations") or {}),
                         "creationTimestamp": rfc3339(self.now),
                         # the sim's own bookkeeping (an ownerReference to the ReplicaSet in a real cluster)
                         "_deployment": [dep["metadata"]["namespace"], dep["metadata"]["name"]]},
            "spec": template.get("spec") or {},
            "status": {"phase": "Pending"},
        }
        self.lineage[uid] = lineage
        self.pods[ObjectKey(pod["metadata"]["namespace"], name)] = pod
        return pod

    def _pods_of(self, key: ObjectKey) -> list[Obj]:
        return [p for p in self.pods.values()
                if tuple(p["metadata"].get("_deployment") or ()) == (key.namespace, key.name)]

    @staticmethod
    def _ready(pod: Obj) -> bool:
        return any(c.get("type") == "Ready" and c.get("status") == "True"
                   for c in pod.get("status", {}).get("conditions") or [])

    def _create_for(self, key: ObjectKey, dep: Obj) -> None:
        queue = self.orphaned[key]
        lineage = queue.pop(0) if queue else self._new_lineage()
        pod = self._new_pod(dep, lineage)
        self._emit("pod", "ADDED", self._stamp(pod))

    def _controllers(self) -> None:
        """The Deployment and ReplicaSet controllers, one pass over every Deployment."""
        for key, dep in list(self.deployments.items()):
            replicas = int(dep["spec"].get("replicas", 1))
            h = self.template_hash(dep)
            live = [p for p in self._pods_of(key) if not p["metadata"].get("deletionTimestamp")]
            new = [p for p in live if p["metadata"]["labels"].get("pod-template-hash") == h]
            old = [p for p in live if p not in new]
            strategy = dep["spec"].get("strategy") or {}
            if old and strategy.get("type") == "Recreate":
                for p in old:
                    self._start_deletion(p)
                old = []
            if old:
                rolling = strategy.get("rollingUpdate") or {}
                surge = _int_or_percent(rolling.get("maxSurge", "25%"), replicas, round_up=True)
                unavailable = _int_or_percent(rolling.get("maxUnavailable", "25%"), replicas, round_up=False)
                if surge == 0 and unavailable == 0:
                    unavailable = 1
                # Old pods that are not available go first (they cost no availability), then as many available
                # ones as keep replicas - maxUnavailable available.
                available = sum(self._ready(p) for p in live)
                for p in sorted(old, key=lambda p: (self._ready(p), p["metadata"]["name"])):
                    if self._ready(p):
                        if available - 1 < replicas - unavailable:
                            break
                        available -= 1
                    self._start_deletion(p)
                    old.remove(p)
                for _ in range(max(0, min(replicas, replicas + surge - len(old)) - len(new))):
                    self._create_for(key, dep)
                continue
            if len(new) < replicas:
                for _ in range(replicas - len(new)):
                    self._create_for(key, dep)
            elif len(new) > replicas:
                # The ReplicaSet's order: unbound, not Ready, lowest pod-deletion-cost, newest first.
                doomed = sorted(new, key=lambda p: (p["spec"].get("nodeName") is not None, self._ready(p),
                                                    int((p["metadata"].get("annotations") or {}).get(
                                                        POD_DELETION_COST_ANNOTATION, "0")),
                                                    [-ord(c) for c in p["metadata"]["creationTimestamp"]]))
                for p in doomed[:len(new) - replicas]:
                    self._start_deletion(p)

    # -- kube-scheduler with the extender, and the kubelet -----------------------------------------------------
    def _managed(self, pod: Obj) -> bool:
        return (MODEL_LABEL in (pod["metadata"].get("labels") or {})
                and pod["spec"].get("schedulerName") == self.config.scheduler_name)

    def _schedule(self) -> int:
        """Bind every pending pod that can bind now (in name order). Returns how many were bound."""
        bound = 0
        pending = sorted((p for p in self.pods.values()
                          if not p["spec"].get("nodeName") and not p["metadata"].get("deletionTimestamp")),
                         key=lambda p: p["metadata"]["name"])
        for pod in pending:
            candidates = [n for n, node in sorted(self.nodes.items())
                          if not (node.get("spec") or {}).get("unschedulable") and self._ready(node)
                          and node_fits_affinity(pod, node)]
            if not candidates:
                continue
            meta = pod["metadata"]
            if pod["spec"].get("schedulerName", "default-scheduler") != self.config.scheduler_name:
                self._bind(pod, candidates[0], None)
                bound += 1
                continue
            if not self._managed(pod):
                # A GPU holder (pinned to its node) binds where a GPU is left; other pods are not ours.
                fits = [n for n in candidates if self._gpus_left(n) >= pod_gpu_request(pod["spec"])]
                if HOLDER_LABEL in (meta.get("labels") or {}) and fits:
                    self._bind(pod, fits[0], None)
                    bound += 1
                continue
            ref = PodRef(meta["namespace"], meta["name"], meta["uid"],
                         f"{meta['namespace']}/{meta['labels'][MODEL_LABEL]}")
            passed = self.extender.filter(ref, candidates).passed
            if not passed:
                continue
            scores = self.extender.score(ref, passed)
            best = max(scores.get(n, 0) for n in passed)
            node = self.rng.choice([n for n in passed if scores.get(n, 0) == best])
            slot = self.extender.reserve(ref, node)
            if not isinstance(slot, PlannedSlot):
                continue
            self._bind(pod, node, slot)
            bound += 1
        return bound

    def _gpus_left(self, node: str) -> int:
        """`nvidia.com/gpu` of the node minus what the live pods bound there request (the scheduler's fit)."""
        capacity = int((self.nodes[node].get("status") or {}).get("capacity", {}).get(GPU_RESOURCE, 0))
        return capacity - sum(pod_gpu_request(p["spec"]) for p in self.pods.values()
                              if p["spec"].get("nodeName") == node)

    def _bind(self, pod: Obj, node: str, slot: PlannedSlot | None) -> None:
        if slot is not None and self.config.start_timeout_s > 0:  # the start gate: nobody else starts on that GPU
            starting = [p["metadata"]["name"] for p in self.live_pods()
                        if p["spec"].get("nodeName") == node and not self._ready(p)
                        and (p["metadata"].get("annotations") or {}).get(GPU_ANNOTATION) == str(slot.gpu)
                        and p["metadata"]["uid"] in self.bound_at_s  # pods added bound have no bind time
                        and self.now - self.bound_at_s[p["metadata"]["uid"]] < self.config.start_timeout_s]
            assert not starting, f"{pod['metadata']['name']} bound to {node}/{slot.gpu} while {starting} start there"
        if slot is not None:
            device = self.extender.device_of(node, slot.gpu)
            assert device is not None, f"the extender reserved {node} GPU {slot.gpu} without a device"
            pod["metadata"].setdefault("annotations", {}).update(
                {GPU_ANNOTATION: str(slot.gpu), VISIBLE_DEVICES_ANNOTATION: device,
                 MEMORY_FRACTION_ANNOTATION: share_text(slot.memory_fraction)})
        pod["spec"]["nodeName"] = node
        # The API server's Binding sets PodScheduled (the start gate times a starting pod from it).
        pod.setdefault("status", {}).setdefault("conditions", []).append(
            {"type": "PodScheduled", "status": "True", "lastTransitionTime": rfc3339(self.now)})
        self.bound_at[pod["metadata"]["uid"]] = self.steps
        self.bound_at_s[pod["metadata"]["uid"]] = self.now
        self._emit("pod", "MODIFIED", self._stamp(pod))
        self.extender.on_pod("MODIFIED", copy.deepcopy(pod))  # the reservation turns into a holder

    def _kubelet(self) -> int:
        changed = 0
        for pod in list(self.pods.values()):
            uid = pod["metadata"]["uid"]
            if pod["metadata"].get("deletionTimestamp"):
                if self.steps - self.deleting_at.get(uid, self.steps) >= self.terminate_after:
                    self._remove_pod(pod)
                    changed += 1
            elif pod["spec"].get("nodeName") and HOLDER_LABEL in (pod["metadata"].get("labels") or {}):
                # The device plugin gives the holder a GPU and `kvsched gpu-holder` reports its UUID at once.
                notes = pod["metadata"].setdefault("annotations", {})
                if GPU_UUID_ANNOTATION not in notes:
                    notes[GPU_UUID_ANNOTATION] = f"GPU-{uid}"
                    pod["status"] = {"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]}
                    self._emit("pod", "MODIFIED", self._stamp(pod))
                    changed += 1
            elif pod["spec"].get("nodeName") and not self._ready(pod) \
                    and self.steps - self.bound_at.get(uid, self.steps) >= self.ready_after:
                scheduled = [c for c in pod.get("status", {}).get("conditions") or [] if c["type"] == "PodScheduled"]
                pod["status"] = {"phase": "Running", "conditions": [*scheduled, {"type": "Ready", "status": "True"}]}
                self._emit("pod", "MODIFIED", self._stamp(pod))
                changed += 1
        return changed

    # -- running it ---------------------------------------------------------------------------------------------
    def start(self, leader: bool = True) -> None:
        """The informers' first lists are in: the reconciler is synced (and leads)."""
        self._controllers()
        self._deliver()
        self.reconciler.set_synced(True)
        self.reconciler.set_leader(leader)

    def step(self) -> int:
        """One round of everyone; returns the number of API writes it made (0: the world is at a fixpoint)."""
        before = self.api_writes
        self.steps += 1
        self.now += self.step_s
        self._deliver()
        self.reports.append(self.reconciler.reconcile_once())
        self._controllers()
        self._deliver()
        self._schedule()
        self._deliver()
        self._kubelet()
        self._controllers()
        self._deliver()
        return self.api_writes - before

    def _kubelet_pending(self) -> bool:
        """Whether the kubelet still has a pod to make Ready or to remove (a quiet step is no fixpoint then)."""
        return any(p["metadata"].get("deletionTimestamp") or (p["spec"].get("nodeName") and not self._ready(p))
                   for p in self.pods.values())

    def settle(self, max_steps: int) -> int:
        """Step until a step writes nothing and the kubelet has nothing left to do (returns the steps taken, that one
        included); AssertionError with what
        is still moving when `max_steps` pass first."""
        for n in range(1, max_steps + 1):
            if self.step() == 0 and not self._kubelet_pending():
                return n
        raise AssertionError(f"no fixpoint after {max_steps} steps; the last ones wrote: "
                             f"{self.writer.log[-12:]}; {self.describe()}")

    def idle(self, rounds: int) -> tuple[Writes, list[tuple[int, str, str]]]:
        """`rounds` more steps of an unchanged world: the reconciler's writes, and the log of them."""
        before, start = dataclasses.replace(self.writer.writes), len(self.writer.log)
        for _ in range(rounds):
            self.step()
        return self.writer.writes.minus(before), self.writer.log[start:]

    # -- reading it -----------------------------------------------------------------------------------------------
    def starting(self) -> list[str]:
        """Live pods bound and not Ready yet: the kubelet will make them Ready, so a quiet step is no fixpoint."""
        return [p["metadata"]["name"] for p in self.live_pods() if p["spec"].get("nodeName") and not self._ready(p)]

    def max_slots_per_gpu(self) -> int:
        """The most replicas the statuses plan on one GPU (the start gate starts them one after another)."""
        per_gpu: dict[tuple[str, int], int] = defaultdict(int)
        for ms in self.servings.values():
            for s in (ms.get("status") or {}).get("slots") or []:
                per_gpu[(s["node"], s["gpu"])] += 1
        return max(per_gpu.values(), default=0)

    def live_pods(self) -> list[Obj]:
        return [p for p in self.pods.values() if not p["metadata"].get("deletionTimestamp")]

    def serving(self, name: str) -> Obj:
        return self.servings[ObjectKey(self.namespace, name)]

    def slots(self, name: str) -> set[tuple[str, int]]:
        return {(s["node"], s["gpu"]) for s in (self.serving(name).get("status") or {}).get("slots") or []}

    def held(self, name: str) -> list[tuple[str, int]]:
        return [(p["spec"]["nodeName"], int(p["metadata"]["annotations"][GPU_ANNOTATION]))
                for p in self.live_pods() if (p["metadata"].get("labels") or {}).get(MODEL_LABEL) == name
                and p["spec"].get("nodeName") and GPU_ANNOTATION in (p["metadata"].get("annotations") or {})]

    def condition(self, name: str, kind: str) -> dict[str, Any]:
        return next((c for c in (self.serving(name).get("status") or {}).get("conditions") or []
                     if c.get("type") == kind), {})

    def misplaced(self) -> list[str]:
        """Sentences for each way the world is not where the statuses say it should be."""
        out = []
        for key, dep in sorted(self.deployments.items()):
            name = key.name
            if key not in self.servings:
                out.append(f"{name}: no ModelServing")
                continue
            status = self.servings[key].get("status") or {}
            slots = self.slots(name)
            held = self.held(name)
            if sorted(held) != sorted(set(held)):
                out.append(f"{name}: two pods on one GPU {held}")
            outside = sorted(set(held) - slots)
            # A pod off its model's slots may stay only while the model has replicas the plan cannot place (a
            # cordoned node's pods with nowhere to go keep serving).
            if len(outside) > max(0, int(dep["spec"].get("replicas", 1)) - len(slots)):
                out.append(f"{name}: pods on {outside} outside its slots {sorted(slots)}")
            pending = [p["metadata"]["name"] for p in self.live_pods()
                       if (p["metadata"].get("labels") or {}).get(MODEL_LABEL) == name and not p["spec"].get("nodeName")]
            if pending and len(slots) > len(held):
                out.append(f"{name}: pods {pending} pending while slots {sorted(slots - set(held))} are free")
            if self.condition(name, "Migrating").get("status") == "True":
                out.append(f"{name}: Migrating ({self.condition(name, 'Migrating').get('message')})")
            if status.get("replicas") != dep["spec"].get("replicas"):
                out.append(f"{name}: status.replicas {status.get('replicas')} != {dep['spec'].get('replicas')}")
        terminating = [p["metadata"]["name"] for p in self.pods.values() if p["metadata"].get("deletionTimestamp")]
        if terminating:
            out.append(f"pods terminating: {terminating}")
        return out

    def describe(self) -> str:
        pending = sum(1 for p in self.live_pods() if not p["spec"].get("nodeName"))
        return (f"step {self.steps}: {len(self.live_pods())} live pods ({pending} pending), "
                f"{len(self.evictions)} evictions so far; not settled: {self.misplaced()[:6]}")

    def evictions_since(self, step: int) -> list[EvictionRecord]:
        return [e for e in self.evictions if e.step > step]

    @staticmethod
    def repeated(evictions: Iterable[EvictionRecord]) -> dict[str, list[EvictionRecord]]:
        """Replica lineages evicted more than once among `evictions`."""
        by: dict[str, list[EvictionRecord]] = defaultdict(list)
        for e in evictions:
            by[e.lineage].append(e)
        return {k: v for k, v in by.items() if len(v) > 1}


def describe_repeats(repeats: Mapping[str, Sequence[EvictionRecord]]) -> str:
    parts = []
    for lineage, records in sorted(repeats.items(), key=lambda kv: -len(kv[1]))[:5]:
        where = ", ".join(f"step {r.step} pod {r.pod} on {r.node}/{r.gpu}" for r in records[:6])
        parts.append(f"replica {lineage} of {records[0].model} evicted {len(records)} times ({where})")
    return "; ".join(parts)


def model_counts(evictions: Iterable[EvictionRecord]) -> Counter[str]:
    return Counter(e.model for e in evictions)
