"""Informers: list a collection, then watch it from the list's resourceVersion, and tell a handler what changed.

One `Informer` per collection (pods, nodes, deployments, modelservings.kvsched.io ...), each on its own daemon
thread. The handler is called on that thread, one event at a time, with `(event type, object)`: the type is
"ADDED", "MODIFIED" or "DELETED" and the object is a plain dict in the API's JSON shape (camelCase, as
`kubectl get -o json` prints it; no client model classes, which cost milliseconds per pod to build), cut down by
its Resource's `trim` (kvsched.api.trim: only the fields kvsched reads, never managedFields) as each list page and
each watch event arrives, so neither the store nor a list in progress holds whole objects. A MODIFIED event, or
an object a relist finds with a new resourceVersion, whose trimmed content did not change is stored but not
delivered: a change only in a dropped field (a node's heartbeat, a container's restart count) wakes nobody.

Failure handling, as client-go's reflector does it:
- the watch ends normally (server-side `timeoutSeconds`): watch again from the last resourceVersion seen;
- 410 Gone (the resourceVersion is older than etcd's compaction window): list again, and deliver the difference
  between what the handler was told and the new list (ADDED / MODIFIED / DELETED), so a handler never misses a
  deletion that happened while the watch was down;
- any other error (connection dropped, a read that timed out, apiserver restarting, 5xx): wait with exponential
  backoff and jitter, then list again and deliver the difference, as after a 410. (client-go resumes from the last
  resourceVersion instead; a resumed watch replays what was missed only after it opened, so until those events
  arrive nothing says the view is complete. A list is complete when it is applied.)
`synced` is set once the first list has been delivered; `is_current()` is False from a failed list or watch until a
new list has been applied, so a reader can refuse to answer from a stale view. A connection that dies silently
(no FIN, no RST: a node's network cut) is found by the read timeout: each watch asks the server to end it within
30-60 s, and a read that gets nothing for 15 s longer is a dead connection (an error, then a relist), so a dead
watch counts as current for at most about 75 s. `on_relist` (every list after the first) and `on_error` callbacks count relists and failures
(kvsched_watch_relists_total, kvsched_watch_errors_total). No retry library: the loop needs "relist on 410,
back off otherwise, stop promptly", which is a dozen lines here.

Called by: kvsched.extender (its cache) and kvsched.controller. Unit tests drive `Informer.run()` with a fake
`ListWatch`; e2e tests use `ApiListWatch` against the real apiserver.
"""

from __future__ import annotations

import json
import logging
import random
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol

from kubernetes import client

from kvsched.api.names import GROUP, LIVE_PODS_FIELD_SELECTOR, PLURAL, VERSION
from kvsched.api.trim import Trim, trim_deployment, trim_model_serving, trim_node, trim_pdb, trim_pod

log = logging.getLogger(__name__)

ADDED, MODIFIED, DELETED = "ADDED", "MODIFIED", "DELETED"
Obj = dict[str, Any]
Handler = Callable[[str, Obj], None]


class WatchCounters(Protocol):
    """Where `informer()` reports an informer (once, when made: its counters start at 0), its relists (after 410
    Gone) and failed lists or watches, by the collection's name (`Resource.collection`). kvsched.metrics.Metrics
    is one."""

    def watch_known(self, resource: str) -> None: ...

    def watch_relisted(self, resource: str) -> None: ...

    def watch_failed(self, resource: str) -> None: ...


class Gone(Exception):
    """The resourceVersion asked for is too old (HTTP 410 or a watch ERROR event with code 410): list again."""


class WatchError(Exception):
    """Any other failure of a list or watch (status, body, or a Status ERROR event); retried with backoff."""


