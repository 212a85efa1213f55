"""`kvsched extender`: informers into the cache, the app on uvicorn, until SIGTERM/SIGINT.

Starts one informer each for pods (except Succeeded/Failed ones, which hold nothing), nodes and ModelServings,
serves at once (so /healthz answers while a big cluster lists; /readyz and managed pods wait for the sync), and
stops the informers when uvicorn exits. Called by: kvsched.cli (`kvsched extender`), e2e tests as a process.
"""

from __future__ import annotations

import logging
import threading

from kvsched.extender.app import create_app, serve
from kvsched.controller.headroom import Headroom
from kvsched.extender.cache import Cache
from kvsched.k8s.binding import PodBinder
from kvsched.k8s.client import DEFAULT_CONNECT_TIMEOUT_S, api_client
from kvsched.k8s.watch import LIVE_PODS, MODELSERVINGS, NODES, informer, wait_synced
from kvsched.metrics import Metrics
from kvsched.settings import ExtenderSettings, check_headroom

log = logging.getLogger(__name__)

def run(settings: ExtenderSettings, metrics: Metrics | None = None) -> int:
    """Serve until a signal stops uvicorn; returns the exit code. Raises ClientConfigError (no kubeconfig).
    `metrics`: a registry shared with the controller under `kvsched serve` (default: a new one)."""
    logging.basicConfig(level=settings.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    api = api_client(settings.kubeconfig, timeout_s=(DEFAULT_CONNECT_TIMEOUT_S, settings.bind_timeout_s))
    check_headroom(settings)
    cache = Cache(settings.scheduler_name, Headroom(settings.gpu_memory_reserve_gib, settings.engine_overhead_gib,
                                                    settings.engine_context_gib),
                  start_timeout_s=settings.start_timeout_s, gpu_holders=settings.gpu_holders,
                  holder_namespace=settings.holder_namespace)
    metrics = metrics or Metrics()
    informers = [informer(api, LIVE_PODS, cache.on_pod, counters=metrics),
                 informer(api, NODES, cache.on_node, counters=metrics),
                 informer(api, MODELSERVINGS, cache.on_model, counters=metrics)]
    cache.sync_checks = [i.synced.is_set for i in informers]
    cache.current_checks = [i.is_current for i in informers]
    for i in informers:
        i.start()

    def report_sync() -> None:
        if wait_synced(informers, settings.sync_timeout_s):
            log.info("cache synced: %s", cache.counts())
        else:
            log.warning("cache not synced after %.0fs (RBAC? the ModelServing CRD?); still trying",
                        settings.sync_timeout_s)
            wait_synced(informers, 365 * 86400.0)
            log.info("cache synced: %s", cache.counts())
        metrics.cache_synced.set(1)

    threading.Thread(target=report_sync, name="sync-report", daemon=True).start()
    app = create_app(settings, cache, PodBinder(api, (DEFAULT_CONNECT_TIMEOUT_S, settings.bind_timeout_s)), metrics)
    log.info("kvsched extender for scheduler %r on %s:%d", settings.scheduler_name, settings.host, settings.port)
    try:
        serve(app, settings)
    finally:
        for i in informers:
            i.stop(timeout_s=2.0)
        api.close()  # type: ignore[no-untyped-call]
    return 0
