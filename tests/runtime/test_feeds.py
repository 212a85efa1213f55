"""One informer per collection under `kvsched serve`: shared where scopes allow, the controller's handler first,
each guarded, the controller's namespace filtered in; selectors that differ are not shared."""
from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest
from kubernetes import client

from kvsched.k8s.watch import DEPLOYMENTS, LIVE_PODS, MODELSERVINGS, NODES, PDBS, Informer, Obj, Resource
from kvsched.runtime.feeds import Feed, fan_out, share_informers

API = client.ApiClient(client.Configuration())


def obj(namespace: str | None, name: str = "x") -> Obj:
    return {"metadata": {"name": name, **({"namespace": namespace} if namespace else {})}}


class Recorder:
    def __init__(self, name: str, calls: list[tuple[str, str, str]], fail: bool = False) -> None:
        self.name, self.calls, self.fail = name, calls, fail

    def __call__(self, event_type: str, o: Obj) -> None:
        self.calls.append((self.name, event_type, o["metadata"].get("namespace", "")))
        if self.fail:
            raise RuntimeError("handler bug")


def test_fan_out_calls_each_handler_in_order_even_after_one_raises() -> None:
    calls: list[tuple[str, str, str]] = []
    handler = fan_out("pods", [Recorder("controller", calls, fail=True), Recorder("extender", calls)])
    handler("ADDED", obj("ml"))
    handler("DELETED", obj("ml"))
    assert calls == [("controller", "ADDED", "ml"), ("extender", "ADDED", "ml"),
                     ("controller", "DELETED", "ml"), ("extender", "DELETED", "ml")]


def resource(namespace: str | None = None, selector: str = "") -> Resource:
    return replace(LIVE_PODS, namespace=namespace, label_selector=selector)


@pytest.mark.parametrize("first, second, shared, path, controller_hears", [
    pytest.param(resource(), resource(), True, "/api/v1/pods", ["ml", "other"], id="same scope: shared"),
    pytest.param(resource("ml"), resource(), True, "/api/v1/pods", ["ml"],
                 id="controller in one namespace: the extender's all-namespace watch, filtered"),
    pytest.param(resource(), resource("ml"), True, "/api/v1/pods", ["ml", "other"],
                 id="extender narrower: the controller's watch, filtered for the extender"),
    # Not shared: the apiserver scopes each watch, and each handler is the part's own.
    pytest.param(resource("ml"), resource("other"), False, "/api/v1/namespaces/ml/pods", None,
                 id="two namespaces: two watches"),
    pytest.param(resource("kvsched-system", "kvsched.io/gpu-holder=true"), resource(), False,
                 "/api/v1/namespaces/kvsched-system/pods", None, id="another label selector: two watches"),
    pytest.param(replace(NODES, namespace=None), resource(), False, "/api/v1/nodes", None,
                 id="another collection"),
])
def test_share_informers(first: Resource, second: Resource, shared: bool, path: str,
                         controller_hears: list[str] | None) -> None:
    calls: list[tuple[str, str, str]] = []
    mine, theirs = share_informers(API, [Feed(first, Recorder("controller", calls))],
                                   [Feed(second, Recorder("extender", calls))])
    assert len(mine) == len(theirs) == 1
    assert (mine[0] is theirs[0]) == shared
    source: Any = mine[0].source
    assert source.resource.path == path
    if controller_hears is None:
        assert mine[0].handler is not theirs[0].handler
        return
    for namespace in ("ml", "other"):
        mine[0].handler("ADDED", obj(namespace))
    assert [c[2] for c in calls if c[0] == "controller"] == controller_hears
    if shared:
        assert calls[0][0] == "controller"  # the controller's handler first
        assert [c[2] for c in calls if c[0] == "extender"] == [
            n for n in ("ml", "other") if second.namespace in (None, n)]


def distinct(informers: list[Informer]) -> list[Informer]:
    return list({id(i): i for i in informers}.values())


@pytest.mark.parametrize("namespace, holders, total, pods_watches", [
    pytest.param("", True, 5, 1, id="all namespaces: pods, nodes, ModelServings shared"),
    pytest.param("ml", False, 5, 1, id="one namespace: shared, the controller's part filtered"),
    pytest.param("ml", True, 6, 2, id="one namespace and holders: the holder watch has its own selector"),
])
def test_serve_runs_one_pod_informer(namespace: str, holders: bool, total: int, pods_watches: int) -> None:
    from kvsched.extender.cache import Cache
    from kvsched.runtime.controller import build_controller
    from kvsched.runtime.extender import extender_feeds
    from kvsched.settings import ControllerSettings

    controller = build_controller(ControllerSettings(namespace=namespace, gpu_holders=holders,
                                                     leader_election=False),
                                  with_health=False, api=API, share=extender_feeds(Cache()))
    everything = distinct(controller.all_informers())
    assert len(everything) == total
    assert len(controller.partner_informers) == 3
    assert all(any(p is i for i in controller.informers) for p in controller.partner_informers)
    collections = [i.source.name for i in everything]  # type: ignore[attr-defined]
    assert sum(1 for c in collections if c.startswith("pods")) == pods_watches
    assert any(c.startswith(DEPLOYMENTS.collection) for c in collections)
    assert MODELSERVINGS.collection in collections
    assert any(c.startswith(PDBS.collection) for c in collections)  # the controller's own (kvsched.controller.pdb)