class ListWatch(Protocol):
    """Where an Informer gets its objects. `watch` yields (type, object) including "BOOKMARK" and "ERROR"
    events as the apiserver sends them, and returns when the server ends the watch."""

    name: str

    def list(self) -> tuple[list[Obj], str]:
        """Every object and the collection's resourceVersion. Raises Gone, WatchError or a connection error."""
        ...

    def watch(self, resource_version: str, timeout_s: int) -> Iterator[tuple[str, Obj]]:
        """Changes after `resource_version` for about `timeout_s` seconds. Raises like `list`. May yield a
        BOOKMARK at `resource_version` as soon as the apiserver has accepted the watch."""
        ...

    def close(self) -> None:
        """Abort a watch in progress (called from another thread by Informer.stop)."""
        ...


@dataclass(frozen=True)
class Resource:
    """A collection of the API: core ("" group), a built-in group (apps) or a custom resource's group."""

    group: str
    version: str
    plural: str
    namespace: str | None = None  # None: all namespaces
    label_selector: str = ""
    field_selector: str = ""
    trim: Trim | None = None  # applied to every listed and watched object (None: kept whole)

    @property
    def path(self) -> str:
        prefix = f"/api/{self.version}" if not self.group else f"/apis/{self.group}/{self.version}"
        scope = f"/namespaces/{self.namespace}" if self.namespace else ""
        return f"{prefix}{scope}/{self.plural}"

    @property
    def collection(self) -> str:
        """`plural.group` ("pods", "deployments.apps"), without namespace or selectors: a metric label."""
        return f"{self.plural}.{self.group}" if self.group else self.plural

    @property
    def name(self) -> str:
        return self.collection + (f" in {self.namespace}" if self.namespace else "")


PODS = Resource("", "v1", "pods", trim=trim_pod)
NODES = Resource("", "v1", "nodes", trim=trim_node)
DEPLOYMENTS = Resource("apps", "v1", "deployments", trim=trim_deployment)
MODELSERVINGS = Resource(GROUP, VERSION, PLURAL, trim=trim_model_serving)
PDBS = Resource("policy", "v1", "poddisruptionbudgets", trim=trim_pdb)
# Pods that can hold a GPU (both processes watch these: Succeeded and Failed pods hold nothing).
LIVE_PODS = Resource("", "v1", "pods", field_selector=LIVE_PODS_FIELD_SELECTOR, trim=trim_pod)


@dataclass(frozen=True)
class Backoff:
    """Delay before retry number `attempt` (0-based): half of min(max_s, initial_s * 2**attempt) plus a random
    half of it ("equal jitter"), so a fleet of watchers does not reconnect in lock step after an apiserver
    restart, yet never retries at once. Defaults: 0.5 s first (an apiserver restart takes seconds), 30 s cap
    (a long outage costs at most half a minute of extra staleness once it ends)."""

    initial_s: float = 0.5
    max_s: float = 30.0

    def delay_s(self, attempt: int, rng: random.Random) -> float:
        ceiling = min(self.max_s, self.initial_s * 2.0 ** min(attempt, 32))
        return ceiling / 2 + rng.uniform(0, ceiling / 2)


def object_key(obj: Obj) -> str:
    """`namespace/name` (or `name` for cluster-scoped objects)."""
    meta = obj.get("metadata") or {}
    namespace = meta.get("namespace")
    return f"{namespace}/{meta.get('name')}" if namespace else str(meta.get("name"))


def _resource_version(obj: Obj) -> str:
    return str((obj.get("metadata") or {}).get("resourceVersion") or "")


def same_content(a: Obj, b: Obj) -> bool:
    """Whether two versions of an object are equal but for `metadata.resourceVersion` (on trimmed objects: no
    field kvsched reads changed)."""
    return _without_version(a) == _without_version(b)


def _without_version(obj: Obj) -> Obj:
    meta = obj.get("metadata")
    if isinstance(meta, dict) and "resourceVersion" in meta:
        return {**obj, "metadata": {k: v for k, v in meta.items() if k != "resourceVersion"}}
    return obj


