"""The runtime class on managed templates: set when configured, left alone when not, no rollout once set."""

from __future__ import annotations

from typing import Any

import pytest

from kvsched.api.objects import DeploymentObj
from kvsched.controller.config import DecisionConfig
from kvsched.controller.template import template_patch, touches_template

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
