"""Settings of kvsched's long-running processes, one frozen dataclass per concern.

Every field says its unit and why its default is what it is. The CLI builds these from flags and environment
variables (`KVSCHED_<FIELD>` in upper case; a flag wins over the environment); tests build them directly.
Called by: kvsched.cli, kvsched.extender.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import inspect
import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from kvsched.api.names import (
    DEFAULT_HOLDER_PRIORITY_CLASS,
    DEFAULT_HOLDER_SERVICE_ACCOUNT,
    DEFAULT_SCHEDULER_NAME,
)
from kvsched.units import UnitError, decimal_number, headroom_gib

ENV_PREFIX = "KVSCHED_"
T = TypeVar("T")

# Memory headroom on a real GPU (docs/packer.md, "Memory on a real GPU", gives the sources of these figures).
# The packer itself defaults to none; `kvsched plan` and the controller plan with these.
DEFAULT_GPU_MEMORY_RESERVE_GIB = 1.0
"""Per GPU, never planned: an H100 80GB reports 81559 MiB to NVML, 361 MiB less than a label of 80Gi, and 80 GB cards
report ~79.2 GiB to CUDA, whose total vLLM's start-up check multiplies by the fraction: ~0.8 GiB below 80Gi."""
DEFAULT_ENGINE_OVERHEAD_GIB = 3.0
"""Per replica, inside its fraction besides weights and KV cache: vLLM's profiled peak activation plus non-torch
memory (1.3-2.5 GiB for 7B-8B models with the default batch) plus CUDA graphs (0.1-0.4 GiB)."""
DEFAULT_ENGINE_CONTEXT_GIB = 0.5
"""Per replica, outside its fraction: the CUDA context of the engine process (~300-400 MiB with CUDA's lazy module
loading), created before the engine's start-up check."""


@dataclass(frozen=True)
class ExtenderSettings:
    """The scheduler extender (`kvsched extender`)."""

    host: str = "127.0.0.1"
    """Address to listen on. Loopback: the kvsched kube-scheduler in the same pod calls it on localhost, and
    /bind writes to the API with kvsched's credentials, so nothing else should reach it (`kvsched serve` exports
    /metrics on its metrics port; a standalone extender scraped by Prometheus needs `--host` set to the pod IP
    and a NetworkPolicy)."""

    port: int = 8888
    """TCP port for the extender's HTTP API (filter, prioritize, bind, healthz, readyz, metrics)."""

    scheduler_name: str = DEFAULT_SCHEDULER_NAME
    """`spec.schedulerName` of managed pods: a pod with the model label but another scheduler passes through."""

    max_request_bytes: int = 8 * 2**20
    """Largest request body accepted, in bytes (larger: 413). With `nodeCacheCapable: false` the scheduler sends
    every candidate Node object (about 2-4 KiB each), so 8 MiB covers ~2000 nodes; with names only, a request
    is about 10 KiB. The bound keeps one bad client from holding gigabytes."""

    kubeconfig: str | None = None
    """Path of a kubeconfig file; None: $KUBECONFIG, then the in-cluster service account, then ~/.kube/config."""

    sync_timeout_s: float = 60.0
    """Seconds after start by which the watches' first lists should be in; past it the extender logs a warning
    (RBAC? the CRD missing?) and keeps trying, /readyz false. Long enough for a big cluster's first pod list,
    short enough to surface a broken install."""

    start_timeout_s: float = 300.0
    """Seconds a managed pod bound to a GPU and not yet Ready keeps every other managed pod off that GPU (one engine
    starts per GPU at a time: engines size their KV cache from the free memory they profile at start-up). Past it
    the pod stops holding the GPU, Ready or not, so a crash-looping pod cannot block it for ever. 300 s covers
    loading a 70B model's weights from a local disk and capturing CUDA graphs; 0 turns the gate off. Read by the
    extender (filter, bind) and the controller (nudges, when to wake up)."""

    gpu_holders: bool = True
    """Bind only to GPUs whose holder pod has reported its UUID, and write that UUID for the pod's
    NVIDIA_VISIBLE_DEVICES (off: the GPU's index). Must match the controller's `--gpu-holders`."""

    holder_namespace: str = "kvsched-system"
    """Namespace of the GPU holder pods (the chart's release namespace); holder pods elsewhere are ignored."""

    bind_timeout_s: float = 10.0
    """Read timeout in seconds of each API call a bind makes (annotate, Binding); kube-scheduler's own extender
    httpTimeout defaults to 30 s, and a bind makes up to three calls."""

    log_level: str = "info"
    """Python logging level name (debug, info, warning, error)."""

    gpu_memory_reserve_gib: float = DEFAULT_GPU_MEMORY_RESERVE_GIB
    """GiB (or a quantity) of every GPU the slot rule never gives a replica; must be the controller's (`kvsched serve`: one flag)."""

    engine_overhead_gib: float = DEFAULT_ENGINE_OVERHEAD_GIB
    """GiB each replica's engine needs inside its share besides its weights, for models without
    `spec.engineOverhead`; must be the controller's."""

    engine_context_gib: float = DEFAULT_ENGINE_CONTEXT_GIB
    """GiB each replica's engine process takes outside its share (CUDA context); must be the controller's."""


