"""The memory headroom settings: `*_gib` flags and variables take GiB or a quantity, `kvsched serve` gives the
controller and the extender one value, and the extender's cache reads nodes and models with it."""

from __future__ import annotations

import pytest

from kvsched.cli import build_parser
from kvsched.controller.headroom import Headroom
from kvsched.extender.cache import Cache, model_plan, node_gpus
from kvsched.settings import ControllerSettings, ExtenderSettings, settings_from


@pytest.mark.parametrize("text, gib", [("1.5", 1.5), ("512Mi", 0.5), ("2Gi", 2.0), ("0", 0.0), ("0Gi", 0.0)])
def test_a_gib_flag_takes_a_number_of_gib_or_a_quantity(text: str, gib: float) -> None:
    args = build_parser().parse_args(["controller", "--engine-overhead-gib", text])
    assert settings_from(ControllerSettings, args).engine_overhead_gib == gib


@pytest.mark.parametrize("text", ["-1", "-512Mi", "lots", "inf", "nan"])
def test_a_bad_gib_flag_is_refused(text: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args(["controller", f"--gpu-memory-reserve-gib={text}"])
    assert "--gpu-memory-reserve-gib" in capsys.readouterr().err


def test_serve_gives_the_controller_and_the_extender_one_headroom() -> None:
    args = build_parser().parse_args(["serve", "--gpu-memory-reserve-gib", "2Gi", "--engine-context-gib", "0.25"])
    controller, extender = settings_from(ControllerSettings, args), settings_from(ExtenderSettings, args)
    for settings in (controller, extender):
        assert (settings.gpu_memory_reserve_gib, settings.engine_overhead_gib, settings.engine_context_gib) == (
            2.0, 3.0, 0.25)


def test_the_cache_reads_nodes_and_models_with_its_headroom() -> None:
    headroom = Headroom(reserve_gib=1.5, overhead_gib=3.0, context_gib=0.5)
    node = {"metadata": {"name": "n", "labels": {"kvsched.io/gpu-memory": "80Gi"}},
            "status": {"capacity": {"nvidia.com/gpu": "2"}}}
    ms = {"metadata": {"name": "m", "namespace": "ns"}, "spec": {"modelSize": "16Gi", "engineOverhead": "1Gi"},
          "status": {}}
    assert node_gpus(node, headroom.reserve_gib).reserve_gib == 1.5
    assert (model_plan(ms, headroom).overhead_gib, model_plan(ms, headroom).context_gib) == (1.0, 0.5)
    default = {**ms, "spec": {"modelSize": "16Gi"}}
    assert model_plan(default, headroom).overhead_gib == 3.0
    cache = Cache(headroom=headroom)
    cache.on_node("ADDED", node)
    cache.on_model("ADDED", ms)
    with cache._lock:
        assert cache.node("n").reserve_gib == 1.5  # type: ignore[union-attr]
        assert cache.model("ns/m").footprint_gib == 16.0 + 1.0 + 0.5  # type: ignore[union-attr]
