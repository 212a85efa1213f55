"""The spec the controller writes for an annotated Deployment always passes the CRD's bounds (issue 16): the
apiserver would refuse any other on every round. tests/crd_cases.py lists the bounds; here the annotations that
would break one become InvalidAnnotation and the field keeps its last good value or is left out."""
from __future__ import annotations

from typing import Any

import pytest

from kvsched.api.names import RATE_ANNOTATION, SIZE_ANNOTATION, SLO_ANNOTATION
from kvsched.api.objects import World
from kvsched.controller import Decision
from kvsched.controller.models import MAX_SLO_S, collect_models, read_annotations, spec_from_annotations
from kvsched.packer.domain import MAX_LOAD, MAX_REPLICAS

from .fake import apply, deployment


def within_crd_bounds(spec: dict[str, Any]) -> bool:
    """The CRD's numeric bounds (helm/kvsched/crds), for the fields present."""
    rate, slo, replicas = spec.get("requestRate"), spec.get("sloSeconds"), spec.get("replicas")
    return ((rate is None or rate >= 0) and (slo is None or 0 < slo <= MAX_SLO_S)
            and (replicas is None or 0 <= replicas <= MAX_REPLICAS)
            and (rate is None or slo is None or rate / slo <= MAX_LOAD))


@pytest.mark.parametrize("rate, slo, current, problem, expected", [
    pytest.param("4", "86401", None, SLO_ANNOTATION, {"requestRate": 4}, id="SLO over a day: left out"),
    pytest.param("4", "86401", {"sloSeconds": 2}, SLO_ANNOTATION, {"requestRate": 4, "sloSeconds": 2},
                 id="SLO over a day: the last good one"),
    pytest.param("1e9", "0.000001", None, RATE_ANNOTATION, {"sloSeconds": 0.000001},
                 id="load 1e15: the rate left out"),
    pytest.param("1e308", "0.5", {"requestRate": 3, "sloSeconds": 1}, RATE_ANNOTATION,
                 {"requestRate": 3, "sloSeconds": 0.5}, id="infinite load: the last good rate"),
    pytest.param("x", "1e-7", {"requestRate": 1e6, "sloSeconds": 1}, RATE_ANNOTATION,
                 {"requestRate": 1e6, "sloSeconds": 1}, id="a new SLO with the last good rate: the last good SLO"),
    pytest.param("x", "1e-7", {"requestRate": 1e6}, RATE_ANNOTATION, {"requestRate": 1e6},
                 id="a new SLO with the last good rate, no good SLO before: left out"),
    pytest.param("1e12", "1", None, None, {"requestRate": 1_000_000_000_000, "sloSeconds": 1},
                 id="load exactly 1e12: taken"),
])
def test_annotations_outside_the_crds_bounds_are_invalid_and_left_out_of_the_spec(
        rate: str, slo: str, current: dict[str, Any] | None, problem: str | None,
        expected: dict[str, Any]) -> None:
    dep = deployment("m", rate=rate, slo=slo)
    values = read_annotations(dep)
    spec = spec_from_annotations(dep, {"modelSize": "16Gi", **current} if current is not None else None)
    assert {k: spec[k] for k in ("requestRate", "sloSeconds") if k in spec} == expected
    assert within_crd_bounds(spec)
    if problem is None:
        assert values.problems == ()
    else:
        assert any(p.startswith(f"annotation {problem}") for p in values.problems), values.problems


@pytest.mark.parametrize("replicas, written", [(0, 0), (3, 3), (MAX_REPLICAS, MAX_REPLICAS),
                                               (MAX_REPLICAS + 1, MAX_REPLICAS), (-2, 0)])
def test_the_owned_spec_replicas_stay_in_the_crds_range(replicas: int, written: int) -> None:
    dep = deployment("m", replicas=replicas)
    spec = spec_from_annotations(dep)
    assert spec["replicas"] == written and within_crd_bounds(spec)


def test_more_replicas_than_the_packer_takes_is_invalid_naming_spec_replicas() -> None:
    dep = deployment("m", replicas=MAX_REPLICAS + 1)
    [change] = collect_models(World(deployments=(dep,))).owned_changes
    world = apply(World(deployments=(dep,)), Decision(None, owned_changes=(change,)))  # the create taken
    [entry] = collect_models(world).entries
    assert entry.model is None and entry.invalid is not None
    assert "spec.replicas" in entry.invalid.message and str(MAX_REPLICAS) in entry.invalid.message


def test_a_size_annotation_is_unchanged_by_the_bounds() -> None:
    dep = deployment("m", size="1Mi")
    assert spec_from_annotations(dep)["modelSize"] == "1Mi" and not read_annotations(dep).problems
    assert SIZE_ANNOTATION in read_annotations(deployment("m", size="16")).problems[0]
