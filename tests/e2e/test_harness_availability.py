"""The availability watcher's bookkeeping on its own, without a control plane (harness/availability.py
`Availability`): serving counts per model, dips below wanted, and which dips an eviction or a lost node explains.

A script is a list of (time s, action, args): ("pod", name, model, ready, node), ("gone", name),
("lost", node), ("surge", model, active).
"""
from __future__ import annotations

from typing import Any

import pytest

from .harness.availability import SLACK_S, Availability, Dip


def play(wanted: dict[str, int], script: list[tuple[Any, ...]]) -> Availability:
    a = Availability(wanted)
    for t, action, *args in script:
        {"pod": a.pod, "gone": a.gone, "lost": a.node_lost, "surge": a.surge}[action](t, *args)
    return a


TWO_UP = [(0.0, "pod", "a1", "a", True, "n1"), (0.0, "pod", "a2", "a", True, "n2")]


@pytest.mark.parametrize("script, evictions, dips, problems", [
    pytest.param(TWO_UP, [], [], [], id="steady: no dip"),
    pytest.param([*TWO_UP, (10.0, "pod", "a1", "a", False, "n1"), (11.0, "gone", "a1"),
                  (12.0, "pod", "a3", "a", False, "n3"), (20.0, "pod", "a3", "a", True, "n3")],
                 [(9.8, "a1")], [Dip("a", 10.0, 20.0, 1)], [], id="an eviction explains one replica down"),
    pytest.param([*TWO_UP, (10.0, "pod", "a1", "a", False, "n1"), (20.0, "pod", "a1", "a", True, "n1")],
                 [], [Dip("a", 10.0, 20.0, 1)], ["no eviction"], id="a dip without an eviction"),
    pytest.param([*TWO_UP, (10.0, "pod", "a1", "a", False, "n1"), (10.5, "pod", "a2", "a", False, "n2"),
                  (20.0, "pod", "a1", "a", True, "n1"), (20.0, "pod", "a2", "a", True, "n2")],
                 [(10.0, "a1")], [Dip("a", 10.0, 20.0, 0)], ["deeper"], id="one eviction, two replicas down"),
    pytest.param([*TWO_UP, (10.0, "pod", "a1", "a", False, "n1"), (10.5, "pod", "a2", "a", False, "n2"),
                  (20.0, "pod", "a1", "a", True, "n1"), (20.0, "pod", "a2", "a", True, "n2")],
                 [(10.0, "a1"), (10.4, "a2")], [Dip("a", 10.0, 20.0, 0)], [], id="two evictions, two down"),
    pytest.param([*TWO_UP, (10.0, "pod", "a1", "a", False, "n1")],
                 [(10.0, "a1")], [Dip("a", 10.0, None, 1)], ["never back"], id="never back"),
    pytest.param([*TWO_UP, (10.0, "pod", "a1", "a", False, "n1"), (20.0, "pod", "a1", "a", True, "n1")],
                 [(10.0 - SLACK_S - 0.1, "a1")], [Dip("a", 10.0, 20.0, 1)], ["no eviction"],
                 id="an eviction long before the dip explains nothing"),
    pytest.param([*TWO_UP, (10.0, "pod", "a1", "a", False, "n1"), (20.0, "pod", "a1", "a", True, "n1")],
                 [(10.0, "b1")], [Dip("a", 10.0, 20.0, 1)], ["no eviction"],
                 id="another model's eviction explains nothing"),
    pytest.param([*TWO_UP, (0.0, "pod", "b1", "b", True, "n1"), (10.0, "lost", "n1"),
                  (30.0, "pod", "a3", "a", True, "n3")],
                 [], [Dip("a", 10.0, 30.0, 1)], [], id="a lost node explains its replicas (still looking Ready)"),
    pytest.param([*TWO_UP, (10.0, "lost", "n1"), (15.0, "pod", "a3", "a", True, "n3"),
                  (20.0, "pod", "a3", "a", False, "n3"), (25.0, "pod", "a4", "a", True, "n4"), (26.0, "gone", "a1")],
                 [], [Dip("a", 10.0, 15.0, 1), Dip("a", 20.0, 25.0, 1)], [],
                 id="a lost replica explains dips until its pod is deleted (not replaced before)"),
    pytest.param([*TWO_UP, (10.0, "lost", "n1"), (15.0, "pod", "a3", "a", True, "n3"), (16.0, "gone", "a1"),
                  (20.0, "pod", "a3", "a", False, "n3"), (25.0, "pod", "a3", "a", True, "n3")],
                 [], [Dip("a", 10.0, 15.0, 1), Dip("a", 20.0, 25.0, 1)], ["no eviction"],
                 id="a lost replica deleted explains nothing later"),
])
def test_dips_and_what_explains_them(script: list[tuple[Any, ...]], evictions: list[tuple[float, str]],
                                     dips: list[Dip], problems: list[str]) -> None:
    a = play({"a": 2, "b": 1}, script)
    assert a.dips("a", since=1.0) == dips
    found = a.unexplained(1.0, evictions, models=["a"])
    assert len(found) == len(problems), found
    for text, expected in zip(found, problems):
        assert expected in text


