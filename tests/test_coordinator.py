"""`fl-server start`'s orchestration as a library (server/coordinator.py): the plan checks everything and
writes nothing; following a run ends on results.json or, when that stays silent, on the SuperLink's word."""

from __future__ import annotations

import json
import socket
from pathlib import Path
from typing import Any

import pytest

from fedshield.common.cli_options import CentralDpOptions, SecAggOptions, TrainingOptions
from fedshield.common.errors import ConfigError, RunFolderError
from fedshield.common.net import free_port
from fedshield.server import coordinator
from fedshield.server.coordinator import CoordinatorPlan, follow_run, plan_run


def _plan(tmp_path: Path, training: TrainingOptions | None = None, **changes: Any) -> CoordinatorPlan:
    settings: dict[str, Any] = {"min_clients": 2, "fraction_train": 1.0, "dp": True, "run_dir": tmp_path / "run",
                                "federation_dir": None, "host": "127.0.0.1", "port": free_port(), "insecure": True,
                                "join_timeout": 0.0, "on_warning": print}
    settings.update(changes)
    return plan_run(training or TrainingOptions(), CentralDpOptions(), SecAggOptions(), **settings)


def test_a_plan_resolves_the_tasks_settings_and_writes_nothing(tmp_path: Path) -> None:
    plan = _plan(tmp_path, TrainingOptions(task="digits-cnn", rounds=3), host="0.0.0.0")
    assert plan.cfg.task == "digits-cnn" and plan.cfg.rounds == 3 and plan.cfg.min_clients == 2
    assert plan.cfg.model == "gabor" and plan.cfg.lr > 0  # digits-cnn's `auto` under DP
    assert plan.cfg.run_dir == str((tmp_path / "run").resolve())
    assert plan.folder == (tmp_path / "run").resolve() and plan.federation is None
    assert plan.address == f"127.0.0.1:{plan.port}"  # listening everywhere: the coordinator's own calls use loopback
    assert list(tmp_path.iterdir()) == []


def test_a_plan_refuses_bad_settings_before_anything_is_written(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="exclude each other"):
        _plan(tmp_path, federation_dir=tmp_path / "fed")
    with pytest.raises(ConfigError, match="no federation"):
        _plan(tmp_path, insecure=False)
    with pytest.raises(ConfigError, match=r"--momentum must be in \[0, 1\)"):
        _plan(tmp_path, TrainingOptions(momentum=1.0))
    with pytest.raises(ConfigError, match="--secagg hides single updates"):
        plan_run(TrainingOptions(), CentralDpOptions(central_dp="fixed"), SecAggOptions(secagg=True), min_clients=2,
                 fraction_train=1.0, dp=True, run_dir=tmp_path / "run", federation_dir=None, host="127.0.0.1",
                 port=free_port(), insecure=True, join_timeout=0.0, on_warning=print)
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        with pytest.raises(ConfigError, match="already in use"):
            _plan(tmp_path, port=busy.getsockname()[1])
    finished = tmp_path / "done"
    finished.mkdir()
    (finished / "results.json").write_text(json.dumps({"status": "finished"}))
    with pytest.raises(RunFolderError, match="finished run"):
        _plan(tmp_path, run_dir=finished)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["done"]


class _Watcher:
    """results.json as a list of documents, one per poll (the last one repeats)."""

    def __init__(self, docs: list[dict[str, Any] | None]) -> None:
        self.docs = docs

    def poll(self) -> dict[str, Any] | None:
        return self.docs.pop(0) if len(self.docs) > 1 else self.docs[0]


class _Probe:
    def __init__(self, status: str | None) -> None:
        self.status, self.asked, self.closed = status, 0, False

    def __call__(self, run_id: int) -> str | None:
        self.asked += 1
        return self.status

    def close(self) -> None:
        self.closed = True


def test_following_a_run_ends_on_results_json(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(coordinator, "RESULTS_POLL_INTERVAL", 0.0)
    probe = _Probe(None)
    done = {"status": "finished", "rounds": []}
    doc, status = follow_run(_Watcher([None, {"status": "running"}, done]), probe, 7)  # type: ignore[arg-type]
    assert (doc, status) == (done, None) and probe.asked == 0 and probe.closed


def test_a_run_that_died_silently_ends_on_the_superlinks_status(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(coordinator, "RESULTS_POLL_INTERVAL", 0.0)
    monkeypatch.setattr(coordinator, "STATUS_PROBE_INTERVAL", 0.0)
    probe = _Probe("finished:failed")
    doc, status = follow_run(_Watcher([{"status": "running"}]), probe, 7)  # type: ignore[arg-type]
    assert doc == {"status": "running"} and status == "finished:failed" and probe.closed
