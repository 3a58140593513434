"""A coordinator on a busy host: two minutes for the ServerApp to start, and a slow status probe is no failure."""

from __future__ import annotations

import inspect
from datetime import timedelta
from importlib import import_module
from types import SimpleNamespace

import flwr
import pytest
from flwr.server.superlink.linkstate.in_memory_linkstate import InMemoryLinkState
from flwr.supercore.corestate import in_memory_corestate
from flwr.supercore.object_store.in_memory_object_store import InMemoryObjectStore

from fedshield.flower_ext import FLOWER_VERSION, task_start_window
from fedshield.flower_ext.task_start_window import STATE_MODULES


@pytest.fixture()
def patched(monkeypatch):  # type: ignore[no-untyped-def]
    for name in STATE_MODULES:  # restored after the test
        module = import_module(name)
        monkeypatch.setattr(module, "HEARTBEAT_DEFAULT_INTERVAL", module.HEARTBEAT_DEFAULT_INTERVAL)
        monkeypatch.setattr(module, "HEARTBEAT_PATIENCE", module.HEARTBEAT_PATIENCE)
    task_start_window.install()


def test_flower_uses_the_interval_for_the_start_window_and_with_the_patience_for_the_running_one() -> None:
    assert flwr.__version__ == FLOWER_VERSION  # a newer Flower: re-read claim_task / activate_task / heartbeat
    for name in STATE_MODULES:
        source = inspect.getsource(import_module(name))
        assert source.count("HEARTBEAT_DEFAULT_INTERVAL") == 4  # the import and three uses
        assert source.count("HEARTBEAT_PATIENCE * HEARTBEAT_DEFAULT_INTERVAL") == 2
        assert "timedelta(seconds=HEARTBEAT_DEFAULT_INTERVAL)" in source


def _clock(monkeypatch, start, offset_s: float) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setattr(in_memory_corestate, "now", lambda: start + timedelta(seconds=offset_s))


@pytest.mark.parametrize("late_s, accepted", [(35, True), (115, True), (125, False)])
def test_a_serverapp_has_two_minutes_to_make_its_first_call(patched, monkeypatch, late_s, accepted) -> None:
    state = InMemoryLinkState(SimpleNamespace(), InMemoryObjectStore())  # type: ignore[arg-type]  # no federations
    start = in_memory_corestate.now()
    task_id = state.create_task("serverapp", run_id=1)
    _clock(monkeypatch, start, 0)
    token = state.claim_task(task_id)
    _clock(monkeypatch, start, late_s)  # Flower's own window was 30 s: a 35-s start failed
    assert (state.get_task_by_token(token) is not None) is accepted
    assert state.activate_task(task_id) is accepted


def test_a_running_serverapp_that_stops_its_heartbeats_is_still_dropped_after_60_s(patched, monkeypatch) -> None:
    state = InMemoryLinkState(SimpleNamespace(), InMemoryObjectStore())  # type: ignore[arg-type]  # no federations
    start = in_memory_corestate.now()
    task_id = state.create_task("serverapp", run_id=1)
    _clock(monkeypatch, start, 0)
    token = state.claim_task(task_id)
    _clock(monkeypatch, start, 10)
    assert state.activate_task(task_id)
    _clock(monkeypatch, start, 10 + 55)
    assert state.acknowledge_task_heartbeat(task_id)  # a heartbeat renews 60 s
    _clock(monkeypatch, start, 10 + 55 + 59)
    assert state.get_task_by_token(token) is not None
    # expiry itself is Flower's (it fails the task's run); the deadline it will apply is 60 s on
    assert state.task_token_store[task_id].active_until == start + timedelta(seconds=10 + 55 + 60)


def test_a_slow_status_probe_is_unknown_not_a_failed_run(tmp_path) -> None:
    # `fl-server start` asks every 10 s whether the run ended; on a busy host a probe once took over its
    # timeout and the exception ended a healthy federation. A probe that gets no answer says nothing.
    from fedshield.server.run_status_probe import RunStatusProbe
    from fedshield.server.run_submission import write_flwr_home

    home = write_flwr_home(tmp_path / ".flwr", "127.0.0.1:9", root_certificates=None, control_token=None)
    probe = RunStatusProbe(home, timeout=0.01)
    try:
        assert probe(1) is None
    finally:
        probe.close()
