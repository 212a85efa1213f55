"""The start gate (kvsched.controller.start_gate) and the slot rule's use of it: which pod is starting on a GPU,
what a waiting pod is told, when the gate opens by itself."""
from __future__ import annotations

from dataclasses import dataclass

import pytest

from kvsched.api.objects import PodObj
from kvsched.controller.slots import (
    Holder, ModelPlan, NodeGpus, PlannedSlot, PodRef, Refusal, Snapshot, choose_slot, filter_nodes, pod_holder,
)
from kvsched.controller.start_gate import StartGate, next_expiry, starting, waiting_reason

T0 = 1_800_000_000.0  # 2027-01-15T08:00:00Z


@dataclass(frozen=True)
class Occ:
    pod: str
    uid: str
    starting_since: float | None


@pytest.mark.parametrize("occupants, now, timeout, exclude, expected", [
    pytest.param([], T0, 300, "", None, id="empty GPU"),
    pytest.param([Occ("ml/a", "a", None)], T0, 300, "", None, id="Ready (not starting)"),
    pytest.param([Occ("ml/a", "a", T0 - 10)], T0, 300, "", "a", id="bound 10 s ago"),
    pytest.param([Occ("ml/a", "a", T0 - 299)], T0, 300, "", "a", id="just inside the timeout"),
    pytest.param([Occ("ml/a", "a", T0 - 300)], T0, 300, "", None, id="timed out: releases the gate"),
    pytest.param([Occ("ml/a", "a", T0 + 5)], T0, 300, "", "a", id="bound in the future (skew): starting"),
    pytest.param([Occ("ml/a", "a", T0 - 10)], T0, 300, "a", None, id="the asking pod itself"),
    pytest.param([Occ("ml/a", "a", T0 - 10)], T0, 0, "", None, id="gate off"),
    pytest.param([Occ("ml/b", "b", T0 - 5), Occ("ml/a", "a", T0 - 10)], T0, 300, "", "a",
                 id="two starting: the first bound"),
])
def test_who_is_starting(occupants: list[Occ], now: float, timeout: float, exclude: str,
                         expected: str | None) -> None:
    found = starting(occupants, StartGate(now, timeout), exclude)
    assert (found.uid if found is not None else None) == expected


@pytest.mark.parametrize("occupants, expected", [
    pytest.param([], None, id="nobody starting"),
    pytest.param([Occ("ml/a", "a", T0 - 10), Occ("ml/b", "b", T0 - 100), Occ("ml/c", "c", None)], T0 + 200,
                 id="the earliest expiry among those starting"),
    pytest.param([Occ("ml/a", "a", T0 - 400)], None, id="already timed out"),
])
def test_next_expiry(occupants: list[Occ], expected: float | None) -> None:
    assert next_expiry(occupants, StartGate(T0, 300)) == expected


def test_waiting_reason_names_the_pod_since_and_until() -> None:
    reason = waiting_reason(Occ("ml/llama-0", "a", T0 - 42), StartGate(T0, 300))
    assert "pod ml/llama-0 is starting there" in reason
    assert "bound at 2027-01-15T07:59:18Z, 42s ago" in reason
    assert "at the latest until 2027-01-15T08:04:18Z" in reason


def _pod(name: str, *, ready: bool, bound_at: str, deleting: bool = False, model: str | None = "llama") -> PodObj:
    labels = {"kvsched.io/model": model} if model else {}
    return PodObj("ml", name, uid=name, node="n1", labels=labels, annotations={"kvsched.io/gpu": "0"},
                  ready=ready, deleting=deleting, bound_at=bound_at)


@pytest.mark.parametrize("pod, since", [
    pytest.param(_pod("a", ready=False, bound_at="2027-01-15T07:59:00Z"), T0 - 60, id="bound, not Ready"),
    pytest.param(_pod("a", ready=True, bound_at="2027-01-15T07:59:00Z"), None, id="Ready"),
    pytest.param(_pod("a", ready=False, bound_at="2027-01-15T07:59:00Z", deleting=True), None,
                 id="terminating"),
    pytest.param(_pod("a", ready=False, bound_at=""), None, id="bind time unknown"),
    pytest.param(_pod("a", ready=False, bound_at="2027-01-15T07:59:00Z", model=None), None,
                 id="not a kvsched model's pod"),
])
def test_a_holder_is_starting_since_its_bind_until_ready(pod: PodObj, since: float | None) -> None:
    holder = pod_holder(pod)
    assert holder is not None and holder.starting_since == since


def _view(holders: list[Holder], now: float, timeout: float = 300) -> Snapshot:
    plans = {f"ml/{m}": ModelPlan.from_slots(f"ml/{m}", 10.0, [PlannedSlot("n1", 0, 0.3)])
             for m in ("llama", "qwen", "phi")}
    held: dict[tuple[str, int], list[Holder]] = {}
    for h in holders:
        held.setdefault((h.node, h.gpu), []).append(h)
    return Snapshot(plans, {"n1": NodeGpus("n1", 1, 80.0)}, held, StartGate(now, timeout))


def _holder(name: str, model: str, since: float | None) -> Holder:
    return Holder(pod=f"ml/{name}", uid=name, model_key=f"ml/{model}", node="n1", gpu=0, memory_fraction=0.3,
                  starting_since=since)


@pytest.mark.parametrize("holders, now, passes", [
    pytest.param([], T0, True, id="empty GPU"),
    pytest.param([_holder("llama-0", "llama", None)], T0, True, id="the pod there is Ready"),
    pytest.param([_holder("llama-0", "llama", T0 - 30)], T0, False, id="the pod there is starting"),
    pytest.param([_holder("llama-0", "llama", T0 - 30)], T0 + 270, True, id="its start timed out"),
    pytest.param([_holder("llama-0", "llama", None), _holder("phi-0", "phi", T0 - 1)], T0, False,
                 id="one Ready, one starting"),
])
def test_filter_and_bind_wait_for_the_pod_starting_on_the_gpu(holders: list[Holder], now: float,
                                                              passes: bool) -> None:
    view = _view(holders, now)
    ref = PodRef("ml", "qwen-0", "qwen-0", "ml/qwen")
    decision = filter_nodes(ref, ["n1"], view)
    choice = choose_slot(ref, "n1", view)
    assert ("n1" in decision.passed) == passes == isinstance(choice, PlannedSlot)
    if not passes:
        waited = next(h for h in holders if h.starting_since is not None)
        assert f"pod {waited.pod} is starting there" in decision.failed["n1"]
        assert isinstance(choice, Refusal) and f"pod {waited.pod} is starting there" in choice.reason


def test_a_pod_retrying_its_own_bind_is_not_blocked_by_itself() -> None:
    view = _view([_holder("qwen-0", "qwen", T0 - 5)], T0)
    assert filter_nodes(PodRef("ml", "qwen-0", "qwen-0", "ml/qwen"), ["n1"], view).passed == ["n1"]
