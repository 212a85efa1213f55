"""Settings of kvsched's long-running processes, one frozen dataclass per concern.

Every field says its unit and why its default is what it is. The CLI builds these from flags and environment
variables (`KVSCHED_<FIELD>` in upper case; a flag wins over the environment); tests build them directly.
Called by: kvsched.cli, kvsched.extender.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ExtenderSettings:
    """The scheduler extender (`kvsched extender`)."""

    host: str = "0.0.0.0"
    """Address to listen on. All interfaces: kube-scheduler reaches the extender through a Service."""

    port: int = 8888
    """TCP port for the extender's HTTP API (filter, prioritize, bind, healthz, readyz, metrics)."""

    scheduler_name: str = "kvsched"
    """`spec.schedulerName` of managed pods: a pod with the model label but another scheduler passes through."""

    max_request_bytes: int = 8 * 2**20
    """Largest request body accepted, in bytes (larger: 413). With `nodeCacheCapable: false` the scheduler sends
    every candidate Node object (about 2-4 KiB each), so 8 MiB covers ~2000 nodes; with names only, a request
    is about 10 KiB. The bound keeps one bad client from holding gigabytes."""

    kubeconfig: str | None = None
    """Path of a kubeconfig file; None: $KUBECONFIG, then the in-cluster service account, then ~/.kube/config."""

    sync_timeout_s: float = 60.0
    """Seconds to wait at start for the informers' first lists before serving anyway (with /readyz false until
    they sync): long enough for a big cluster's first pod list, short enough to surface a broken RBAC."""

    bind_timeout_s: float = 10.0
    """Read timeout in seconds of each API call a bind makes (annotate, Binding); kube-scheduler's own extender
    httpTimeout defaults to 30 s, and a bind makes up to three calls."""

    log_level: str = "info"
    """Python logging level name (debug, info, warning, error)."""
