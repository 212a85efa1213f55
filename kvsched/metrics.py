"""Prometheus metrics of kvsched: the one registry and every metric it exports (prefix `kvsched_`, base units).

The controller records plans, models and migrations; the extender records its requests and bind conflicts; both
run in one process under `kvsched serve`, so they share one `Metrics` object. Nothing here imports the packer or
Kubernetes: callers pass plain numbers. The Grafana dashboard (helm/kvsched/dashboards/) queries these names.
Called by: kvsched.controller, kvsched.extender, the CLI (`kvsched serve/controller/extender`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

CONTENT_TYPE = CONTENT_TYPE_LATEST

# Re-plans take milliseconds for a handful of models and up to tens of seconds at thousands of GPUs.
_PLACEMENT_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
# Extender verbs answer in about a millisecond; bind includes two API calls (tens of milliseconds).
_REQUEST_BUCKETS_S = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)

MODEL_STATES = ("placed", "partial", "unschedulable", "invalid", "migrating")
HOLDER_STATES = ("held", "waiting")
# kvsched_migrations_total{reason}: a move (Rebalance), a move off a node that left the pool (NodeUnavailable), a
# restart in place with a new memory share (Resize).
MIGRATION_REASONS = ("Rebalance", "NodeUnavailable", "Resize")


@dataclass(frozen=True)
class GpuSample:
    """One GPU of the current plan: its KVPR (inf allowed) and the bytes of weights planned on it."""

    node: str
    gpu: int
    kvpr: float
    memory_used_bytes: float


@dataclass
class Metrics:
    """Every kvsched metric on its own registry (tests build one each; the process builds one)."""

    registry: CollectorRegistry = field(default_factory=lambda: CollectorRegistry(auto_describe=True))

    def __post_init__(self) -> None:
        r = self.registry
        self.max_kvpr = Gauge("kvsched_max_kvpr", "Largest KV-cache pressure ratio over all GPUs of the current "
                              "plan (load / free GiB).", registry=r)
        self.kvpr_lower_bound = Gauge("kvsched_kvpr_lower_bound", "Proven lower bound on the optimal max KVPR "
                                      "of the current models and GPUs.", registry=r)
        self.gpu_kvpr = Gauge("kvsched_gpu_kvpr", "KVPR of one GPU in the current plan.", ["node", "gpu"],
                              registry=r)
        self.gpu_memory_used_bytes = Gauge("kvsched_gpu_memory_used_bytes", "Bytes of model weights planned on "
                                           "one GPU.", ["node", "gpu"], registry=r)
        self.packer_retunes = Counter("kvsched_packer_retunes", "Mid-pack raises of the target T in the plans "
                                      "actually solved.", registry=r)
        self.placement_duration_seconds = Histogram("kvsched_placement_duration_seconds", "Seconds one re-plan "
                                                    "took (packer solve).", buckets=_PLACEMENT_BUCKETS_S,
                                                    registry=r)
        self.models = Gauge("kvsched_models", "Models (ModelServings) by state.", ["state"], registry=r)
        self.migrations = Counter("kvsched_migrations", "Replica migrations started (evictions), by reason.",
                                  ["reason"], registry=r)
        for reason in MIGRATION_REASONS:
            self.migrations.labels(reason=reason)  # exported from 0: a cluster left alone shows 0, not no data
        self.reconcile_rounds = Counter("kvsched_reconcile_rounds", "Decisions the controller's loop made (each "
                                        "over the whole cached world; a re-plan only when a model or the GPUs "
                                        "changed).", registry=r)
        self.replan_steps = Counter("kvsched_replan_steps", "Migration steps the controller decided on for the "
                                    "plan in force, each counted once when first decided: kind move (a replica to "
                                    "another GPU) or resize (a restart in place with a new memory share).",
                                    ["kind"], registry=r)
        for kind in ("move", "resize"):
            self.replan_steps.labels(kind=kind)  # exported from 0: evictions are compared against it
        self.is_leader = Gauge("kvsched_is_leader", "1 when this process holds the leader Lease.", registry=r)
        self.cache_synced = Gauge("kvsched_cache_synced", "1 once every watch has listed its objects.",
                                  registry=r)
        self.extender_requests = Counter("kvsched_extender_requests", "Extender requests by verb and outcome.",
                                         ["verb", "outcome"], registry=r)
        self.extender_request_duration_seconds = Histogram(
            "kvsched_extender_request_duration_seconds", "Seconds to answer one extender request, by verb.",
            ["verb"], buckets=_REQUEST_BUCKETS_S, registry=r)
        self.watch_relists = Counter("kvsched_watch_relists", "Lists again after the first (a watch "
                                     "failed, or its resourceVersion was gone: 410), by collection.", ["resource"], registry=r)
        self.watch_errors = Counter("kvsched_watch_errors", "Failed lists and watches (dropped connection, "
                                    "apiserver down, 5xx) retried with backoff, by collection.", ["resource"],
                                    registry=r)
        self.bind_conflicts = Counter("kvsched_bind_conflicts", "Binds refused because the slot was taken "
                                      "meanwhile.", registry=r)
        self.start_gate_refusals = Counter(
            "kvsched_start_gate_refusals", "Managed pods the extender turned away because a pod is starting on "
            "the GPU of a slot (one engine starting per GPU at a time): filter answers that passed no node while "
            "some node waited at a start gate, and binds refused at one, by verb.", ["verb"], registry=r)
        for verb in ("filter", "bind"):
            self.start_gate_refusals.labels(verb=verb)  # exported from 0
        self.start_gate_waiting_pods = Gauge(
            "kvsched_start_gate_waiting_pods", "Pending managed pods that could bind now but for a start gate "
            "(a pod starting on the GPU), in the controller's last decision.", registry=r)
        self.restarting_pods = Gauge(
            "kvsched_restarting_pods", "Managed pods restarting (stopping, or starting and not Ready yet) in the "
            "controller's last decision: what the disruption budget (--max-restarting) counts.", registry=r)
        self.gpu_holders = Gauge("kvsched_gpu_holders", "GPU holder pods of kvsched, by state: held (bound, its "
                                 "GPU's UUID reported: the device plugin gave kvsched that GPU) or waiting (created, "
                                 "not reporting yet: pending, or starting).", ["state"], registry=r)
        for holder_state in HOLDER_STATES:
            self.gpu_holders.labels(state=holder_state).set(0)
        for state in MODEL_STATES:
            self.models.labels(state=state).set(0)

    def record_plan(self, max_kvpr: float, lower_bound: float, retunes: int, solve_seconds: float,
                    gpus: Iterable[GpuSample]) -> None:
        """Publish one solved plan: gauges replaced (GPUs no longer planned disappear), counters advanced."""
        self.max_kvpr.set(max_kvpr)
        self.kvpr_lower_bound.set(lower_bound)
        self.packer_retunes.inc(max(retunes, 0))
        self.placement_duration_seconds.observe(solve_seconds)
        self.gpu_kvpr.clear()
        self.gpu_memory_used_bytes.clear()
        for g in gpus:
            self.gpu_kvpr.labels(node=g.node, gpu=str(g.gpu)).set(g.kvpr)
            self.gpu_memory_used_bytes.labels(node=g.node, gpu=str(g.gpu)).set(g.memory_used_bytes)

    def record_holders(self, held: int, waiting: int) -> None:
        """Set the GPU holders gauge."""
        self.gpu_holders.labels(state="held").set(held)
        self.gpu_holders.labels(state="waiting").set(waiting)

    def record_models(self, counts: dict[str, int]) -> None:
        """Set the models-by-state gauge; states missing from `counts` are 0."""
        for state in MODEL_STATES:
            self.models.labels(state=state).set(counts.get(state, 0))

    def watch_known(self, resource: str) -> None:
        """An informer of `resource` exists: its relist and error counters are exported from 0 (not absent)."""
        self.watch_relists.labels(resource=resource)
        self.watch_errors.labels(resource=resource)

    def watch_relisted(self, resource: str) -> None:
        """One informer of `resource` (e.g. "pods", "deployments.apps") listed again after 410 Gone."""
        self.watch_relists.labels(resource=resource).inc()

    def watch_failed(self, resource: str) -> None:
        """One list or watch of `resource` failed and will be retried after a backoff."""
        self.watch_errors.labels(resource=resource).inc()

    def exposition(self) -> bytes:
        """The text format for GET /metrics."""
        return generate_latest(self.registry)
