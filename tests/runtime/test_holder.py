"""`kvsched gpu-holder` (kvsched.runtime.holder) with a fake NVML and a fake API: the one GPU's UUID is written
onto the holder's own pod once, restarts write nothing new, and 0 or 2 GPUs, a missing driver or an API that keeps
failing end with exit 1 and a sentence saying why."""

from __future__ import annotations

import logging
import threading
from typing import Any

import pytest

from kvsched.api.names import GPU_UUID_ANNOTATION, POD_NAME_ENV, POD_NAMESPACE_ENV
from kvsched.cli import main
from kvsched.runtime.holder import EXIT_FAILED, EXIT_OK, HolderError, hold, read_gpu_uuid
from kvsched.settings import HolderSettings, env_name


class NVMLError(Exception):
    """What pynvml raises (pynvml.NVMLError)."""


class FakeNvml:
    """The few pynvml functions the holder calls, over a list of UUIDs (bytes, as old pynvml returns them, or
    str). `init_error`: nvmlInit raises it (no driver). Counts inits and shutdowns."""

    def __init__(self, uuids: list[str | bytes], init_error: Exception | None = None) -> None:
        self.uuids = uuids
        self.init_error = init_error
        self.inits = 0
        self.shutdowns = 0

    def nvmlInit(self) -> None:
        if self.init_error is not None:
            raise self.init_error
        self.inits += 1

    def nvmlShutdown(self) -> None:
        self.shutdowns += 1

    def nvmlDeviceGetCount(self) -> int:
        return len(self.uuids)

    def nvmlDeviceGetHandleByIndex(self, index: int) -> int:
        if not 0 <= index < len(self.uuids):
            raise NVMLError("Invalid Argument")
        return index

    def nvmlDeviceGetUUID(self, handle: int) -> str | bytes:
        return self.uuids[handle]


class FakeApi:
    """One pod's annotations; `failures` calls fail before the API answers again."""

    def __init__(self, annotations: dict[str, str] | None = None, failures: int = 0) -> None:
        self.annotations = dict(annotations or {})
        self.failures = failures
        self.patches: list[dict[str, str]] = []

    def _maybe_fail(self) -> None:
        if self.failures > 0:
            self.failures -= 1
            raise ConnectionError("apiserver unreachable")

    def pod_annotations(self, namespace: str, name: str) -> dict[str, str]:
        assert (namespace, name) == ("kvsched-system", "holder-a-0")
        self._maybe_fail()
        return dict(self.annotations)

    def annotate(self, namespace: str, name: str, annotations: dict[str, str]) -> Any:
        assert (namespace, name) == ("kvsched-system", "holder-a-0")
        self._maybe_fail()
        self.patches.append(dict(annotations))
        self.annotations.update(annotations)
        return {}


SETTINGS = HolderSettings(pod_name="holder-a-0", pod_namespace="kvsched-system", write_timeout_s=5.0)
UUID = "GPU-8f6e2c4a-1b2c-4d5e-9f00-0123456789ab"


def stopped() -> threading.Event:
    stop = threading.Event()
    stop.set()  # hold() returns as soon as it has reported
    return stop


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


@pytest.mark.parametrize("uuids, expected", [
    pytest.param([UUID], UUID, id="one GPU, str"),
    pytest.param([UUID.encode()], UUID, id="one GPU, bytes from an older pynvml"),
])
def test_read_gpu_uuid_one_gpu(uuids: list[str | bytes], expected: str) -> None:
    nvml = FakeNvml(uuids)
    assert read_gpu_uuid(nvml) == expected
    assert (nvml.inits, nvml.shutdowns) == (1, 1)


@pytest.mark.parametrize("nvml, words", [
    pytest.param(FakeNvml([]), ["exactly 1 GPU", "sees 0", "none"], id="no GPU given"),
    pytest.param(FakeNvml([UUID, "GPU-second"]), ["exactly 1 GPU", "sees 2", UUID, "GPU-second"], id="two GPUs"),
    pytest.param(FakeNvml([], init_error=NVMLError("Driver Not Loaded")), ["NVML did not initialise",
                                                                          "Driver Not Loaded"], id="no driver"),
])
def test_read_gpu_uuid_refuses(nvml: FakeNvml, words: list[str]) -> None:
    with pytest.raises(HolderError) as e:
        read_gpu_uuid(nvml)
    for word in words:
        assert word in str(e.value)