class Informer:
    """List-then-watch one collection on a daemon thread and call `handler(type, object)` for every change.

    Invariants: events for one object reach the handler in the order the apiserver produced them; after a relist
    the handler has been told exactly the difference to what it knew. `items()` is a snapshot of the objects
    as last delivered. The handler must not block for long (it delays every later event of this collection);
    an exception from it is logged and the event is dropped, the informer keeps running.
    """

    def __init__(self, source: ListWatch, handler: Handler, *, backoff: Backoff = Backoff(),
                 rng: random.Random | None = None, watch_timeout_s: int = 30,
                 sleep: Callable[[float], bool] | None = None, clock: Callable[[], float] = time.monotonic,
                 on_relist: Callable[[], None] | None = None, on_error: Callable[[], None] | None = None
                 ) -> None:
        """`watch_timeout_s`: server-side timeout of one watch (client-go uses 5-10 min; shorter here so that the
        read timeout that finds a dead connection can be short too: `ApiListWatch.watch`); each watch asks for a
        random value in [watch_timeout_s, 2 * watch_timeout_s) so restarts spread out. `sleep(seconds)` waits
        and returns True when the informer was stopped meanwhile (default: waits on the stop event).
        `on_relist` is called on each 410 Gone (before the list again), `on_error` on each failed list or watch
        (before the backoff); both on the informer's thread, and must not raise."""
        self.source = source
        self.handler = handler
        self.backoff = backoff
        self.rng = rng or random.Random()
        self.watch_timeout_s = watch_timeout_s
        self.synced = threading.Event()
        self._stop = threading.Event()
        self._sleep = sleep or self._stop.wait
        self._clock = clock
        self._lock = threading.Lock()
        self._store: dict[str, Obj] = {}
        self._thread: threading.Thread | None = None
        self._resource_version: str | None = None  # None: list before watching
        self.relists = 0  # lists after the first one (410 Gone); for tests and logs
        self.errors = 0   # failed lists and watches
        self._on_relist = on_relist
        self._on_error = on_error
        self._failing = False  # a list or watch failed and no list or watch has succeeded since

    # -- lifecycle --------------------------------------------------------------------------------------------
    def start(self) -> Informer:
        """Run on a daemon thread named after the collection; returns self."""
        self._thread = threading.Thread(target=self.run, name=f"informer-{self.source.name}", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout_s: float = 5.0) -> None:
        """Stop the loop, abort the watch in progress and join the thread (at most `timeout_s`)."""
        self._stop.set()
        try:
            self.source.close()
        except Exception:  # closing a half-dead connection may raise; the thread exits either way
            log.debug("closing %s", self.source.name, exc_info=True)
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout_s)

    @property
    def stopped(self) -> bool:
        return self._stop.is_set()

    def is_current(self) -> bool:
        """True once synced, except from a failed list or watch (or a 410) until a new list has been applied:
        meanwhile changes may be missing from what the handler was told."""
        return self.synced.is_set() and not self._failing

    def items(self) -> list[Obj]:
        """The objects as last delivered to the handler (a new list; the dicts are shared, do not mutate)."""
        with self._lock:
            return list(self._store.values())

    # -- the loop ---------------------------------------------------------------------------------------------
    def run(self) -> None:
        """The list/watch loop; returns when stopped. Called by `start` on its thread, or directly by tests."""
        attempt = 0
        while not self._stop.is_set():
            try:
                if self._resource_version is None:
                    items, self._resource_version = self.source.list()
                    if self.synced.is_set():  # a list after the first one: a relist (after a 410 or a failure)
                        self.relists += 1
                        if self._on_relist is not None:
                            self._on_relist()
                    self._replace(items)
                    self._failing = False
                    attempt = 0
                started = self._clock()
                delivered = self._watch_once(self._resource_version)
                if delivered == 0 and self._clock() - started < 1.0 and not self._stop.is_set():
                    # A watch that ends at once without events is a server in trouble: do not spin.
                    raise WatchError(f"watch of {self.source.name} ended at once")
                attempt = 0
            except Gone as e:
                log.info("%s: resourceVersion %s is too old (410 Gone: %s); listing again", self.source.name,
                         self._resource_version, e)
                self._resource_version = None
                self._failing = True
            except Exception as e:  # connection errors, 5xx, bad bodies: back off and resume
                if self._stop.is_set():
                    return
                self.errors += 1
                self._failing = True
                self._resource_version = None  # list again: current once that list is applied
                if self._on_error is not None:
                    self._on_error()
                delay = self.backoff.delay_s(attempt, self.rng)
                attempt += 1
                log.warning("%s: %s: %s; listing again in %.1fs", self.source.name, type(e).__name__, e, delay)
                if self._sleep(delay):
                    return

    def _watch_once(self, resource_version: str) -> int:
        """One watch from `resource_version`; returns the events delivered. Keeps `_resource_version` at the
        last one seen, so a watch that breaks mid-stream resumes after the last event delivered."""
        delivered = 0
        timeout_s = self.watch_timeout_s + int(self.rng.uniform(0, self.watch_timeout_s))
        for event_type, obj in self.source.watch(resource_version, timeout_s):
            if self._stop.is_set():
                break
            if event_type == "ERROR":
                code = obj.get("code")
                if code == 410:
                    raise Gone(obj.get("message", "resource version too old"))
                raise WatchError(f"watch ERROR event: {obj.get('code')} {obj.get('message')}")
            self._resource_version = _resource_version(obj) or self._resource_version
            if event_type == "BOOKMARK":
                continue
            if event_type not in (ADDED, MODIFIED, DELETED):
                raise WatchError(f"unknown watch event type {event_type!r}")
            self._apply(event_type, obj)
            delivered += 1
        return delivered

    def _apply(self, event_type: str, obj: Obj) -> None:
        key = object_key(obj)
        with self._lock:
            if event_type == DELETED:
                previous = self._store.pop(key, None)
            else:
                previous = self._store.get(key)
                self._store[key] = obj
        if event_type == MODIFIED and previous is not None and same_content(previous, obj):
            return  # only a field the trim dropped changed
        self._deliver(event_type, obj)

    def _replace(self, items: list[Obj]) -> None:
        """Deliver the difference between the store and a fresh list, then mark the informer synced."""
        fresh = {object_key(o): o for o in items}
        with self._lock:
            old = self._store
            self._store = dict(fresh)
        for key, obj in old.items():
            if key not in fresh:
                self._deliver(DELETED, obj)
        for key, obj in fresh.items():
            previous = old.get(key)
            if previous is None:
                self._deliver(ADDED, obj)
            elif not same_content(previous, obj):  # trimmed objects: a change in a dropped field is no change
                self._deliver(MODIFIED, obj)
        self.synced.set()

    def _deliver(self, event_type: str, obj: Obj) -> None:
        try:
            self.handler(event_type, obj)
        except Exception:
            log.exception("%s: handler failed on %s %s", self.source.name, event_type, object_key(obj))


