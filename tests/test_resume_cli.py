"""`fl-server start --resume RUN_DIR` refuses, in one line and before anything starts, what it cannot resume:
a finished run, a folder without a run, a run without a FedShield run id, and flags that would change the run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import run_cli
from fedshield.common.run_config import RunConfig


def _run_folder(tmp_path: Path, status: str, **config: object) -> Path:
    folder = tmp_path / "run"
    folder.mkdir()
    cfg = {**RunConfig(task="digits-cnn", rounds=6, model="gabor", lr=0.5, run_dir=str(folder)).to_flower(), **config}
    (folder / "results.json").write_text(json.dumps({"format": "fedshield-results", "mode": "deployment",
                                                     "status": status, "config": cfg, "rounds": []}))
    return folder


def _resume(folder: Path, *flags: str):
    return run_cli("fl-server", "start", "--insecure", "--resume", str(folder), *flags)


@pytest.mark.parametrize(("status", "config", "said"), [
    ("finished", {"fedshield-run-id": "41"}, "already finished"),
    ("running", {}, "recorded no FedShield run id"),
    ("failed", {"fedshield-run-id": "41", "trusted-data": "/nonexistent/trusted"},
     "the run's --trusted-data folder /nonexistent/trusted is gone"),
])
def test_a_run_that_cannot_be_resumed_is_refused(tmp_path: Path, status: str, config: dict, said: str) -> None:
    proc = _resume(_run_folder(tmp_path, status, **config))
    assert proc.returncode == 2 and said in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.stderr


def test_a_folder_without_a_run_is_refused(tmp_path: Path) -> None:
    proc = _resume(tmp_path)
    assert proc.returncode == 2 and "no results.json" in proc.stderr


@pytest.mark.parametrize(("flags", "said"), [
    (("--task", "tabular"), "--task tabular: the run being resumed has task digits-cnn"),
    (("--rounds", "10"), "--rounds 10: the run being resumed has rounds 6"),
    (("--no-dp",), "--no-dp: the run being resumed has dp on"),
])
def test_a_flag_that_would_change_the_run_is_refused(tmp_path: Path, flags: tuple[str, ...], said: str) -> None:
    proc = _resume(_run_folder(tmp_path, "failed", **{"fedshield-run-id": "41"}), *flags)
    assert proc.returncode == 2 and said in proc.stderr and "drop" in proc.stderr, proc.stderr
