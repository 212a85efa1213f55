"""Informer loop: list then watch, resume from the last resourceVersion, relist with a diff on 410 Gone, back off
with jitter on errors, stop promptly. Driven through a scripted fake ListWatch (no cluster)."""
from __future__ import annotations

import itertools
import json
import random
import threading
import time
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import pytest

from kubernetes import client

from kvsched.api.trim import trim_deployment, trim_model_serving, trim_node, trim_pod
from kvsched.k8s.watch import (
    DEPLOYMENTS, LIVE_PODS, MODELSERVINGS, NODES, PODS, ApiListWatch, Backoff, Gone, Informer, Resource, informer,
    object_key,
)
from kvsched.metrics import Metrics

Obj = dict[str, Any]


def pod(name: str, rv: str, phase: str = "Running", content: str | None = None) -> Obj:
    """A pod at resourceVersion `rv` whose content changed with it (`content`: what changed, default `rv`)."""
    return {"metadata": {"name": name, "namespace": "ns", "resourceVersion": rv},
            "spec": {"nodeName": content or rv}, "status": {"phase": phase}}


class ConnectionDropped(ConnectionError):
    pass


class FakeListWatch:
    """Scripted lists and watches. A list step is (items, rv) or an exception; a watch step is a list of events
    (an exception inside the list is raised at that point) or an exception raised when the watch starts. When the
    script runs out, the informer is stopped."""

    name = "fake"

    def __init__(self, lists: list[Any], watches: list[Any]) -> None:
        self.lists = list(lists)
        self.watches = list(watches)
        self.calls: list[tuple[str, str | None]] = []
        self.informer: Informer | None = None
        self.closed = 0

    def _stop(self) -> None:
        assert self.informer is not None
        self.informer._stop.set()

    def list(self) -> tuple[list[Obj], str]:
        self.calls.append(("list", None))
        if not self.lists:
            self._stop()
            raise RuntimeError("script over")
        step = self.lists.pop(0)
        if isinstance(step, Exception):
            raise step
        items, rv = step
        return list(items), rv

    def watch(self, resource_version: str, timeout_s: int) -> Iterator[tuple[str, Obj]]:
        self.calls.append(("watch", resource_version))
        if not self.watches:
            self._stop()
            return
        step = self.watches.pop(0)
        if isinstance(step, Exception):
            raise step
        for item in step:
            if isinstance(item, Exception):
                raise item
            yield item

    def close(self) -> None:
        self.closed += 1


def run(lists: list[Any], watches: list[Any], **options: Any) -> tuple[Informer, FakeListWatch, list[tuple[str, str, str]], list[float]]:
    """Run the informer loop to the end of the script; returns it, the fake, the events seen as
    (type, name, rv) and the backoff delays it slept."""
    source = FakeListWatch(lists, watches)
    seen: list[tuple[str, str, str]] = []
    delays: list[float] = []
    ticks = itertools.count(step=10)  # every watch "lasts" 10 s unless a test says otherwise

    def sleep(seconds: float) -> bool:
        delays.append(seconds)
        return False

    informer = Informer(source, lambda t, o: seen.append((t, o["metadata"]["name"], o["metadata"]["resourceVersion"])),
                        rng=random.Random(1), sleep=sleep, clock=lambda: float(next(ticks)), **options)
    source.informer = informer
    informer.run()
    return informer, source, seen, delays


def test_first_list_is_delivered_as_added_then_watch_events_in_order() -> None:
    informer, source, seen, delays = run(
        lists=[([pod("a", "1"), pod("b", "2")], "10")],
        watches=[[("MODIFIED", pod("a", "11")), ("ADDED", pod("c", "12")), ("DELETED", pod("b", "13"))]],
    )
    assert seen == [("ADDED", "a", "1"), ("ADDED", "b", "2"), ("MODIFIED", "a", "11"), ("ADDED", "c", "12"),
                    ("DELETED", "b", "13")]
    assert informer.synced.is_set()
    assert sorted(object_key(o) for o in informer.items()) == ["ns/a", "ns/c"]
    assert source.calls[:2] == [("list", None), ("watch", "10")]
    assert delays == []


