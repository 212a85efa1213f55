"""`kvsched controller`: informers -> Reconciler -> ApiWriter, leader election, and the health server.

Threads: one per informer (Nodes, Pods, Deployments, ModelServings, PodDisruptionBudgets, and the GPU holder pods of `--holder-namespace`
when `--namespace` watches another; under `kvsched serve` the informers of pods, nodes and ModelServings are shared
with the extender: kvsched.runtime.feeds), the leader elector, the health server,
and the reconcile loop on the calling thread. SIGTERM/SIGINT stop everything; the leader releases its Lease.
Called by: kvsched.cli (`kvsched controller`, `kvsched serve`).
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
import time
import urllib.request
import uuid
from dataclasses import dataclass, field, replace
from typing import Any, Callable

from kvsched.api.names import HOLDER_LABEL
from kvsched.controller.config import DecisionConfig
from kvsched.runtime.http import HealthServer
from kvsched.runtime.loop import Reconciler
from kvsched.controller.selector import parse_selector
from kvsched.k8s.client import api_client
from kvsched.k8s.leader import LeaseElector
from kvsched.api.readers import read_deployment, read_model_serving, read_node, read_pdb, read_pod
from kvsched.k8s.watch import DELETED, DEPLOYMENTS, LIVE_PODS, MODELSERVINGS, NODES, PDBS, Informer, Obj
from kvsched.k8s.writers import ApiWriter
from kvsched.metrics import Metrics
from kvsched.packer import Plan, solve
from kvsched.runtime.feeds import Feed, share_informers
from kvsched.settings import ControllerSettings, check_headroom

log = logging.getLogger(__name__)

def decision_config(settings: ControllerSettings) -> DecisionConfig:
    """The decision core's knobs from the settings. Raises SelectorError for a bad node selector, ValueError
    naming the flag for a negative memory headroom."""
    check_headroom(settings)
    return DecisionConfig(node_selector=parse_selector(settings.node_selector),
                          scheduler_name=settings.scheduler_name,
                          stability_threshold_ratio=settings.stability_threshold,
                          max_migrations=settings.max_migrations, time_budget_s=settings.time_budget_s,
                          runtime_class_name=settings.runtime_class_name,
                          start_timeout_s=settings.start_timeout_s,
                          node_not_ready_grace_s=settings.node_not_ready_grace_s,
                          gpu_memory_reserve_gib=settings.gpu_memory_reserve_gib,
                          engine_overhead_gib=settings.engine_overhead_gib,
                          engine_context_gib=settings.engine_context_gib,
                          gpu_holders=settings.gpu_holders,
                          holder_namespace=settings.holder_namespace, holder_image=settings.holder_image,
                          holder_priority_class=settings.holder_priority_class,
                          holder_service_account=settings.holder_service_account,
                          max_restarting=settings.max_restarting,
                          max_restarting_per_node=settings.max_restarting_per_node,
                          make_before_break=settings.make_before_break,
                          pod_disruption_budget=settings.pod_disruption_budget,
                          pod_disruption_budget_max_unavailable=settings.pod_disruption_budget_max_unavailable)


def identity() -> str:
    """This process's name in the Lease: host, pid and a random suffix (a restarted process is a new one)."""
    return f"{socket.gethostname()}_{os.getpid()}_{uuid.uuid4().hex[:6]}"