@dataclass(frozen=True)
class ControllerSettings:
    """The controller (`kvsched controller`, or half of `kvsched serve`). See docs/controller.md."""

    kubeconfig: str | None = None
    """Path of a kubeconfig file; None: $KUBECONFIG, then the in-cluster service account, then ~/.kube/config."""

    node_selector: str = ""
    """Label selector of the nodes kvsched may plan on (kubectl syntax: `pool=gpu,!spot`). Empty: every node
    with `nvidia.com/gpu` capacity and a GPU memory label, so a cluster with GPU Feature Discovery works as
    installed. Set it (and taint those nodes) to keep a pool apart from other GPU workloads."""

    namespace: str = ""
    """Watch ModelServings, Deployments and Pods in this namespace only (empty: all namespaces). Nodes are always
    cluster-wide; GPU pods of other namespaces are then not seen, so give such a controller its own pool."""

    scheduler_name: str = DEFAULT_SCHEDULER_NAME
    """`spec.schedulerName` the controller writes on managed templates: the kube-scheduler profile that calls
    kvsched's extender (the chart's default)."""

    runtime_class_name: str = "nvidia"
    """`spec.runtimeClassName` the controller writes on managed templates: the runtime class whose container runtime
    hands a pod the GPU named by `NVIDIA_VISIBLE_DEVICES` although the pod requests no `nvidia.com/gpu`. The GPU
    Operator's `nvidia` class does, in CDI and legacy mode alike; the node's default runtime does not since GPU
    Operator v25.10 (CDI by default). Empty: leave the templates' runtime class as their owners wrote it."""

    gpu_holders: bool = True
    """Hold every GPU the plan uses with a holder pod requesting `nvidia.com/gpu: 1` on its node, so that the device
    plugin allocates that GPU to kvsched and neither other GPU pods nor quotas can miss it; pods get their GPU by
    the UUID the holder reports. Off only for a pool no other pod requests `nvidia.com/gpu` on (docs/deploy.md)."""

    holder_namespace: str = "kvsched-system"
    """Namespace of the GPU holder pods (the chart's release namespace: its ResourceQuota sees the held GPUs)."""

    holder_image: str = "kvsched/kvsched:latest"
    """Image of the holder pods; it runs `kvsched gpu-holder`, so kvsched's own (the chart sets its image)."""

    holder_priority_class: str = DEFAULT_HOLDER_PRIORITY_CLASS
    """PriorityClass of the holder pods (the chart creates it, above the default 0) so that ordinary pods do not
    preempt them; empty: none."""

    holder_service_account: str = DEFAULT_HOLDER_SERVICE_ACCOUNT
    """ServiceAccount of the holder pods: they get and patch their own pod (the chart creates it and its Role)."""

    stability_threshold: float = 0.05
    """Keep the running placement unless a new plan's max KVPR is lower by more than this ratio: every move
    restarts a replica (minutes of weight loading), so 5% is what a move must buy."""

    max_migrations: int | None = None
    """Cap on the moves of one re-plan (None: no cap); the packer plans the best it can within it."""

    gpu_memory_reserve_gib: float = DEFAULT_GPU_MEMORY_RESERVE_GIB
    """GiB (a number, or a quantity such as 1Gi) of every GPU never planned: the gap between a node's GPU memory label and the total the device reports to
    CUDA, plus what the driver holds before any engine starts (1 GiB: an 80 GB card labelled 80Gi reports ~79.2 GiB
    to CUDA). The extender's slot rule must use the same value (`kvsched serve` shares one flag)."""

    engine_overhead_gib: float = DEFAULT_ENGINE_OVERHEAD_GIB
    """GiB (or a quantity) each replica's engine needs inside its memory fraction besides weights and KV cache (activations, CUDA
    graphs, workspaces; vLLM profiles 1.3-2.9 GiB for 7B-8B models); a model's `spec.engineOverhead` (or its
    Deployment's `kvsched.io/engine-overhead`) overrides it."""

    engine_context_gib: float = DEFAULT_ENGINE_CONTEXT_GIB
    """GiB (or a quantity) each replica's engine process takes outside its memory fraction: its CUDA context (~0.3-0.4 GiB with
    CUDA 12's lazy loading), created before the start-up check."""

    start_timeout_s: float = 300.0
    """Seconds a managed pod bound to a GPU and not yet Ready keeps every other managed pod off that GPU (one engine
    starts per GPU at a time: engines size their KV cache from the free memory they profile at start-up). Past it
    the pod stops holding the GPU, Ready or not, so a crash-looping pod cannot block it for ever. 300 s covers
    loading a 70B model's weights from a local disk and capturing CUDA graphs; 0 turns the gate off. Read by the
    extender (filter, bind) and the controller (nudges, when to wake up)."""

    max_restarting: int = 4
    """Disruption budget, cluster-wide: at most this many managed pods restarting at once for migration steps (a
    pod stopping and its replacement starting count as one). Steps that touch disjoint GPUs start together within
    it. 4 lets a node loss at 128 GPUs converge several times faster than one at a time while most replicas keep
    serving; 1: one step at a time (the behaviour before waves)."""

    max_restarting_per_node: int = 1
    """Disruption budget per node: at most this many managed pods starting on one node at once (each loads its
    weights through the node's disk and network). 1 keeps a node's weight loads from slowing one another down."""

    make_before_break: bool = True
    """Moves whose target GPU has room while the old replica still runs start the replacement first: the
    Deployment is surged by one replica and scaled back once the new one is Ready (the ReplicaSet deletes the old
    pod, marked with the lowest pod-deletion-cost), so a model keeps its Ready replicas through a move. Off:
    every move evicts first. A Deployment annotated `kvsched.io/make-before-break: "false"` (one whose replicas
    an autoscaler owns) is always moved evict-first."""

    pod_disruption_budget: bool = False
    """Give every managed model a PodDisruptionBudget that the controller keeps (`kvsched-<model>`, selecting the
    model's pods by `kvsched.io/model`, owned by its ModelServing), so that kubectl drain, the cluster autoscaler
    and kvsched's own evictions leave each model its replicas but `pod_disruption_budget_max_unavailable`. A
    Deployment annotated `kvsched.io/pod-disruption-budget: "true"`/`"false"` overrides it for its model; a model
    whose pods a PDB of someone else's already selects gets none (an eviction refuses a pod two PDBs select). Off
    by default: a PDB also holds back node drains, which the cluster's operators should choose."""

    pod_disruption_budget_max_unavailable: int = 1
    """`spec.maxUnavailable` of the PDBs above: replicas of one model that voluntary disruptions may take at once. 1
    is what kvsched's moves need (one replica of a model restarts at a time) and leaves a one-replica model
    evictable, so a cycle's stop-first step and a drain are not blocked for ever."""

    node_not_ready_grace_s: float = 300.0
    """Seconds a node that stopped being Ready (its Ready condition False or Unknown since then) keeps its GPUs in the
    plan: a flap shorter than that re-plans nothing and moves nobody. 300 s is the default `tolerationSeconds` of
    the not-ready/unreachable NoExecute taints: until then Kubernetes keeps the node's pods, so their replacements
    could not start sooner. New pods do not bind to a NotReady node meanwhile (its NoSchedule taint). 0: a node
    leaves the plan at once."""

    time_budget_s: float = 5.0
    """Soft limit of one re-plan, in seconds. A re-plan runs when a model or the GPUs change (never on pod
    events); small clusters finish in milliseconds, and 5 s keeps a 1000-GPU cluster responsive. The first plan
    after start gets it too, so that pods bind to a plan that is not overturned a moment later."""

    debounce_s: float = 0.2
    """Seconds to wait after a change for more before re-planning: a Deployment rollout or a node loss arrives
    as dozens of events within milliseconds; 200 ms coalesces them into one re-plan without a visible delay."""

    metrics_port: int = 8080
    """TCP port of /healthz, /readyz and /metrics (0: a free port, printed in the log)."""

    metrics_host: str = "0.0.0.0"
    """Address of the metrics listener. All interfaces: Prometheus scrapes the pod."""

    leader_election: bool = True
    """Elect one leader among replicas on a Lease; only the leader writes. Off: this process always writes."""

    leader_election_namespace: str = "kvsched-system"
    """Namespace of the Lease (the chart's release namespace)."""

    leader_election_name: str = "kvsched-controller"
    """Name of the Lease."""

    lease_duration_s: float = 15.0
    """Seconds a follower waits after the leader's last renewal before taking over (client-go's default): the
    longest a crashed leader leaves the cluster without re-plans."""

    renew_deadline_s: float = 10.0
    """Seconds the leader keeps trying to renew before it stops leading (must be < lease duration)."""

    retry_period_s: float = 2.0
    """Seconds between election attempts and renewals."""

    sync_timeout_s: float = 60.0
    """Seconds to wait for the informers' first lists before logging an error (RBAC? a missing CRD?). Nothing
    is planned until they have listed: a partial view would look like lost nodes and pods."""

    log_level: str = "info"
    """Python logging level name (debug, info, warning, error)."""