def test_a_change_only_in_what_the_trim_dropped_is_stored_but_not_delivered() -> None:
    # Trimmed objects: a new resourceVersion with the same kept fields (a node's heartbeat) wakes nobody, from a
    # watch or from a relist; the store and the watch position follow the new version all the same.
    informer, source, seen, _ = run(
        lists=[([pod("a", "1", content="x"), pod("b", "2", content="y")], "10"),
               ([pod("a", "21", content="x"), pod("b", "22", content="z")], "30")],
        watches=[[("MODIFIED", pod("a", "11", content="x")), ("MODIFIED", pod("b", "12", content="y")),
                  Gone("410")], []],
    )
    assert seen == [("ADDED", "a", "1"), ("ADDED", "b", "2"), ("MODIFIED", "b", "22")]
    assert {object_key(o): o["metadata"]["resourceVersion"] for o in informer.items()} == {"ns/a": "21",
                                                                                          "ns/b": "22"}
    assert ("watch", "30") in source.calls


def test_a_watch_that_ends_normally_resumes_from_the_last_resource_version_without_listing() -> None:
    _, source, seen, delays = run(
        lists=[([], "5")],
        watches=[[("ADDED", pod("a", "6"))], [("BOOKMARK", {"metadata": {"resourceVersion": "9"}})],
                 [("MODIFIED", pod("a", "10"))]],
    )
    assert [c for c in source.calls if c[0] == "watch"][:3] == [("watch", "5"), ("watch", "6"), ("watch", "9")]
    assert [c for c in source.calls if c[0] == "list"] == [("list", None)]
    assert seen == [("ADDED", "a", "6"), ("MODIFIED", "a", "10")]  # the bookmark is not an event
    assert delays == []


@pytest.mark.parametrize("gone", [
    pytest.param([("ERROR", {"kind": "Status", "code": 410, "message": "too old resource version"})],
                 id="ERROR event 410 in the stream"),
    pytest.param(Gone("410"), id="HTTP 410 when the watch starts"),
])
def test_gone_relists_and_delivers_only_the_difference(gone: Any) -> None:
    informer, source, seen, delays = run(
        lists=[([pod("keep", "1"), pod("change", "2"), pod("vanish", "3")], "10"),
               ([pod("keep", "1"), pod("change", "20"), pod("new", "21")], "30")],
        watches=[gone, []],
    )
    assert seen[3:] == [("DELETED", "vanish", "3"), ("MODIFIED", "change", "20"), ("ADDED", "new", "21")]
    assert informer.relists == 1
    assert ("watch", "30") in source.calls
    assert delays == []  # a relist is not an error: no backoff


def test_dropped_connection_backs_off_and_lists_again_delivering_the_difference() -> None:
    # A resumed watch would replay what was missed only after it opened; a list is complete once applied. So a
    # failure lists again (with backoff, growing while failures repeat) and delivers what changed meanwhile.
    informer, source, seen, delays = run(
        lists=[([], "1"), ConnectionDropped("refused"), ([pod("a", "2"), pod("b", "4")], "4"),
               ([pod("b", "5")], "6")],
        watches=[[("ADDED", pod("a", "2")), ConnectionDropped("reset by peer")],
                 [("MODIFIED", pod("b", "5")), ConnectionDropped("read timed out")]],
    )
    assert source.calls[:6] == [("list", None), ("watch", "1"), ("list", None), ("list", None), ("watch", "4"),
                                ("list", None)]
    assert informer.errors == 3 and informer.relists == 2  # the list that failed is no relist
    # Delays grow while failures repeat (equal jitter: within [d/2, d]) and restart after a good list.
    assert 0.25 <= delays[0] <= 0.5 and 0.5 <= delays[1] <= 1.0 and 0.25 <= delays[2] <= 0.5
    assert seen == [("ADDED", "a", "2"), ("ADDED", "b", "4"), ("MODIFIED", "b", "5"), ("DELETED", "a", "2")]