@dataclass
class Controller:
    """A running controller; `run(stop)` blocks until `stop` is set."""

    settings: ControllerSettings
    metrics: Metrics
    reconciler: Reconciler
    informers: list[Informer]
    elector: LeaseElector | None
    health: HealthServer | None
    extender_alive: Callable[[], str | None] | None = None  # `kvsched serve`: the extender's /healthz answers
    on_lost_leadership: Callable[[], None] | None = None    # `kvsched serve`: stop the extender too
    lost_leadership: bool = False
    _led: bool = False
    # `kvsched serve`: the informers feeding the extender's cache (`share` of build_controller); started and stopped
    # with the controller's own, some of which they are.
    partner_informers: list[Informer] = field(default_factory=list)

    def all_informers(self) -> list[Informer]:
        """The controller's informers, then the partner's that are not also the controller's."""
        return self.informers + [i for i in self.partner_informers if all(i is not j for j in self.informers)]

    def leadership(self) -> str:
        if self.elector is None:
            return "leader: this process (leader election off)"
        holder = self.elector.holder or "unknown"
        me = " (this process)" if self.elector.is_leader else ""
        return f"leader: {holder}{me}"

    def ready(self) -> bool:
        return all(i.synced.is_set() for i in self.informers)

    def alive(self) -> str | None:
        """None while the process works (the liveness probe's /healthz), else why not: the reconcile loop has not
        come round for `loop_stall_limit_s` (a round stuck in a call that never returns), or, under `kvsched
        serve`, the extender does not answer its /healthz (`extender_alive`)."""
        stalled = self.reconciler.stalled_s()
        limit = loop_stall_limit_s(self.settings)
        if stalled > limit:
            return f"reconcile loop stalled: no round finished for {stalled:.0f}s (limit {limit:.0f}s)"
        if self.extender_alive is not None:
            return self.extender_alive()
        return None

    def run(self, stop: threading.Event) -> None:
        for i in self.all_informers():
            i.start()
        if self.health is not None:
            self.health.start()
            log.info("serving /healthz, /readyz, /metrics on port %d", self.health.port)
        threading.Thread(target=self._wait_synced, args=(stop,), name="sync-wait", daemon=True).start()
        elector_thread = None
        if self.elector is not None:
            elector = self.elector
            elector_thread = threading.Thread(target=elector.run, args=(stop, self._leadership_changed(stop)),
                                              name="leader-election", daemon=True)
            elector_thread.start()
        else:
            self.reconciler.set_leader(True)
        try:
            self.reconciler.run(stop)
        finally:
            stop.set()
            if elector_thread is not None:
                elector_thread.join(5.0)
            for i in self.all_informers():
                i.stop(timeout_s=2.0)
            if self.health is not None:
                self.health.stop()

    def _leadership_changed(self, stop: threading.Event) -> Callable[[bool], None]:
        """The elector's callback: tell the loop; on losing leadership that this process held (not on a clean
        stop), stop the whole process (`lost_leadership`), as controller-runtime exits, so that nothing it still
        holds in memory (a round half done, a plan, backoffs) outlives its lease; the kubelet restarts it as a
        follower."""
        def changed(leading: bool) -> None:
            self.reconciler.set_leader(leading)
            if leading:
                self._led = True
            elif self._led and not stop.is_set():
                log.error("leader election: leadership lost; stopping so that this replica restarts as a follower")
                self.lost_leadership = True
                stop.set()
                if self.on_lost_leadership is not None:
                    self.on_lost_leadership()
        return changed

    def _wait_synced(self, stop: threading.Event) -> None:
        started = time.monotonic()
        warned = False
        while not stop.is_set():
            if all(i.synced.is_set() for i in self.informers):
                log.info("informers synced")
                self.reconciler.set_synced(True)
                return
            if not warned and time.monotonic() - started > self.settings.sync_timeout_s:
                warned = True
                log.error("informers not synced after %.0fs (RBAC? apiserver?); nothing is planned until they are",
                          self.settings.sync_timeout_s)
            stop.wait(0.1)


def controller_feeds(settings: ControllerSettings, reconciler: Reconciler) -> list[Feed]:
    """What the controller watches: Nodes, and live Pods, Deployments, ModelServings and PodDisruptionBudgets of
    `--namespace` (all
    namespaces when unset), plus the GPU holder pods of `--holder-namespace` when that is another namespace."""

    def handler(read: Callable[[Obj], Any], observe: Callable[..., None]) -> Callable[[str, Obj], None]:
        def on_event(event_type: str, obj: Obj) -> None:
            observe(read(obj), deleted=event_type == DELETED)
        return on_event

    scope = settings.namespace or None
    feeds = [
        Feed(NODES, handler(read_node, reconciler.observe_node)),
        Feed(replace(LIVE_PODS, namespace=scope), handler(read_pod, reconciler.observe_pod)),
        Feed(replace(DEPLOYMENTS, namespace=scope), handler(read_deployment, reconciler.observe_deployment)),
        Feed(replace(MODELSERVINGS, namespace=scope), handler(read_model_serving, reconciler.observe_model_serving)),
        # PodDisruptionBudgets: kvsched's per-model ones and users' (kvsched.controller.pdb); watched whether or not
        # the option is on, so that turning it off deletes kvsched's, and a Deployment's annotation can ask for one.
        Feed(replace(PDBS, namespace=scope), handler(read_pdb, reconciler.observe_pdb)),
    ]
    if settings.gpu_holders and scope is not None and scope != settings.holder_namespace:
        # GPU holder pods live in kvsched's own namespace, outside the one watched.
        holders = replace(LIVE_PODS, namespace=settings.holder_namespace, label_selector=f"{HOLDER_LABEL}=true")
        feeds.append(Feed(holders, handler(read_pod, reconciler.observe_pod)))
    return feeds


def build_controller(settings: ControllerSettings, metrics: Metrics | None = None, *,
                     with_health: bool = True, api: Any = None, share: list[Feed] | None = None,
                     solver: Callable[..., Plan] = solve) -> Controller:
    """Wire a controller from settings. `share`: another part's feeds (the extender's, under `kvsched serve`),
    served by informers shared with the controller's where scopes allow (kvsched.runtime.feeds); the informers
    feeding them are `partner_informers`. `solver`: the packer's `solve` (default) or a stand-in with its signature
    (`kvsched serve`: kvsched.runtime.solver.ProcessSolver). Raises ClientConfigError, SelectorError, ValueError
    (bad durations)."""
    metrics = metrics or Metrics()
    api = api or api_client(settings.kubeconfig)
    me = identity()
    config = decision_config(settings)
    reconciler = Reconciler(config, ApiWriter(api, me), metrics, debounce_s=settings.debounce_s,
                            max_migrations=settings.max_migrations, solver=solver)

    informers, partner = share_informers(api, controller_feeds(settings, reconciler), share or [], metrics)
    reconciler.watches_current = lambda: all(i.is_current() for i in informers)
    elector = None
    if settings.leader_election:
        elector = LeaseElector(api, settings.leader_election_namespace, settings.leader_election_name, me,
                               lease_duration_s=settings.lease_duration_s,
                               renew_deadline_s=settings.renew_deadline_s, retry_period_s=settings.retry_period_s)
    controller = Controller(settings, metrics, reconciler, informers, elector, None, partner_informers=partner)
    if with_health:
        controller.health = HealthServer(settings.metrics_host, settings.metrics_port, metrics, controller.ready,
                                         controller.leadership, alive=controller.alive)
    if elector is not None:
        writer = reconciler.writer
        if isinstance(writer, ApiWriter):
            writer.fence = elector.write_time_left
    return controller


