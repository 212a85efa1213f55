"""The extender's HTTP API: POST /filter, /prioritize, /bind for kube-scheduler; GET /healthz, /readyz, /metrics.

`create_app(settings, cache, binder, metrics)` builds the FastAPI app; tests pass an in-memory cache and a fake
binder, kvsched.runtime.extender passes the informer-fed cache and a `PodBinder` and serves it with `serve`. Every answer comes from the cache (no API call)
except bind's two writes.

Request handling: the body is read up to `settings.max_request_bytes` (413 beyond), parsed with the wire models
(400 with the parser's message when malformed or truncated), and answered with 200 and kube-scheduler's JSON; a
problem with the pod, node or model is reported in the answer's `Error` or as failed nodes, never as a 5xx, and an
unexpected exception in a handler becomes an `Error` answer (logged with its traceback). Pods without the model
label (or with another scheduler name) pass through: every node passes, neutral scores, a plain Binding.
Metrics: `kvsched_extender_requests_total{verb,outcome}` with outcome in managed / unmanaged / rejected (bind
refused: no plan) / conflict (the slot went to another pod) / not_synced / error / bad_request, and the duration histogram;
`kvsched_start_gate_refusals_total{verb}`: filter answers that passed no node while some waited at a start gate
(kvsched.controller.start_gate), and binds refused at one.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from typing import Protocol, TypeVar

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ValidationError
from starlette.concurrency import run_in_threadpool

from kvsched.api.names import (
    GPU_ANNOTATION,
    MEMORY_FRACTION_ANNOTATION,
    MODEL_LABEL,
    VISIBLE_DEVICES_ANNOTATION,
    share_text,
)
from kvsched.api.records import BindOutcomeUnknown
from kvsched.extender.cache import BindTarget
from kvsched.controller.slots import NEUTRAL_SCORE, FilterDecision, PlannedSlot, PodRef, Refusal
from kvsched.controller.start_gate import is_gate_reason
from kvsched.extender.wire import (
    ExtenderArgs, ExtenderBindingArgs, ExtenderBindingResult, ExtenderFilterResult, NodeList,
    host_priority_list_json, node_name,
)
from kvsched.metrics import CONTENT_TYPE, Metrics
from kvsched.settings import ExtenderSettings
from kvsched.units import UnitError, whole_number

log = logging.getLogger(__name__)


class ExtenderCache(Protocol):
    """What the app asks the cache (kvsched.extender.cache.Cache implements it)."""

    def ready(self) -> bool: ...

    def current(self) -> bool: ...

    def is_managed(self, model: str | None, scheduler_name: str) -> bool: ...

    def remember(self, ref: PodRef) -> None: ...

    def filter(self, pod: PodRef, candidates: Sequence[str]) -> FilterDecision: ...

    def score(self, pod: PodRef, candidates: Sequence[str]) -> dict[str, int]: ...

    def bind_target(self, namespace: str, name: str, uid: str) -> BindTarget | None: ...

    def reserve(self, pod: PodRef, node: str) -> PlannedSlot | Refusal: ...

    def device_of(self, node: str, gpu: int) -> str | None: ...

    def release(self, uid: str) -> None: ...


class Binder(Protocol):
    """Writes a bind (kvsched.k8s.binding.PodBinder): annotations (None for a plain Binding), then the Binding;
    raises an exception whose str() is the reason when it fails (and has undone the annotations)."""

    def bind(self, namespace: str, name: str, uid: str, node: str,
             annotations: dict[str, str] | None) -> None: ...


class NotSynced(Exception):
    """The cache has not listed everything yet, or a watch is reconnecting; managed pods wait (an Error answer,
    which kube-scheduler retries with backoff) until it is current."""

    def __init__(self, verb: str, reconnecting: bool = False) -> None:
        why = ("is reconnecting to the apiserver: its view of the GPU slots may be stale" if reconnecting
               else "is starting: its cache has not synced yet")
        super().__init__(f"kvsched extender {why}, so it cannot {verb} a pod of a kvsched model; "
                         f"the scheduler will retry")


class BadRequest(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


async def _read_body(request: Request, limit: int) -> bytes:
    """The request body, at most `limit` bytes (BadRequest 413 beyond, checked before and while reading)."""
    declared = request.headers.get("content-length", "")
    try:
        declared_bytes = whole_number(declared)
    except UnitError:
        declared_bytes = 0  # absent or malformed: the limit is checked while reading
    if declared_bytes > limit:
        raise BadRequest(413, f"request body of {declared} bytes exceeds the limit of {limit} bytes")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise BadRequest(413, f"request body exceeds the limit of {limit} bytes")
        chunks.append(chunk)
    body = b"".join(chunks)
    if not body:
        raise BadRequest(400, "empty request body: expected kube-scheduler's extender JSON")
    return body


Args = TypeVar("Args", bound=BaseModel)


async def _parse(request: Request, model: type[Args], verb: str, limit: int) -> Args:
    """The request body (at most `limit` bytes) as `model`; BadRequest (4xx, the first error's place) if not."""
    body = await _read_body(request, limit)
    try:
        return model.model_validate_json(body)
    except ValidationError as e:
        raise _parse_error(verb, e) from None


def _parse_error(verb: str, e: ValidationError) -> BadRequest:
    first = e.errors()[0] if e.errors() else {"loc": (), "msg": str(e)}
    where = ".".join(str(p) for p in first.get("loc", ())) or "body"
    return BadRequest(400, f"bad {verb} request at {where}: {first.get('msg')} ({e.error_count()} error(s))")


def _json(body: str | bytes) -> Response:
    return Response(content=body, media_type="application/json")


def create_app(settings: ExtenderSettings, cache: ExtenderCache, binder: Binder, metrics: Metrics) -> FastAPI:
    """The extender app (see the module docstring). `cache.ready()` drives /readyz."""
    # No OpenAPI pages and no FastAPI telemetry: its per-request check of the OpenTelemetry providers costs as
    # much as filtering 500 nodes (older FastAPI releases take the keyword in **extra and ignore it).
    app = FastAPI(title="kvsched extender", docs_url=None, redoc_url=None, openapi_url=None,
                  telemetry={"tracing": False, "metrics": False, "logs": False})
    requests = metrics.extender_requests
    durations = metrics.extender_request_duration_seconds

    def pod_ref(args: ExtenderArgs) -> PodRef:
        meta, spec = args.Pod.metadata, args.Pod.spec
        model = meta.labels.get(MODEL_LABEL) or None
        managed = cache.is_managed(model, spec.schedulerName)
        ref = PodRef(meta.namespace, meta.name, meta.uid, f"{meta.namespace}/{model}" if managed else None)
        return ref

    def record(verb: str, outcome: str, started: float) -> None:
        requests.labels(verb=verb, outcome=outcome).inc()
        durations.labels(verb=verb).observe(time.perf_counter() - started)

    @app.exception_handler(BadRequest)
    async def bad_request(request: Request, exc: BadRequest) -> JSONResponse:
        verb = request.url.path.strip("/") or "unknown"
        requests.labels(verb=verb, outcome="bad_request").inc()
        return JSONResponse({"Error": str(exc)}, status_code=exc.status)

    async def filter_(request: Request) -> Response:
        started = time.perf_counter()
        args = await _parse(request, ExtenderArgs, "filter", settings.max_request_bytes)
        try:
            ref = pod_ref(args)
            names = args.candidate_names()
            if ref.model_key is None:
                decision = FilterDecision(passed=list(names))
                outcome = "unmanaged"
            elif not cache.current():
                # Without the pods' bindings the extender cannot know which slots are held: wait, do not guess.
                # While a watch reconnects, a slot freed or planned meanwhile may be missing, and a FailedNodes
                # answer from that stale view would park the pod until the next pod or node change (or 5 min);
                # an Error is retried with backoff.
                raise NotSynced("filter", reconnecting=cache.ready())
            else:
                cache.remember(ref)
                decision = cache.filter(ref, names)
                outcome = "managed"
                if not decision.passed and any(is_gate_reason(r) for r in decision.failed.values()):
                    metrics.start_gate_refusals.labels(verb="filter").inc()
            if args.NodeNames is None and args.Nodes is not None:
                by_name = {node_name(n): n for n in args.Nodes.items}
                result = ExtenderFilterResult.model_construct(
                    Nodes=NodeList.model_construct(items=[by_name[name] for name in decision.passed]),
                    FailedNodes=decision.failed, FailedAndUnresolvableNodes=decision.unresolvable, Error="")
            else:
                result = ExtenderFilterResult.model_construct(
                    NodeNames=decision.passed, FailedNodes=decision.failed,
                    FailedAndUnresolvableNodes=decision.unresolvable, Error="")
        except NotSynced as e:
            result, outcome = ExtenderFilterResult(Error=str(e)), "not_synced"
        except Exception as e:
            log.exception("filter failed")
            result, outcome = ExtenderFilterResult(Error=f"kvsched extender: filter failed: {e}"), "error"
        record("filter", outcome, started)
        return _json(result.model_dump_json(exclude_none=True))

    async def prioritize(request: Request) -> Response:
        started = time.perf_counter()
        args = await _parse(request, ExtenderArgs, "prioritize", settings.max_request_bytes)
        scores: dict[str, int] = {}
        try:
            ref = pod_ref(args)
            names = args.candidate_names()
            if ref.model_key is None:
                outcome = "unmanaged"
            else:
                scores = cache.score(ref, names)
                outcome = "managed"
        except Exception:
            # A prioritize answer has no Error field: log and stay neutral rather than fail the pod.
            log.exception("prioritize failed")
            names, scores, outcome = args.candidate_names(), {}, "error"
        record("prioritize", outcome, started)
        neutral = [n for n in names if n not in scores] if scores else names
        return _json(host_priority_list_json(neutral, NEUTRAL_SCORE, scores))

    async def bind(request: Request) -> Response:
        started = time.perf_counter()
        args = await _parse(request, ExtenderBindingArgs, "bind", settings.max_request_bytes)
        try:
            error, outcome = await _bind(args)
        except Exception as e:
            log.exception("bind failed")
            error, outcome = f"kvsched extender: bind failed: {e}", "error"
        record("bind", outcome, started)
        if error:
            log.info("bind %s/%s to %s refused: %s", args.PodNamespace, args.PodName, args.Node, error)
        return _json(ExtenderBindingResult(Error=error).model_dump_json())

    async def _bind(args: ExtenderBindingArgs) -> tuple[str, str]:
        """(error or "", outcome) for one bind request."""
        ns, name, uid, node = args.PodNamespace, args.PodName, args.PodUID, args.Node
        target = cache.bind_target(ns, name, uid)
        if target is None:
            return (f"pod {ns}/{name} (uid {uid or '?'}) is not known to the kvsched extender yet; "
                    f"the scheduler will retry"), "error"
        if not target.managed:
            try:
                await run_in_threadpool(binder.bind, ns, name, uid, node, None)
            except Exception as e:
                return str(e), "error"
            return "", "unmanaged"
        if not cache.current():
            return str(NotSynced("bind", reconnecting=cache.ready())), "not_synced"
        if target.node_name:
            if target.node_name == node and target.gpu is not None:
                return "", "managed"  # a retried bind whose first try went through
            return f"pod {ns}/{name} is already bound to {target.node_name}", "error"
        choice = cache.reserve(target.ref, node)
        if isinstance(choice, Refusal):
            if is_gate_reason(choice.reason):
                metrics.start_gate_refusals.labels(verb="bind").inc()
            if choice.conflict:
                metrics.bind_conflicts.inc()
                return f"{choice.reason}; the scheduler will retry", "conflict"
            return choice.reason, "rejected"
        device = cache.device_of(node, choice.gpu)
        if device is None:  # its GPU holder went between reserve and here: wait for the next one
            cache.release(uid)
            metrics.bind_conflicts.inc()
            return (f"GPU {choice.gpu} of node {node} has no GPU holder that reported its UUID; the scheduler will "
                    f"retry"), "conflict"
        annotations = {GPU_ANNOTATION: str(choice.gpu), VISIBLE_DEVICES_ANNOTATION: device,
                       MEMORY_FRACTION_ANNOTATION: share_text(choice.memory_fraction)}
        try:
            await run_in_threadpool(binder.bind, ns, name, uid, node, annotations)
        except BindOutcomeUnknown as e:
            # The pod may run on that GPU: keep the reservation (the watch turns it into a holder, or the
            # scheduler's retry finds the same slot reserved for this pod).
            log.warning("bind %s/%s to %s: %s", ns, name, node, e)
            return str(e), "error"
        except Exception as e:
            cache.release(uid)
            return str(e), "error"
        log.info("bound %s/%s to %s GPU %d (device %s, fraction %.3f)", ns, name, node, choice.gpu, device,
                 choice.memory_fraction)
        return "", "managed"

    async def healthz(request: Request) -> Response:
        return _json(b'{"ok":true}')

    async def readyz(request: Request) -> Response:
        ready = cache.ready()
        metrics.cache_synced.set(1 if ready else 0)
        return Response(content=json.dumps({"ready": ready}), media_type="application/json",
                        status_code=200 if ready else 503)

    async def metrics_(request: Request) -> Response:
        return Response(content=metrics.exposition(), media_type=CONTENT_TYPE)

    # Plain Starlette routes: the handlers read the body themselves, so FastAPI's parameter machinery would only
    # add cost (about 0.1 ms of CPU per request).
    for path, endpoint, method in (("/filter", filter_, "POST"), ("/prioritize", prioritize, "POST"),
                                   ("/bind", bind, "POST"), ("/healthz", healthz, "GET"),
                                   ("/readyz", readyz, "GET"), ("/metrics", metrics_, "GET")):
        app.add_route(path, endpoint, methods=[method])
    return app


def serve(app: FastAPI, settings: ExtenderSettings) -> None:
    """Serve `app` on uvicorn at `settings.host:settings.port` until a signal stops it (uvicorn handles
    SIGTERM/SIGINT)."""
    server = uvicorn.Server(uvicorn.Config(app, host=settings.host, port=settings.port, access_log=False,
                                           log_level=settings.log_level.lower()))
    server.run()
