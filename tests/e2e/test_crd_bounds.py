"""The ModelServing CRD's bounds against the real apiserver (issue 16): each spec of tests/crd_cases.py that can
never be planned is refused with 422 and a message naming the field (OpenAPI bounds and the CEL rules, which only
the apiserver evaluates); each good one is created. tests/chart/test_crd_bounds.py checks the same table offline.
"""
from __future__ import annotations

import json

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from kvsched.api.names import API_VERSION, GROUP, KIND, PLURAL, VERSION
from tests.crd_cases import BAD, GOOD, SpecCase

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def custom(kube: client.ApiClient, project_crds: list[str]) -> client.CustomObjectsApi:
    assert f"{PLURAL}.{GROUP}" in project_crds
    return client.CustomObjectsApi(kube)


def create(custom: client.CustomObjectsApi, namespace: str, case: SpecCase) -> dict[str, object]:
    body = {"apiVersion": API_VERSION, "kind": KIND, "metadata": {"name": case.name}, "spec": case.spec()}
    return custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, body)  # type: ignore


@pytest.mark.parametrize("case", BAD, ids=lambda c: c.id)
def test_the_apiserver_refuses_a_spec_that_can_never_be_planned_naming_the_field(
        custom: client.CustomObjectsApi, namespace: str, case: SpecCase) -> None:
    with pytest.raises(ApiException) as refused:
        create(custom, namespace, case)
    assert refused.value.status == 422, refused.value.body
    message = json.loads(refused.value.body)["message"]
    assert case.field in message, message


@pytest.mark.parametrize("case", GOOD, ids=lambda c: c.id)
def test_the_apiserver_takes_a_good_spec(custom: client.CustomObjectsApi, namespace: str, case: SpecCase) -> None:
    created = create(custom, namespace, case)
    assert created["spec"] == {**case.spec(), "workloadRef": {"kind": "Deployment", "name": "llm"}}