def test_a_failing_first_list_is_retried_and_synced_waits_for_it() -> None:
    informer, source, seen, delays = run(
        lists=[ConnectionDropped("refused"), RuntimeError("HTTP 503"), ([pod("a", "1")], "1")],
        watches=[],
    )
    assert [c[0] for c in source.calls[:4]] == ["list", "list", "list", "watch"]
    assert len(delays) == 2 and informer.synced.is_set()
    assert seen == [("ADDED", "a", "1")]


def test_a_watch_that_ends_at_once_without_events_backs_off_instead_of_spinning() -> None:
    source = FakeListWatch([([], "1")] * 3, [[], [], []])
    delays: list[float] = []
    informer = Informer(source, lambda t, o: None, rng=random.Random(1),
                        sleep=lambda s: delays.append(s) or False, clock=lambda: 0.0)
    source.informer = informer
    informer.run()
    assert len(delays) == 3


def test_a_failing_handler_does_not_stop_the_informer() -> None:
    seen: list[str] = []

    def handler(event_type: str, obj: Obj) -> None:
        if obj["metadata"]["name"] == "bad":
            raise ValueError("handler bug")
        seen.append(obj["metadata"]["name"])

    source = FakeListWatch([([pod("bad", "1"), pod("good", "2")], "2")], [[("ADDED", pod("later", "3"))]])
    ticks = itertools.count(step=10)
    informer = Informer(source, handler, sleep=lambda s: False, clock=lambda: float(next(ticks)))
    source.informer = informer
    informer.run()
    assert seen == ["good", "later"]


@pytest.mark.parametrize("attempt, low, high", [
    pytest.param(0, 0.25, 0.5, id="first retry"),
    pytest.param(3, 2.0, 4.0, id="fourth retry doubles three times"),
    pytest.param(10, 15.0, 30.0, id="capped at max_s"),
    pytest.param(10_000, 15.0, 30.0, id="huge attempt does not overflow"),
])
def test_backoff_delay_is_within_equal_jitter_bounds(attempt: int, low: float, high: float) -> None:
    rng = random.Random(7)
    values = [Backoff().delay_s(attempt, rng) for _ in range(200)]
    assert all(low <= v <= high for v in values)
    assert max(values) - min(values) > (high - low) / 4  # jittered, not constant


def test_stop_aborts_a_blocked_watch_and_joins_the_thread() -> None:
    release = threading.Event()

    class Blocking(FakeListWatch):
        def watch(self, resource_version: str, timeout_s: int) -> Iterator[tuple[str, Obj]]:
            release.wait(10)
            return iter(())

        def close(self) -> None:
            release.set()

    source = Blocking([([pod("a", "1")], "1")], [])
    informer = Informer(source, lambda t, o: None)
    source.informer = informer
    informer.start()
    assert informer.synced.wait(5)
    started = time.monotonic()
    informer.stop(timeout_s=5)
    assert time.monotonic() - started < 2
    assert informer._thread is not None and not informer._thread.is_alive()


@pytest.mark.parametrize("resource, path", [
    pytest.param(Resource("", "v1", "pods"), "/api/v1/pods", id="core, all namespaces"),
    pytest.param(Resource("", "v1", "pods", namespace="ml"), "/api/v1/namespaces/ml/pods", id="core, namespaced"),
    pytest.param(Resource("apps", "v1", "deployments"), "/apis/apps/v1/deployments", id="apps"),
    pytest.param(Resource("kvsched.io", "v1alpha1", "modelservings", namespace="ml"),
                 "/apis/kvsched.io/v1alpha1/namespaces/ml/modelservings", id="custom resource"),
])
def test_resource_paths(resource: Resource, path: str) -> None:
    assert resource.path == path


@pytest.mark.parametrize("resource, collection, name", [
    pytest.param(Resource("", "v1", "pods", namespace="ml", field_selector="status.phase!=Failed"), "pods",
                 "pods in ml", id="core, namespaced, selector"),
    pytest.param(DEPLOYMENTS, "deployments.apps", "deployments.apps", id="apps"),
    pytest.param(Resource("kvsched.io", "v1alpha1", "modelservings"), "modelservings.kvsched.io",
                 "modelservings.kvsched.io", id="custom resource"),
])
def test_resource_collection_is_the_metric_label_and_name_adds_the_namespace(
        resource: Resource, collection: str, name: str) -> None:
    assert (resource.collection, resource.name) == (collection, name)


