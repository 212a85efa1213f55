"""Generated requests against the extender's wire API (filter, prioritize, bind): arbitrary JSON, and well-formed
requests with one field anywhere replaced by arbitrary JSON. Every answer is a 2xx or a 4xx with a JSON body
(never a 5xx, never an exception), and the cache keeps answering good requests afterwards.

KVSCHED_FUZZ_EXAMPLES sets the examples of each of the two tests (default 150 each; the verb is drawn too):
`KVSCHED_FUZZ_EXAMPLES=5000` sends 10000 requests."""
from __future__ import annotations

import copy
import json
import os
from typing import Any

from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kvsched.extender.app import create_app
from kvsched.metrics import Metrics
from kvsched.settings import ExtenderSettings

from .world import FakeBinder, args, binding, model, node, pod, world

EXAMPLES = int(os.environ.get("KVSCHED_FUZZ_EXAMPLES", "150"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow],
                database=None)

JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4),
    max_leaves=20)

MANAGED = pod("p", "llama", uid="uid-p")
GOOD = {
    "filter": args(MANAGED, names=["n1", "n2"]),
    "prioritize": args(MANAGED, nodes=[node("n1"), node("n2")]),
    "bind": binding(MANAGED, "n1"),
}


def paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every path to a value inside nested dicts and lists (the root excluded)."""
    out: list[tuple[Any, ...]] = []
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, child in items:
        out.append((*prefix, key))
        out.extend(paths(child, (*prefix, key)))
    return out


@st.composite
def mutated(draw: st.DrawFn, verb: str) -> Any:
    """GOOD[verb] with the value at one path replaced by arbitrary JSON."""
    body = copy.deepcopy(GOOD[verb])
    path = draw(st.sampled_from(paths(body)))
    target = body
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = draw(JSON)
    return body


def client() -> TestClient:
    cache = world([node("n1"), node("n2")], [model("llama", "16Gi", [("n1", 0), ("n2", 1)])], [])
    return TestClient(create_app(ExtenderSettings(), cache, FakeBinder(), Metrics()), raise_server_exceptions=True)


CLIENT = client()


def post(verb: str, body: Any) -> None:
    response = CLIENT.post(f"/{verb}", content=json.dumps(body).encode(),
                           headers={"content-type": "application/json"})
    assert response.status_code < 500, (verb, body, response.text)
    response.json()  # always a JSON body


def still_answers() -> None:
    response = CLIENT.post("/filter", content=json.dumps(GOOD["filter"]).encode(),
                           headers={"content-type": "application/json"})
    assert response.status_code == 200 and "n1" in response.text


@FUZZ
@given(verb=st.sampled_from(sorted(GOOD)), body=JSON)
def test_arbitrary_json_never_gets_a_5xx(verb: str, body: Any) -> None:
    post(verb, body)


@FUZZ
@given(data=st.data(), verb=st.sampled_from(sorted(GOOD)))
def test_a_request_with_one_bad_field_never_gets_a_5xx(data: st.DataObject, verb: str) -> None:
    post(verb, data.draw(mutated(verb)))


def test_the_extender_still_answers_after_the_fuzzing() -> None:
    still_answers()
