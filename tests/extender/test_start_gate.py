"""The start gate in the extender's cache: a reservation and a bound, not-Ready pod each hold their GPU's gate,
the watch's PodScheduled time takes over from the reservation's, and the gate opens when the pod is Ready or its
start times out. Property: whatever the order of binds, readiness, watch events and time, no bind ever admits a
second starting pod onto a GPU."""
from __future__ import annotations

import datetime
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from kvsched.api.names import GPU_ANNOTATION, MEMORY_FRACTION_ANNOTATION
from kvsched.controller.slots import PlannedSlot, PodRef, Refusal
from kvsched.extender.cache import Cache

from .world import model, node, pod

Obj = dict[str, Any]
T0 = 1_800_000_000  # 2027-01-15T08:00:00Z
TIMEOUT = 60
MODELS = ["m0", "m1", "m2"]
GPUS = 2


class Clock:
    def __init__(self) -> None:
        self.now = float(T0)

    def __call__(self) -> float:
        return self.now


def rfc3339(epoch: float) -> str:
    return datetime.datetime.fromtimestamp(epoch, datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def bound_pod(name: str, model_name: str, gpu: int, bound_at: float, ready: bool) -> Obj:
    p = pod(name, model_name, "n1", gpu)
    p["status"]["conditions"] = [{"type": "PodScheduled", "status": "True", "lastTransitionTime": rfc3339(bound_at)},
                                 {"type": "Ready", "status": "True" if ready else "False"}]
    return p


def gate_world(clock: Clock) -> Cache:
    cache = Cache(start_timeout_s=TIMEOUT, wall=clock)
    cache.on_node("ADDED", node("n1", gpus=GPUS))
    for m in MODELS:  # every model planned on every GPU, small enough that memory never stands in the way
        cache.on_model("ADDED", model(m, "8Gi", [("n1", g, 0.3) for g in range(GPUS)]))
    cache.sync_checks = [lambda: True]
    return cache


def test_a_reservation_then_the_bound_pod_hold_the_gate_until_ready() -> None:
    clock = Clock()
    cache = gate_world(clock)
    first = cache.reserve(PodRef("ml", "m0-a", "uid-m0-a", "ml/m0"), "n1")
    assert isinstance(first, PlannedSlot)
    waiting = PodRef("ml", "m1-a", "uid-m1-a", "ml/m1")
    # GPU 0 is taken by the reservation's start, so the other model's pod goes to GPU 1 (and waits there too).
    second = cache.reserve(waiting, "n1")
    assert isinstance(second, PlannedSlot) and second.gpu != first.gpu
    third = PodRef("ml", "m2-a", "uid-m2-a", "ml/m2")
    refused = cache.filter(third, ["n1"])
    assert refused.passed == [] and "pod ml/m0-a is starting there" in refused.failed["n1"]
    assert "pod ml/m1-a is starting there" in refused.failed["n1"]
    # The watch shows both bound 5 s ago: still starting.
    clock.now += 5
    cache.on_pod("MODIFIED", bound_pod("m0-a", "m0", first.gpu, T0, ready=False))
    cache.on_pod("MODIFIED", bound_pod("m1-a", "m1", second.gpu, T0, ready=False))
    assert cache.filter(third, ["n1"]).passed == []
    # m0-a is Ready: its GPU opens.
    cache.on_pod("MODIFIED", bound_pod("m0-a", "m0", first.gpu, T0, ready=True))
    choice = cache.reserve(third, "n1")
    assert isinstance(choice, PlannedSlot) and choice.gpu == first.gpu


def test_a_pod_that_never_becomes_ready_releases_the_gate_after_the_timeout() -> None:
    clock = Clock()
    cache = gate_world(clock)
    cache.on_pod("ADDED", bound_pod("m0-a", "m0", 0, T0, ready=False))
    cache.on_pod("ADDED", bound_pod("m1-a", "m1", 1, T0, ready=True))
    # GPU 1's pod is Ready; make it start again with another pod so that only GPU 0's gate decides.
    clock.now = T0 + 1
    cache.on_pod("ADDED", bound_pod("m2-b", "m2", 1, T0 + 1, ready=False))
    blocked = cache.reserve(PodRef("ml", "m1-b", "uid-m1-b", "ml/m1"), "n1")
    assert isinstance(blocked, Refusal) and "pod ml/m0-a is starting there" in blocked.reason
    assert f"at the latest until {rfc3339(T0 + TIMEOUT)}" in blocked.reason
    clock.now = T0 + TIMEOUT
    opened = cache.reserve(PodRef("ml", "m1-b", "uid-m1-b", "ml/m1"), "n1")
    assert isinstance(opened, PlannedSlot) and opened.gpu == 0


Op = tuple[str, int, int]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["bind", "watch", "ready", "tick", "delete"]),
                          st.integers(0, 11), st.integers(1, TIMEOUT)), max_size=40))
