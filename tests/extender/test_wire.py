"""The wire format: kube-scheduler's field names, and the HostPriorityList JSON built without a dict per host."""
from __future__ import annotations

import json

import pytest

from kvsched.extender.wire import ExtenderArgs, ExtenderFilterResult, HostPriority, host_priority_list_json


@pytest.mark.parametrize("neutral, scores", [
    pytest.param([], {}, id="empty"),
    pytest.param(["n1"], {}, id="one neutral"),
    pytest.param([], {"n1": 10, "n2": 5}, id="only scored"),
    pytest.param(["a", "b", "c"], {"d": 10}, id="both"),
    pytest.param(['we"ird', 'x","Score":9},{"Host":"y', "back\\slash\\", '","', "ünïcode", "", "\n\t"], {"z": 10},
                 id="names with quotes, separators, backslashes, unicode, control characters"),
])
def test_host_priority_list_json_is_exact(neutral: list[str], scores: dict[str, int]) -> None:
    decoded = json.loads(host_priority_list_json(neutral, 0, scores))
    expected = [{"Host": n, "Score": 0} for n in neutral] + [{"Host": h, "Score": s} for h, s in scores.items()]
    assert decoded == expected
    for entry in decoded:
        HostPriority.model_validate(entry)


def test_wire_names_are_kube_schedulers() -> None:
    args = ExtenderArgs.model_validate_json(json.dumps({"Pod": {"metadata": {"name": "p"}}, "NodeNames": ["a"]}))
    assert args.candidate_names() == ["a"]
    dumped = json.loads(ExtenderFilterResult(NodeNames=["a"], FailedNodes={"b": "why"}).model_dump_json())
    assert set(dumped) == {"Nodes", "NodeNames", "FailedNodes", "FailedAndUnresolvableNodes", "Error"}
