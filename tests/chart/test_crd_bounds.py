"""The ModelServing CRD's bounds (issue 16: the apiserver refuses what the controller can never plan), offline.

The table is tests/crd_cases.py; tests/e2e/test_crd_bounds.py sends it to a real apiserver, which alone evaluates
the CEL rules. Here: the schema's structural part (types, ranges, patterns) refuses each bad spec that needs no
CEL at the field named and takes every good one; each CEL-only case is one the structural part lets through and
has a rule whose message names the field; the bounds are the code's numbers; and the controller, which checks
them again (an older CRD may be installed), makes every bad spec Invalid naming the field and plans every good one.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from hack.chart import CHART_DIR, REPO_ROOT
from kvsched.api import names
from kvsched.api.objects import DeploymentObj, ModelServingObj, World
from kvsched.controller.models import LABEL_VALUE_MAX, MAX_SLO_S, collect_models
from kvsched.packer.domain import MAX_LOAD, MAX_REPLICAS
from kvsched.units import SMALLEST_MEMORY_BYTES
from tests.crd_cases import BAD, GOOD, SpecCase

CRD_FILES = sorted([*(CHART_DIR / "crds").glob("*.yaml"), *(REPO_ROOT / "deploy" / "crds").glob("*.yaml")])


def schema(path: Path = CRD_FILES[0]) -> dict[str, Any]:
    [doc] = [d for d in yaml.safe_load_all(path.read_text()) if isinstance(d, dict)]
    return doc["spec"]["versions"][0]["schema"]["openAPIV3Schema"]  # type: ignore[no-any-return]


def _type_ok(node: dict[str, Any], value: Any) -> bool:
    if node.get("x-kubernetes-int-or-string"):
        return isinstance(value, str) or (isinstance(value, int) and not isinstance(value, bool))
    kind = node.get("type")
    checks = {"object": lambda v: isinstance(v, dict), "string": lambda v: isinstance(v, str),
              "boolean": lambda v: isinstance(v, bool), "array": lambda v: isinstance(v, list),
              "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
              "number": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool)}
    return kind is None or checks[kind](value)


def structural_errors(node: dict[str, Any], value: Any, path: str) -> list[str]:
    """The fields (paths) whose value the schema's structural keywords refuse; x-kubernetes-validations (CEL)
    are not evaluated. Covers the keywords this CRD uses."""
    if not _type_ok(node, value):
        return [path]
    errors = []
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        low = node.get("minimum")
        if low is not None and (value < low or (node.get("exclusiveMinimum") and value == low)):
            errors.append(path)
        if "maximum" in node and value > node["maximum"]:
            errors.append(path)
    if isinstance(value, str):
        if "pattern" in node and re.search(node["pattern"], value) is None:
            errors.append(path)
        if len(value) < node.get("minLength", 0) or len(value) > node.get("maxLength", len(value)):
            errors.append(path)
    if "enum" in node and value not in node["enum"]:
        errors.append(path)
    if isinstance(value, dict):
        errors += [f"{path}.{key}" for key in node.get("required", []) if key not in value]
        for key, child in node.get("properties", {}).items():
            if key in value:
                errors += structural_errors(child, value[key], f"{path}.{key}")
    return errors


def cel_messages(node: dict[str, Any]) -> list[str]:
    """Every CEL rule's message in the schema."""
    found = [rule["message"] for rule in node.get("x-kubernetes-validations", [])]
    for child in node.get("properties", {}).values():
        found += cel_messages(child)
    return found


def body(case: SpecCase) -> dict[str, Any]:
    return {"apiVersion": names.API_VERSION, "kind": names.KIND, "metadata": {"name": case.name},
            "spec": case.spec()}


def _errors(case: SpecCase) -> list[str]:
    return structural_errors(schema(), body(case), "")


@pytest.mark.parametrize("case", [c for c in BAD if not c.cel], ids=lambda c: c.id)
def test_the_schema_refuses_each_bad_spec_at_its_field(case: SpecCase) -> None:
    errors = _errors(case)
    assert errors and all(e.lstrip(".").startswith(case.field) for e in errors), errors


@pytest.mark.parametrize("case", [c for c in BAD if c.cel], ids=lambda c: c.id)
def test_each_case_only_cel_catches_has_a_rule_naming_its_field(case: SpecCase) -> None:
    assert _errors(case) == []  # else it is no CEL case: move it in tests/crd_cases.py
    assert [m for m in cel_messages(schema()) if case.field in m]


@pytest.mark.parametrize("case", GOOD, ids=lambda c: c.id)
def test_the_schema_takes_each_good_spec(case: SpecCase) -> None:
    assert _errors(case) == []


@pytest.mark.parametrize("path", CRD_FILES, ids=[str(p.relative_to(REPO_ROOT)) for p in CRD_FILES])
def test_the_bounds_are_the_codes(path: Path) -> None:
    root = schema(path)
    spec = root["properties"]["spec"]
    fields = spec["properties"]
    assert (fields["replicas"]["minimum"], fields["replicas"]["maximum"]) == (0, MAX_REPLICAS)
    assert fields["sloSeconds"]["maximum"] == MAX_SLO_S and fields["sloSeconds"]["exclusiveMinimum"]
    assert fields["requestRate"]["minimum"] == 0
    [load] = [r["rule"] for r in spec["x-kubernetes-validations"] if "self.requestRate /" in r["rule"]]
    assert float(re.search(r"<= ([0-9.e+]+)\s*$", load)[1]) == MAX_LOAD  # type: ignore[index]
    [name] = [r["rule"] for r in root["x-kubernetes-validations"] if "metadata.name" in r["rule"]]
    assert name.endswith(f"<= {LABEL_VALUE_MAX}")
    for field in (names.MODEL_SIZE_FIELD, names.ENGINE_OVERHEAD_FIELD):
        [rule] = [r["rule"] for r in fields[field]["x-kubernetes-validations"]]
        assert f">= {SMALLEST_MEMORY_BYTES}" in rule and "quantity('1Mi')" in rule and SMALLEST_MEMORY_BYTES == 2**20


# -- the controller checks the same (defence in depth: the CRD in a cluster may be older) ----------------------
def entry_of(case: SpecCase) -> Any:
    deployment = DeploymentObj(namespace="ns", name="llm", uid="dep", annotations={}, replicas=1,
                               template={}, strategy={})
    ms = ModelServingObj(namespace="ns", name=case.name, uid="ms", generation=1, spec=case.spec(), status={})
    [entry] = collect_models(World(deployments=(deployment,), model_servings=(ms,))).entries
    return entry


@pytest.mark.parametrize("case", BAD, ids=lambda c: c.id)
def test_the_controller_makes_each_bad_spec_invalid_naming_its_field(case: SpecCase) -> None:
    entry = entry_of(case)
    assert entry.model is None and entry.invalid is not None
    assert case.field in entry.invalid.message


@pytest.mark.parametrize("case", GOOD, ids=lambda c: c.id)
def test_the_controller_takes_each_good_spec(case: SpecCase) -> None:
    entry = entry_of(case)
    if "requestRate" not in case.spec():
        # Only the controller's own ModelServing of an annotated Deployment leaves a value out (its annotation is
        # bad, and the condition says so); written by anyone else, there is nothing to plan.
        assert entry.model is None and entry.invalid is not None and "requestRate" in entry.invalid.message
        return
    assert entry.invalid is None
    assert (entry.model is not None) == (case.spec().get("replicas", 1) > 0)