@dataclass(frozen=True)
class HolderSettings:
    """`kvsched gpu-holder`: the process of a GPU holder pod (docs/controller.md, "GPU holders"). The controller
    builds the holder pod, whose Downward-API env sets `pod_name` and `pod_namespace`."""

    pod_name: str = ""
    """Name of the holder's own pod, which it annotates with its GPU's UUID (the pod's env sets it from
    `metadata.name`). Required."""

    pod_namespace: str = ""
    """Namespace of the holder's own pod (the pod's env sets it from `metadata.namespace`). Required."""

    kubeconfig: str | None = None
    """Path of a kubeconfig file; None: $KUBECONFIG, then the in-cluster service account, then ~/.kube/config."""

    write_timeout_s: float = 60.0
    """Seconds to keep retrying the annotation write (1 s apart) before exiting with an error, so that the kubelet
    restarts the container and the pod's restart count shows the trouble; an apiserver blip is survived."""

    log_level: str = "info"
    """Python logging level name (debug, info, warning, error)."""


# -- flags and environment for any settings class (the CLI's `kvsched extender`, `kvsched controller`) --------
def field_docs(cls: type) -> dict[str, str]:
    """The docstring under each field of a settings dataclass (what --help prints), by field name."""
    tree = ast.parse(inspect.getsource(cls))
    body = tree.body[0].body if isinstance(tree.body[0], ast.ClassDef) else []
    docs: dict[str, str] = {}
    for stmt, following in zip(body, body[1:]):
        if (isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name)
                and isinstance(following, ast.Expr) and isinstance(following.value, ast.Constant)
                and isinstance(following.value.value, str)):
            docs[stmt.target.id] = " ".join(following.value.value.split())
    return docs