def run(settings: ControllerSettings) -> int:
    """`kvsched controller`: run until SIGTERM or SIGINT; returns the exit code. Raises ClientConfigError,
    SelectorError, ValueError (bad durations), OSError (metrics port taken)."""
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    controller = build_controller(settings)
    stop = threading.Event()

    def on_signal(signum: int, frame: object) -> None:
        log.info("signal %d: stopping", signum)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    controller.run(stop)
    return EXIT_LOST_LEADERSHIP if controller.lost_leadership else 0


def serve(controller_settings: ControllerSettings, extender_settings: Any) -> int:
    """`kvsched serve`: the controller on a thread, the extender's uvicorn server on this one (it handles
    SIGTERM/SIGINT); both record into one Metrics registry, and share one informer per collection both watch
    (pods, nodes, ModelServings: kvsched.runtime.feeds), which the controller's thread starts and stops. The
    packer runs in a child process (kvsched.runtime.solver), so a re-plan does not hold the extender's GIL."""
    from kvsched.runtime.extender import build_cache, extender_feeds, run as run_extender
    from kvsched.runtime.solver import ProcessSolver

    logging.basicConfig(level=controller_settings.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    metrics = Metrics()
    cache = build_cache(extender_settings)
    solver = ProcessSolver()
    controller = build_controller(controller_settings, metrics, share=extender_feeds(cache), solver=solver)
    controller.extender_alive = lambda: extender_answers(local_url(extender_settings.host, extender_settings.port))
    # Leadership lost: stop the extender too (uvicorn stops on SIGTERM), so the whole process exits.
    controller.on_lost_leadership = lambda: os.kill(os.getpid(), signal.SIGTERM)
    # uvicorn re-raises the signal that stopped it once it has shut down (and a SIGTERM may come before it
    # runs): with this handler the process then exits with a code saying why (1: lost lease; 0: asked to stop),
    # not killed by the signal (-15), through the `finally` below.
    def on_sigterm(signum: int, frame: object) -> None:
        raise SystemExit(EXIT_LOST_LEADERSHIP if controller.lost_leadership else 0)

    signal.signal(signal.SIGTERM, on_sigterm)
    stop = threading.Event()
    thread = threading.Thread(target=controller.run, args=(stop,), name="controller", daemon=True)
    thread.start()
    try:
        code = run_extender(extender_settings, metrics=metrics, cache=cache,
                            informers=controller.partner_informers)
        return EXIT_LOST_LEADERSHIP if controller.lost_leadership else code
    finally:
        stop.set()
        thread.join(10.0)
        solver.close()


EXIT_LOST_LEADERSHIP = 1  # the exit code after losing leadership (the kubelet restarts the container)
EXTENDER_PROBE_TIMEOUT_S = 2.0  # the liveness probe's own timeout is 5 s: answer within it


def loop_stall_limit_s(settings: ControllerSettings) -> float:
    """How long the reconcile loop may go without coming round before /healthz fails: the 30 s resync plus a
    round's solve and writes, with room to spare (a round that writes a thousand statuses takes seconds)."""
    return max(120.0, 10.0 * settings.time_budget_s)


def local_url(host: str, port: int) -> str:
    """The extender's base URL from this process (a wildcard bind address is reached on loopback)."""
    reach = "127.0.0.1" if host in ("", "0.0.0.0", "::") else host
    return f"http://[{reach}]:{port}" if ":" in reach else f"http://{reach}:{port}"


def extender_answers(base_url: str, timeout_s: float = EXTENDER_PROBE_TIMEOUT_S) -> str | None:
    """None when the extender's /healthz answers 200 within `timeout_s`, else why not. A stalled event loop
    answers nothing, so the liveness probe restarts the container (with `ignorable: false` a stalled extender
    otherwise blocks every managed pod for good)."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never through an HTTP(S)_PROXY
    try:
        with opener.open(f"{base_url}/healthz", timeout=timeout_s) as response:
            if response.status == 200:
                return None
            return f"extender /healthz answered {response.status}"
    except (OSError, ValueError) as e:  # URLError, timeouts and refused connections are OSErrors
        return f"extender /healthz did not answer: {e}"