def test_relists_and_failures_reach_the_callbacks() -> None:
    counted: list[str] = []
    informer_, _, _, delays = run(
        lists=[([pod("a", "1")], "1"), ([pod("a", "1")], "5"), ([pod("a", "1")], "7")],
        watches=[ConnectionDropped("refused"), [("ERROR", {"code": 410, "message": "too old"})],
                 ConnectionDropped("refused")],
        on_relist=lambda: counted.append("relist"), on_error=lambda: counted.append("error"))
    # Every list after the first is a relist: after the failure, after the 410; the last failure's list ends
    # the script.
    assert counted == ["error", "relist", "relist", "error"]
    assert (informer_.relists, informer_.errors, len(delays)) == (2, 2, 2)


def test_is_current_is_false_from_a_failure_until_the_informer_is_connected_again() -> None:
    seen: list[tuple[str, str, bool]] = []
    source = FakeListWatch(
        lists=[([pod("a", "1")], "1"), ([pod("a", "1")], "1"), ([pod("a", "1")], "7")],
        watches=[ConnectionDropped("refused"),
                 [("BOOKMARK", {"metadata": {"resourceVersion": "1"}}), ("ADDED", pod("b", "2"))],
                 [("ERROR", {"code": 410, "message": "too old"})]])
    ticks = itertools.count(step=10)

    def sleep(seconds: float) -> bool:
        seen.append(("backoff", "", informer.is_current()))
        return False

    informer = Informer(source, lambda t, o: seen.append((t, o["metadata"]["name"], informer.is_current())),
                        rng=random.Random(1), sleep=sleep, clock=lambda: float(next(ticks)))
    source.informer = informer
    assert not informer.is_current()
    informer.run()
    assert seen == [
        ("ADDED", "a", False),    # the first list, before it is synced
        ("backoff", "", False),   # the watch failed: stale until a new list is applied
        ("ADDED", "b", True),     # listed again (nothing changed), then the new watch's event
        ("DELETED", "b", False),  # 410: the relist's difference is delivered before it is current again
    ]
    assert informer.is_current()


def test_informer_factory_counts_into_metrics_under_the_collection_label() -> None:
    metrics = Metrics()
    deployments = informer(client.ApiClient(), Resource("apps", "v1", "deployments", namespace="ml"),
                           lambda t, o: None, counters=metrics)
    before = metrics.exposition().decode()
    assert 'kvsched_watch_relists_total{resource="deployments.apps"} 0.0' in before  # exported from the start
    assert 'kvsched_watch_errors_total{resource="deployments.apps"} 0.0' in before
    assert deployments._on_relist is not None and deployments._on_error is not None
    deployments._on_relist()
    deployments._on_error()
    deployments._on_error()
    text = metrics.exposition().decode()
    assert 'kvsched_watch_relists_total{resource="deployments.apps"} 1.0' in text
    assert 'kvsched_watch_errors_total{resource="deployments.apps"} 2.0' in text


def test_after_a_failure_the_view_is_current_only_once_the_new_list_is_applied() -> None:
    # What changed while the watch was down (c created, a deleted) is delivered before the informer says it is
    # current again; a reader that asks in between is told the view is stale.
    seen: list[tuple[str, str, bool]] = []
    source = FakeListWatch(lists=[([pod("a", "1")], "1"), ([pod("c", "3")], "3")],
                           watches=[ConnectionDropped("read timed out"), []])
    informer = Informer(source, lambda t, o: seen.append((t, o["metadata"]["name"], informer.is_current())),
                        rng=random.Random(1), sleep=lambda s: False, clock=itertools.count(step=10).__next__)
    source.informer = informer
    informer.run()
    assert seen == [("ADDED", "a", False), ("DELETED", "a", False), ("ADDED", "c", False)]
    assert informer.is_current()


