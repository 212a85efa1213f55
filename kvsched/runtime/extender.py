"""`kvsched extender`: informers into the cache, the app on uvicorn, until SIGTERM/SIGINT.

Starts one informer each for pods (except Succeeded/Failed ones, which hold nothing), nodes and ModelServings,
serves at once (so /healthz answers while a big cluster lists; /readyz and managed pods wait for the sync), and
stops the informers when uvicorn exits. Under `kvsched serve` those informers are shared with the controller's
(kvsched.runtime.feeds), which starts and stops them. Called by: kvsched.cli (`kvsched extender`), e2e tests as a process.
"""

from __future__ import annotations

import logging
import sys
import threading

from kvsched.extender.app import create_app, serve
from kvsched.controller.headroom import Headroom
from kvsched.extender.cache import Cache
from kvsched.k8s.binding import PodBinder
from kvsched.k8s.client import DEFAULT_CONNECT_TIMEOUT_S, api_client
from kvsched.k8s.watch import LIVE_PODS, MODELSERVINGS, NODES, Informer, informer, wait_synced
from kvsched.metrics import Metrics
from kvsched.runtime.feeds import Feed
from kvsched.runtime.heap import keep_frozen
from kvsched.settings import ExtenderSettings, check_headroom

log = logging.getLogger(__name__)

# How long a thread holding the GIL runs before one waiting for it gets it (Python's default is 5 ms). The
# extender's event loop shares the process with the informers' decoding and, under `kvsched serve`, the control
# loop's status writes; one /filter takes several hand-offs, each of which could wait a whole interval behind them.
GIL_SWITCH_INTERVAL_S = 0.0005

def build_cache(settings: ExtenderSettings) -> Cache:
    """The extender's cache from its settings. Raises ValueError naming the flag for a negative headroom."""
    check_headroom(settings)
    return Cache(settings.scheduler_name, Headroom(settings.gpu_memory_reserve_gib, settings.engine_overhead_gib,
                                                   settings.engine_context_gib),
                 start_timeout_s=settings.start_timeout_s, gpu_holders=settings.gpu_holders,
                 holder_namespace=settings.holder_namespace)


def extender_feeds(cache: Cache) -> list[Feed]:
    """What the extender watches, in all namespaces: live pods (GPU holders are anywhere), nodes, ModelServings."""
    return [Feed(LIVE_PODS, cache.on_pod), Feed(NODES, cache.on_node), Feed(MODELSERVINGS, cache.on_model)]


def run(settings: ExtenderSettings, metrics: Metrics | None = None, *, cache: Cache | None = None,
        informers: list[Informer] | None = None) -> int:
    """Serve until a signal stops uvicorn; returns the exit code. Raises ClientConfigError (no kubeconfig).
    `metrics`: a registry shared with the controller under `kvsched serve` (default: a new one); `cache` and
    `informers`: under `kvsched serve`, the cache and the informers feeding it (`extender_feeds`), started and
    stopped by their owner (default: this function makes, starts and stops its own)."""
    logging.basicConfig(level=settings.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    sys.setswitchinterval(GIL_SWITCH_INTERVAL_S)
    api = api_client(settings.kubeconfig, timeout_s=(DEFAULT_CONNECT_TIMEOUT_S, settings.bind_timeout_s))
    if cache is None:
        cache = build_cache(settings)
    metrics = metrics or Metrics()
    owned = informers is None
    feeding = informers if informers is not None else [
        informer(api, f.resource, f.handler, counters=metrics) for f in extender_feeds(cache)]
    cache.sync_checks = [i.synced.is_set for i in feeding]
    cache.current_checks = [i.is_current for i in feeding]
    if owned:
        for i in feeding:
            i.start()

    def report_sync() -> None:
        if wait_synced(feeding, settings.sync_timeout_s):
            log.info("cache synced: %s", cache.counts())
        else:
            log.warning("cache not synced after %.0fs (RBAC? the ModelServing CRD?); still trying",
                        settings.sync_timeout_s)
            wait_synced(feeding, 365 * 86400.0)
            log.info("cache synced: %s", cache.counts())
        metrics.cache_synced.set(1)
        keep_frozen(threading.Event())  # the stores are full: freeze them out of the collector's full passes

    threading.Thread(target=report_sync, name="sync-report", daemon=True).start()
    app = create_app(settings, cache, PodBinder(api, (DEFAULT_CONNECT_TIMEOUT_S, settings.bind_timeout_s)), metrics)
    log.info("kvsched extender for scheduler %r on %s:%d", settings.scheduler_name, settings.host, settings.port)
    try:
        serve(app, settings)
    finally:
        if owned:
            for i in feeding:
                i.stop(timeout_s=2.0)
        api.close()  # type: ignore[no-untyped-call]
    return 0
