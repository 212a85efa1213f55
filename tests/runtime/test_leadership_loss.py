"""Losing the lease stops the process (as controller-runtime exits): nothing a former leader holds in memory
outlives its lease, and the kubelet restarts it as a follower. A clean stop is no loss."""
from __future__ import annotations

import threading
from types import SimpleNamespace
from typing import Any

import pytest

from kvsched.metrics import Metrics
from kvsched.runtime.controller import EXIT_LOST_LEADERSHIP, Controller
from kvsched.settings import ControllerSettings, ExtenderSettings


def controller() -> tuple[Controller, list[bool], list[str]]:
    told: list[bool] = []
    reconciler: Any = SimpleNamespace(set_leader=told.append)
    lost: list[str] = []
    c = Controller(ControllerSettings(), Metrics(), reconciler, [], None, None,
                   on_lost_leadership=lambda: lost.append("stop the extender"))
    return c, told, lost


@pytest.mark.parametrize("sequence, stopped, lost", [
    pytest.param([True, False], False, True, id="led, then lost the lease: stop"),
    pytest.param([False], False, False, id="never led: a follower keeps following"),
    pytest.param([True, False], True, False, id="led, released at a clean stop: no loss"),
])
def test_losing_leadership_stops_the_process(sequence: list[bool], stopped: bool, lost: bool) -> None:
    c, told, stops = controller()
    stop = threading.Event()
    changed = c._leadership_changed(stop)
    for i, leading in enumerate(sequence):
        if stopped and i == len(sequence) - 1:
            stop.set()
        changed(leading)
    assert told == sequence
    assert c.lost_leadership is lost and stop.is_set() is (lost or stopped)
    assert stops == (["stop the extender"] if lost else [])


def test_the_exit_code_after_a_loss_is_not_zero() -> None:
    assert EXIT_LOST_LEADERSHIP != 0


@pytest.mark.parametrize("lost, code", [
    pytest.param(True, EXIT_LOST_LEADERSHIP, id="lost lease: 1, the kubelet restarts it"),
    pytest.param(False, 0, id="a SIGTERM from outside: 0"),
])
def test_serve_exits_with_its_code_when_uvicorn_re_raises_the_sigterm(monkeypatch: pytest.MonkeyPatch, lost: bool,
                                                                      code: int) -> None:
    """uvicorn (0.29+) re-raises the signal that stopped it after its shutdown: `kvsched serve` must still exit
    with its own code, not be killed by the signal (-15)."""
    import signal

    import kvsched.runtime.controller as controller_module
    import kvsched.runtime.extender as extender_module

    fake: Any = SimpleNamespace(lost_leadership=False, extender_alive=None, on_lost_leadership=None,
                                partner_informers=[], run=lambda stop: stop.wait(5.0))
    monkeypatch.setattr(controller_module, "build_controller", lambda settings, metrics, **shared: fake)

    def extender_stopped_by_sigterm(settings: Any, metrics: Any, **shared: Any) -> int:
        fake.lost_leadership = lost
        signal.raise_signal(signal.SIGTERM)  # what uvicorn does once it has shut down
        return 0

    monkeypatch.setattr(extender_module, "run", extender_stopped_by_sigterm)
    previous = signal.getsignal(signal.SIGTERM)
    try:
        with pytest.raises(SystemExit) as exited:
            controller_module.serve(ControllerSettings(), ExtenderSettings(host="127.0.0.1", port=1))
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert exited.value.code == code