def flag_name(field_name: str) -> str:
    """`sync_timeout_s` -> `--sync-timeout-seconds`."""
    name = field_name[:-2] + "_seconds" if field_name.endswith("_s") else field_name
    return "--" + name.replace("_", "-")


def env_name(field_name: str) -> str:
    """`sync_timeout_s` -> `KVSCHED_SYNC_TIMEOUT_S`."""
    return ENV_PREFIX + field_name.upper()


LOG_LEVELS = ("debug", "info", "warning", "error", "critical")
_TRUE, _FALSE = ("true", "1", "yes", "on"), ("false", "0", "no", "off")
_INTEGER = re.compile(r"[+-]?[0-9]+")


@dataclass(frozen=True)
class Bound:
    """The values a numeric setting may take: `low` <= value (< with `strict`) <= `high`; always finite."""

    low: float
    high: float = math.inf
    strict: bool = False

    def holds(self, value: float) -> bool:
        if not math.isfinite(value) or value > self.high:
            return False
        return value > self.low if self.strict else value >= self.low

    def describe(self) -> str:
        low = f"> {self.low:g}" if self.strict else f">= {self.low:g}"
        return low if self.high == math.inf else f"{low} and <= {self.high:g}"


# Numeric settings and what makes sense for them, by field name (every settings class). A value outside is refused
# at start-up naming the flag, instead of a loop that spins (a 0 s budget), a negative count, or a port that fails
# to bind later. `*_gib` fields are checked by their reader (>= 0).
BOUNDS: dict[str, Bound] = {
    "port": Bound(1, 65535),
    "metrics_port": Bound(1, 65535),
    "max_request_bytes": Bound(1024),
    "sync_timeout_s": Bound(0, strict=True),
    "bind_timeout_s": Bound(0, strict=True),
    "write_timeout_s": Bound(0, strict=True),
    "start_timeout_s": Bound(0),            # 0: the start gate is off
    "node_not_ready_grace_s": Bound(0),     # 0: a NotReady node leaves the plan at once
    "stability_threshold": Bound(0),
    "max_migrations": Bound(0),
    "max_restarting": Bound(1),
    "max_restarting_per_node": Bound(1),
    "pod_disruption_budget_max_unavailable": Bound(1),
    "time_budget_s": Bound(0),              # 0: the first plan found, no search
    "debounce_s": Bound(0, 60),
    "lease_duration_s": Bound(0, strict=True),
    "renew_deadline_s": Bound(0, strict=True),
    "retry_period_s": Bound(0, strict=True),
}