def test_hold_writes_the_uuid_once_and_a_restart_writes_nothing() -> None:
    api = FakeApi({"other": "kept"})
    assert hold(SETTINGS, FakeNvml([UUID]), api, stopped()) == EXIT_OK
    assert api.patches == [{GPU_UUID_ANNOTATION: UUID}]
    assert api.annotations == {"other": "kept", GPU_UUID_ANNOTATION: UUID}
    # The container restarts: the device plugin gives the pod the same GPU, nothing new is written.
    assert hold(SETTINGS, FakeNvml([UUID]), api, stopped()) == EXIT_OK
    assert api.patches == [{GPU_UUID_ANNOTATION: UUID}]


def test_hold_corrects_a_different_uuid(caplog: pytest.LogCaptureFixture) -> None:
    api = FakeApi({GPU_UUID_ANNOTATION: "GPU-stale"})
    with caplog.at_level(logging.WARNING):
        assert hold(SETTINGS, FakeNvml([UUID]), api, stopped()) == EXIT_OK
    assert api.annotations[GPU_UUID_ANNOTATION] == UUID
    assert "GPU-stale" in caplog.text


def test_hold_idles_until_stopped() -> None:
    api = FakeApi()
    stop = threading.Event()
    result: list[int] = []
    thread = threading.Thread(target=lambda: result.append(hold(SETTINGS, FakeNvml([UUID]), api, stop)))
    thread.start()
    thread.join(0.3)
    assert thread.is_alive() and result == []  # reported, then holding
    assert api.annotations.get(GPU_UUID_ANNOTATION) == UUID
    stop.set()
    thread.join(5.0)
    assert result == [EXIT_OK]


def test_hold_retries_the_write_then_gives_up() -> None:
    clock = FakeClock()
    api = FakeApi(failures=3)
    assert hold(SETTINGS, FakeNvml([UUID]), api, stopped(), sleep=clock.sleep, clock=clock) == EXIT_OK
    assert api.annotations[GPU_UUID_ANNOTATION] == UUID and clock.now == 3.0
    clock = FakeClock()
    api = FakeApi(failures=1000)
    assert hold(SETTINGS, FakeNvml([UUID]), api, stopped(), sleep=clock.sleep, clock=clock) == EXIT_FAILED
    assert api.patches == [] and clock.now == SETTINGS.write_timeout_s


@pytest.mark.parametrize("settings, nvml", [
    pytest.param(HolderSettings(pod_namespace="kvsched-system"), FakeNvml([UUID]), id="no pod name"),
    pytest.param(SETTINGS, FakeNvml([]), id="no GPU"),
    pytest.param(SETTINGS, FakeNvml([UUID, UUID + "2"]), id="two GPUs"),
])
def test_hold_fails_without_writing(settings: HolderSettings, nvml: FakeNvml) -> None:
    api = FakeApi()
    assert hold(settings, nvml, api, stopped()) == EXIT_FAILED
    assert api.patches == []


def test_downward_api_env_names_are_the_settings_env() -> None:
    """The holder pod's env (kvsched.api.names) is what `settings_from` reads for these fields."""
    assert env_name("pod_name") == POD_NAME_ENV
    assert env_name("pod_namespace") == POD_NAMESPACE_ENV


def test_cli_gpu_holder_help(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        main(["gpu-holder", "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert "--pod-name" in out and POD_NAME_ENV in out and GPU_UUID_ANNOTATION in out


def test_cli_gpu_holder_bad_env(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KVSCHED_WRITE_TIMEOUT_S", "soon")
    assert main(["gpu-holder"]) == 2
    assert "KVSCHED_WRITE_TIMEOUT_S" in capsys.readouterr().err


@pytest.mark.parametrize("namespace, holders, watched", [
    pytest.param("", True, 5, id="all namespaces: the pod watch sees the holders"),
    pytest.param("ml", True, 6, id="one namespace: a watch of the holders' own"),
    pytest.param("kvsched-system", True, 5, id="the holders' namespace watched already"),
    pytest.param("ml", False, 5, id="holders off: no extra watch"),
])
def test_the_controller_watches_the_holder_namespace(namespace: str, holders: bool, watched: int) -> None:
    from kubernetes import client

    from kvsched.runtime.controller import build_controller
    from kvsched.settings import ControllerSettings

    api = client.ApiClient(client.Configuration())
    controller = build_controller(ControllerSettings(namespace=namespace, gpu_holders=holders,
                                                     leader_election=False), with_health=False, api=api)
    assert len(controller.informers) == watched
