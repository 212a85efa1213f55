"""Label selector strings: parse, match, and the node affinity expressions they become."""
from __future__ import annotations

import pytest

from kvsched.controller import SelectorError, parse_selector


@pytest.mark.parametrize("text, labels, expected", [
    pytest.param("", {}, True, id="empty selects everything"),
    pytest.param("pool=gpu", {"pool": "gpu"}, True, id="equality"),
    pytest.param("pool==gpu", {"pool": "cpu"}, False, id="double equals, other value"),
    pytest.param("pool!=gpu", {}, True, id="inequality holds without the label"),
    pytest.param("pool", {"pool": ""}, True, id="exists"),
    pytest.param("!pool", {"pool": "x"}, False, id="does not exist"),
    pytest.param("zone in (a, b),pool", {"zone": "b", "pool": "1"}, True, id="set and exists"),
    pytest.param("zone notin (a,b)", {"zone": "a"}, False, id="notin"),
])
def test_selector_matches(text: str, labels: dict[str, str], expected: bool) -> None:
    assert parse_selector(text).matches(labels) is expected


def test_selector_becomes_affinity_expressions() -> None:
    assert parse_selector("pool=gpu,!spot,zone in (a,b)").to_expressions() == [
        {"key": "pool", "operator": "In", "values": ["gpu"]},
        {"key": "spot", "operator": "DoesNotExist"},
        {"key": "zone", "operator": "In", "values": ["a", "b"]},
    ]


@pytest.mark.parametrize("text", [
    pytest.param("a=b,,c", id="empty requirement"),
    pytest.param("zone in ()", id="empty set"),
    pytest.param("a=b=c", id="two equals"),
])
def test_bad_selectors_are_refused(text: str) -> None:
    with pytest.raises(SelectorError):
        parse_selector(text)