def _integer(text: str) -> int:
    """A whole number in ASCII digits with an optional sign (its range is BOUNDS')."""
    if _INTEGER.fullmatch(text.strip()) is None:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number")
    return int(text.strip())


def _decimal(text: str) -> float:
    """A finite decimal number in ASCII ("0.5", "1e3"); refuses "1_0", "nan", "inf" and Unicode digits."""
    try:
        return decimal_number(text)
    except UnitError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _boolean(text: str) -> bool:
    """true/false (also 1/0, yes/no, on/off; any case); anything else is refused, never read as false."""
    word = text.strip().lower()
    if word in _TRUE or word in _FALSE:
        return word in _TRUE
    raise argparse.ArgumentTypeError(f"{text!r} is not true or false")


def _log_level(text: str) -> str:
    if text.strip().lower() not in LOG_LEVELS:
        raise argparse.ArgumentTypeError(f"{text!r} is not one of {', '.join(LOG_LEVELS)}")
    return text.strip().lower()


def _converter(annotation: str, name: str = "") -> Any:
    kind = annotation.replace(" | None", "").strip()
    if kind == "float" and name.endswith("_gib"):
        return _gib
    if name == "log_level":
        return _log_level
    return {"int": _integer, "float": _decimal, "bool": _boolean}.get(kind, str)