def test_no_bind_admits_a_second_starting_pod_on_a_gpu(ops: list[Op]) -> None:
    clock = Clock()
    cache = gate_world(clock)
    bound: dict[int, tuple[int, float, bool]] = {}   # pod number -> (gpu, bound at, ready)
    gone: set[int] = set()
    for op, i, dt in ops:
        name, model_name = f"p{i}", MODELS[i % len(MODELS)]
        if op == "tick":
            clock.now += dt
        elif op == "bind" and i not in bound and i not in gone:
            choice = cache.reserve(PodRef("ml", name, f"uid-{name}", f"ml/{model_name}"), "n1")
            if isinstance(choice, PlannedSlot):
                starting_there = [j for j, (g, at, ready) in bound.items()
                                  if g == choice.gpu and j not in gone and not ready and clock.now - at < TIMEOUT]
                assert not starting_there, f"{name} admitted on GPU {choice.gpu} while {starting_there} start"
                bound[i] = (choice.gpu, clock.now, False)
        elif op in ("watch", "ready") and i in bound and i not in gone:
            gpu, at, ready = bound[i]
            ready = ready or op == "ready"
            bound[i] = (gpu, at, ready)
            obj = bound_pod(name, model_name, gpu, at, ready)
            obj["metadata"]["annotations"][MEMORY_FRACTION_ANNOTATION] = "0.3"
            assert obj["metadata"]["annotations"][GPU_ANNOTATION] == str(gpu)
            cache.on_pod("MODIFIED", obj)
        elif op == "delete" and i in bound and i not in gone:
            cache.on_pod("DELETED", bound_pod(name, model_name, bound[i][0], bound[i][1], bound[i][2]))
            gone.add(i)


def test_refusals_at_the_gate_are_counted_by_verb() -> None:
    from fastapi.testclient import TestClient

    from kvsched.extender.app import create_app
    from kvsched.metrics import Metrics
    from kvsched.settings import ExtenderSettings

    from .world import FakeBinder, args, binding

    clock = Clock()
    cache = gate_world(clock)
    for g in range(GPUS):  # both GPUs have a pod starting
        cache.on_pod("ADDED", bound_pod(f"m0-{g}", "m0", g, T0, ready=False))
    metrics = Metrics()
    app = TestClient(create_app(ExtenderSettings(), cache, FakeBinder(), metrics))
    waiting = pod("m1-a", "m1")
    answer = app.post("/filter", json=args(waiting, ["n1"])).json()
    assert answer["NodeNames"] == [] and "pod ml/m0-0 is starting there" in answer["FailedNodes"]["n1"]
    cache.on_pod("ADDED", waiting)
    refused = app.post("/bind", json=binding(waiting, "n1")).json()
    assert "is starting there" in refused["Error"]

    def count(verb: str) -> float:
        value = metrics.registry.get_sample_value("kvsched_start_gate_refusals_total", {"verb": verb})
        assert value is not None
        return value

    assert (count("filter"), count("bind")) == (1.0, 1.0)
    clock.now += TIMEOUT  # the starts time out: the next filter passes and counts nothing
    assert app.post("/filter", json=args(waiting, ["n1"])).json()["NodeNames"] == ["n1"]
    assert count("filter") == 1.0