class ApiListWatch:
    """`ListWatch` for any collection through an ApiClient, reading raw JSON (no model classes)."""

    page_size = 500  # objects per list page: bounded responses on big clusters, few round trips on small ones

    def __init__(self, api: client.ApiClient, resource: Resource, connect_timeout_s: float = 5.0,
                 list_timeout_s: float = 60.0) -> None:
        """Lists and watches `resource`, applying its `trim` to each object as it is parsed (per list page)."""
        self.api = api
        self.resource = resource
        self._trim = resource.trim or (lambda obj: obj)
        self.name = resource.name
        self.connect_timeout_s = connect_timeout_s
        self.list_timeout_s = list_timeout_s
        self._response: Any = None
        self._lock = threading.Lock()
        self.watches_started = 0  # for logs and tests

    def _query(self, **params: str | int | bool) -> list[tuple[str, str | int | bool]]:
        query: list[tuple[str, str | int | bool]] = []
        if self.resource.label_selector:
            query.append(("labelSelector", self.resource.label_selector))
        if self.resource.field_selector:
            query.append(("fieldSelector", self.resource.field_selector))
        query.extend((k, v) for k, v in params.items())
        return query

    def _get(self, query: list[tuple[str, str | int | bool]], timeout: tuple[float, float]) -> Any:
        method, url, headers, body, post = self.api.param_serialize(
            "GET", self.resource.path, query_params=query, header_params={"Accept": "application/json"},
            auth_settings=["BearerToken"])
        response = self.api.call_api(method, url, headers, body, post, _request_timeout=timeout)
        raw = response.response
        if response.status == 410:
            raw.release_conn()
            raise Gone(f"{self.name}: 410 Gone")
        if response.status != 200:
            text = raw.data[:300].decode(errors="replace")
            raise WatchError(f"{self.name}: HTTP {response.status}: {text}")
        return raw

    def list(self) -> tuple[list[Obj], str]:
        items: list[Obj] = []
        token = ""
        while True:
            params: dict[str, str | int | bool] = {"limit": self.page_size}
            if token:
                params["continue"] = token
            raw = self._get(self._query(**params), (self.connect_timeout_s, self.list_timeout_s))
            try:
                page = json.loads(raw.data)
            except ValueError as e:
                raise WatchError(f"{self.name}: list body is not JSON: {e}") from None
            kind = page.get("kind", "")
            item_kind = kind[:-4] if kind.endswith("List") else ""
            for item in page.get("items") or []:
                # List items omit kind/apiVersion; add them so handlers see the same shape as watch events.
                item.setdefault("kind", item_kind)
                item.setdefault("apiVersion", page.get("apiVersion", ""))
                items.append(self._trim(item))
            meta = page.get("metadata") or {}
            del page, raw  # the whole page goes before the next one is read
            token = meta.get("continue") or ""
            if not token:
                return items, str(meta.get("resourceVersion") or "")

    def watch(self, resource_version: str, timeout_s: int) -> Iterator[tuple[str, Obj]]:
        query = self._query(watch=True, resourceVersion=resource_version, allowWatchBookmarks=True,
                            timeoutSeconds=timeout_s)
        # The read timeout outlasts the server-side timeout: a silent connection beyond it is a dead one.
        raw = self._get(query, (self.connect_timeout_s, timeout_s + DEAD_WATCH_MARGIN_S))
        with self._lock:
            self._response = raw
            self.watches_started += 1
        try:
            # The apiserver accepted the watch (HTTP 200): say so at once, so the informer counts as connected
            # again even when nothing changes for minutes. The resourceVersion is the one asked for.
            yield "BOOKMARK", {"metadata": {"resourceVersion": resource_version}}
            for line in raw:
                if not line.strip():
                    continue
                try:
                    event = json.loads(line)
                except ValueError as e:
                    raise WatchError(f"{self.name}: watch line is not JSON: {e}") from None
                event_type, obj = str(event.get("type", "")), event.get("object") or {}
                yield event_type, self._trim(obj) if event_type in (ADDED, MODIFIED, DELETED) else obj
        finally:
            with self._lock:
                self._response = None
            raw.release_conn()

    def close(self) -> None:
        with self._lock:
            raw = self._response
        if raw is not None:
            raw.shutdown()  # unblocks the reading thread (urllib3 >= 2.3)


DEAD_WATCH_MARGIN_S = 15.0  # a watch silent this long past its server-side timeout is a dead connection


def informer(api: client.ApiClient, resource: Resource, handler: Handler, *, counters: WatchCounters | None = None,
             **options: Any) -> Informer:
    """An Informer (not started) for `resource` through `api`; `options` go to Informer. `counters` (the
    process's Metrics) hears of its relists and failures under the label `resource.collection`."""
    if counters is not None:
        label = resource.collection
        counters.watch_known(label)
        options.setdefault("on_relist", lambda: counters.watch_relisted(label))
        options.setdefault("on_error", lambda: counters.watch_failed(label))
    return Informer(ApiListWatch(api, resource), handler, **options)


def wait_synced(informers: list[Informer], timeout_s: float) -> bool:
    """True when every informer has delivered its first list within `timeout_s` seconds (in total)."""
    deadline = time.monotonic() + timeout_s
    return all(i.synced.wait(max(0.0, deadline - time.monotonic())) for i in informers)