def check_settings(settings: Any) -> None:
    """Raise ValueError naming the flag when a numeric field of `settings` (any settings class) is outside its
    BOUNDS, a memory headroom figure is negative, or leader election's timings are not lease duration > renew
    deadline > retry period (client-go's rule: a leader must give up before its lease can pass to another). O(fields)."""
    for f in dataclasses.fields(settings):
        value, bound = getattr(settings, f.name), BOUNDS.get(f.name)
        if bound is not None and value is not None and not bound.holds(value):
            raise ValueError(f"{flag_name(f.name)}: must be {bound.describe()}, got {value!r}")
    if hasattr(settings, "gpu_memory_reserve_gib"):
        check_headroom(settings)
    if hasattr(settings, "lease_duration_s"):
        lease, renew, retry = settings.lease_duration_s, settings.renew_deadline_s, settings.retry_period_s
        if not lease > renew > retry:
            raise ValueError(f"--lease-duration-seconds ({lease:g}) must be > --renew-deadline-seconds ({renew:g}) "
                             f"> --retry-period-seconds ({retry:g})")


def _gib(text: str) -> float:
    """A `*_gib` setting: a plain number of GiB or a Kubernetes quantity ("1Gi", "512Mi"), >= 0."""
    try:
        return headroom_gib(text)
    except UnitError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def add_settings_arguments(parser: argparse.ArgumentParser, cls: type) -> None:
    """One flag per field of `cls`, with the field's docstring, default and environment variable in --help.
    Defaults are left as None so `settings_from` can tell a flag given from one omitted."""
    docs = field_docs(cls)
    for f in dataclasses.fields(cls):
        default = f.default if f.default is not dataclasses.MISSING else None
        parser.add_argument(flag_name(f.name), dest=f.name, type=_converter(str(f.type), f.name), default=None,
                            metavar=f.name.upper(),
                            help=f"{docs.get(f.name, '')} [env {env_name(f.name)}; default {default!r}]"
                            .replace("%", "%%"))


def check_headroom(settings: Any) -> None:
    """Raise ValueError naming the flag when a memory headroom setting of `settings` (ExtenderSettings or
    ControllerSettings) is negative or not finite. O(1)."""
    for name in ("gpu_memory_reserve_gib", "engine_overhead_gib", "engine_context_gib"):
        value = getattr(settings, name)
        if not (0.0 <= value < float("inf")):
            raise ValueError(f"{flag_name(name)}: must be a number of GiB >= 0, got {value!r}")


def settings_from(cls: type[T], args: argparse.Namespace, environ: Mapping[str, str] = os.environ) -> T:
    """An instance of `cls`: a flag wins over the environment, which wins over the default. Raises ValueError
    naming the variable when an environment value does not convert, or the flag when a value is out of its
    bounds (`check_settings`)."""
    values: dict[str, Any] = {}
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        given = getattr(args, f.name, None)
        if given is not None:
            values[f.name] = given
        elif env_name(f.name) in environ:
            try:
                values[f.name] = _converter(str(f.type), f.name)(environ[env_name(f.name)])
            except (ValueError, argparse.ArgumentTypeError) as e:
                raise ValueError(f"{env_name(f.name)}={environ[env_name(f.name)]!r}: {e}") from None
    settings = cls(**values)
    check_settings(settings)
    return settings