def test_a_watch_read_outlasts_its_server_side_timeout_by_the_dead_connection_margin() -> None:
    from kvsched.k8s.watch import DEAD_WATCH_MARGIN_S

    informer = Informer(FakeListWatch([], []), lambda t, o: None)
    longest = 2 * informer.watch_timeout_s + DEAD_WATCH_MARGIN_S
    assert longest <= 90.0  # a silently dead connection is found within about a minute and a half


class FakeRaw:
    """A urllib3 response: `data` for a list page, lines when iterated (a watch stream)."""

    def __init__(self, body: Any) -> None:
        self.data = json.dumps(body).encode() if not isinstance(body, list) else b""
        self.lines = [json.dumps(e).encode() + b"\n" for e in body] if isinstance(body, list) else []

    def __iter__(self) -> Iterator[bytes]:
        return iter(self.lines)

    def release_conn(self) -> None:
        pass


class FakeApi:
    """An ApiClient that answers GETs from a script of bodies and records each query."""

    def __init__(self, bodies: list[Any]) -> None:
        self.bodies = bodies
        self.queries: list[dict[str, Any]] = []

    def param_serialize(self, method: str, path: str, query_params: list[tuple[str, Any]], **_: Any) -> Any:
        return method, path, {}, None, dict(query_params)

    def call_api(self, method: str, url: str, headers: Any, body: Any, query: dict[str, Any], **_: Any) -> Any:
        self.queries.append(query)
        return SimpleNamespace(status=200, response=FakeRaw(self.bodies.pop(0)))


def whole_pod(name: str, rv: str) -> Obj:
    return {"metadata": {"name": name, "namespace": "ns", "resourceVersion": rv,
                         "managedFields": [{"manager": "kubelet", "fieldsV1": {"f:status": {}}}]},
            "spec": {"nodeName": "n1", "volumes": [{"name": "v", "emptyDir": {}}],
                     "containers": [{"name": "c", "env": [{"name": "A", "value": "1"}]}]},
            "status": {"phase": "Running", "containerStatuses": [{"name": "c", "restartCount": 2}]}}


def test_api_list_watch_lists_in_pages_and_trims_every_object_as_it_arrives() -> None:
    api = FakeApi([
        {"kind": "PodList", "apiVersion": "v1", "metadata": {"continue": "t1"}, "items": [whole_pod("a", "1")]},
        {"kind": "PodList", "apiVersion": "v1", "metadata": {"resourceVersion": "7"}, "items": [whole_pod("b", "2")]},
        [{"type": "MODIFIED", "object": whole_pod("a", "8")},
         {"type": "ERROR", "object": {"kind": "Status", "code": 500, "metadata": {}}}],
    ])
    source = ApiListWatch(api, PODS)  # type: ignore[arg-type]
    items, rv = source.list()
    assert rv == "7"
    assert [(q["limit"], q.get("continue")) for q in api.queries] == [(500, None), (500, "t1")]
    assert items == [{"kind": "Pod", "apiVersion": "v1", **trim_pod(whole_pod(n, v))} for n, v in [("a", "1"),
                                                                                                 ("b", "2")]]
    assert all("managedFields" not in i["metadata"] and "volumes" not in i["spec"] for i in items)
    events = list(source.watch("7", 30))
    assert events[0] == ("BOOKMARK", {"metadata": {"resourceVersion": "7"}})
    assert events[1] == ("MODIFIED", trim_pod(whole_pod("a", "8")))
    assert events[2][1]["code"] == 500  # an ERROR's Status is passed on whole


@pytest.mark.parametrize("resource, trim", [
    pytest.param(PODS, trim_pod, id="pods"), pytest.param(LIVE_PODS, trim_pod, id="live pods"),
    pytest.param(NODES, trim_node, id="nodes"), pytest.param(DEPLOYMENTS, trim_deployment, id="deployments"),
    pytest.param(MODELSERVINGS, trim_model_serving, id="modelservings"),
])
def test_every_collection_kvsched_watches_is_trimmed(resource: Resource, trim: Any) -> None:
    assert resource.trim is trim