def test_dips_before_since_are_ignored_and_back_at_is_the_last_recovery() -> None:
    a = play({"a": 1, "b": 1}, [(0.0, "pod", "a1", "a", False, "n1"), (5.0, "pod", "a1", "a", True, "n1"),
                                (6.0, "pod", "b1", "b", True, "n2"), (10.0, "gone", "b1"),
                                (11.0, "pod", "b2", "b", False, "n2"), (17.0, "pod", "b2", "b", True, "n2")])
    assert a.dips("a", since=6.0) == []
    assert a.dips("b", since=6.0) == [Dip("b", 10.0, 17.0, 0)]
    assert a.back_at(6.0) == 17.0
    assert a.lowest("b", 6.0) == 0 and a.lowest("b", 11.5, 16.0) == 0 and a.lowest("b", 17.0) == 1
    assert play({"a": 1}, [(0.0, "pod", "a1", "a", False, "n1")]).back_at(0.0) is None


def test_surges_keep_their_intervals_and_the_fewest_serving_meanwhile() -> None:
    a = play({"a": 1}, [(0.0, "pod", "a1", "a", True, "n1"), (2.0, "surge", "a", True),
                        (2.5, "surge", "a", True),  # the watch shows the Deployment again: still one surge
                        (3.0, "pod", "a2", "a", False, "n2"), (9.0, "pod", "a2", "a", True, "n2"),
                        (9.5, "surge", "a", False), (9.6, "pod", "a1", "a", False, "n1"), (10.0, "gone", "a1")])
    assert a.surge_lows("a") == [(2.0, 9.5, 1)]
    assert a.series["a"] == [(0.0, 1), (9.0, 2), (9.6, 1)]
    assert a.dips("a", since=0.0) == []


def test_pods_of_no_model_are_ignored() -> None:
    a = play({"a": 1}, [(0.0, "pod", "holder", None, True, "n1")])
    assert a.series == {} and a.serving("a") == 0


def test_migrating_conditions_are_kept_as_they_change() -> None:
    a = Availability({"a": 1})
    for t, status, reason in [(1.0, "False", "Stable"), (2.0, "True", "Surging"), (2.5, "True", "Surging"),
                              (6.0, "False", "Stable")]:
        a.condition(t, "a", status, reason)
    assert a.migrating["a"] == [(1.0, "False", "Stable"), (2.0, "True", "Surging"), (6.0, "False", "Stable")]
    assert a.conditions_during("a", 3.0, 5.0) == [("True", "Surging")]
    assert a.conditions_during("a", 1.5, 7.0) == [("False", "Stable"), ("True", "Surging"), ("False", "Stable")]
