"""The runtime class on managed templates: set when configured, left alone when not, no rollout once set."""

from __future__ import annotations

from typing import Any

import pytest

from kvsched.api.objects import DeploymentObj
from kvsched.controller.config import DecisionConfig
from kvsched.controller.template import affinity_terms, template_patch, touches_template

ROLLING = {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 0, "maxUnavailable": 1}}


def _deployment(spec_extra: dict[str, Any]) -> DeploymentObj:
    return DeploymentObj("ns", "llama", template={"spec": {"containers": [{"name": "vllm"}], **spec_extra}},
                         strategy=ROLLING)


def _settled(config: DecisionConfig, spec_extra: dict[str, Any]) -> DeploymentObj:
    """The Deployment after the controller's patch was applied (strategic merge of the parts it sends)."""
    patch = template_patch(_deployment(spec_extra), "llama", [], config)
    assert patch is not None
    spec = {**spec_extra, **patch["spec"]["template"]["spec"]}
    template = {"metadata": patch["spec"]["template"]["metadata"], "spec": spec}
    return DeploymentObj("ns", "llama", template=template, strategy=ROLLING)


@pytest.mark.parametrize("configured, written, wanted", [
    ("nvidia", {}, "nvidia"),                                   # default: the GPU Operator's class
    ("nvidia-legacy", {"runtimeClassName": "nvidia"}, "nvidia-legacy"),  # the setting wins over the template
    ("", {"runtimeClassName": "custom"}, None),                 # off: the owner's class is left as written
    ("", {}, None),
])
def test_runtime_class_on_the_template(configured: str, written: dict[str, Any], wanted: str | None) -> None:
    config = DecisionConfig(runtime_class_name=configured)
    patch = template_patch(_deployment(written), "llama", [], config)
    assert patch is not None and touches_template(patch)
    assert patch["spec"]["template"]["spec"].get("runtimeClassName") == wanted


@pytest.mark.parametrize("configured", ["nvidia", ""])
def test_no_patch_once_the_template_has_it(configured: str) -> None:
    config = DecisionConfig(runtime_class_name=configured)
    assert template_patch(_settled(config, {}), "llama", [], config) is None


def test_changing_the_setting_patches_again() -> None:
    before = _settled(DecisionConfig(runtime_class_name="nvidia"), {})
    patch = template_patch(before, "llama", [], DecisionConfig(runtime_class_name="nvidia-cdi"))
    assert patch is not None and patch["spec"]["template"]["spec"]["runtimeClassName"] == "nvidia-cdi"


def test_default_is_the_gpu_operators_class() -> None:
    assert DecisionConfig().runtime_class_name == "nvidia"


@pytest.mark.parametrize(("footprint_gib", "wanted"), [
    (15.0, str(15 * 1024)),  # reserve 0: M > footprint, in MiB
    (1e15, str(10**15 * 1024)),  # large, still an int64
    (1e17, str(2**63 - 1)),  # past int64: the largest Gt the apiserver takes, no node matches
    (1e308, str(2**63 - 1)),  # past a float once in MiB (the spec fuzz's modelSize 1e308: OverflowError before)
    (float("inf"), str(2**63 - 1)),
])
def test_affinity_size_is_an_int64_that_no_larger_footprint_lowers(footprint_gib: float, wanted: str) -> None:
    config = DecisionConfig(gpu_memory_reserve_gib=0.0)
    terms = affinity_terms(footprint_gib, [], config)
    gt = [e for e in terms[0]["matchExpressions"] if e["operator"] == "Gt"]
    assert [e["values"] for e in gt] == [[wanted]]
