"""Shared fixtures: run FedShield's CLIs as real OS processes, as a user would."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

BIN = Path(sys.executable).parent


def cli_env() -> dict[str, str]:
    """The environment of every CLI a test starts: no phone-home, our bin first, and one torch/OpenMP thread
    per process: three test workers already share the 2 cores, and threads of several processes spinning
    for the same cores slowed the catalogue tests by 16% (150 -> 127 s for five of them, one run each)."""
    env = dict(os.environ)
    env.update({"FLWR_TELEMETRY_ENABLED": "0", "FLWR_DISABLE_UPDATE_CHECK": "1", "PYTHONUNBUFFERED": "1",
                "PATH": os.pathsep.join([str(BIN), env.get("PATH", "")]), "COLUMNS": "200",
                "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"})
    return env


def run_cli(*args: str, cwd: Path | None = None, timeout: float = 300,
            env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run ``fl-server``/``fl-client``/``fl-sim`` to completion, capturing output (``env``: extra variables)."""
    return subprocess.run([str(BIN / args[0]), *args[1:]], cwd=cwd, env={**cli_env(), **(env or {})},
                          capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL, check=False)


def start_cli(*args: str, log: Path, cwd: Path | None = None) -> subprocess.Popen[bytes]:
    """Start a CLI in the background, output to ``log``."""
    fh = open(log, "wb")  # noqa: SIM115 - the child owns it
    try:
        return subprocess.Popen([str(BIN / args[0]), *args[1:]], cwd=cwd, env=cli_env(), stdout=fh,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    finally:
        fh.close()


def stop_processes(*procs: subprocess.Popen[bytes]) -> None:
    """SIGTERM each CLI still running (they stop their SuperLink/SuperNode on it), SIGKILL after 30 s."""
    for proc in procs:
        if proc.poll() is None:
            proc.terminate()
    for proc in procs:
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()


def wait_for_text(path: Path, text: str, timeout: float = 120.0) -> None:
    """Wait until ``text`` appears in the file ``path`` (a log); fail with its tail after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and text in path.read_text(errors="replace"):
            return
        time.sleep(0.3)
    tail = path.read_text(errors="replace")[-3000:] if path.exists() else "(no such file)"
    raise AssertionError(f"{text!r} not in {path} after {timeout} s:\n{tail}")


def wait_or_kill(proc: subprocess.Popen[bytes], timeout: float) -> int:
    """``proc``'s exit code within ``timeout`` s; killed (and the timeout raised) otherwise."""
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise


@pytest.fixture(scope="session")
def digits_split(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three digits site folders (Dirichlet 0.5) written once by `fl-sim split`; tests take copies."""
    out = tmp_path_factory.mktemp("digits") / "data"
    proc = run_cli("fl-sim", "split", "--dataset", "digits", "--sites", "3", "--dirichlet", "0.5", "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    return out


@pytest.fixture
def digits_sites(digits_split: Path, tmp_path: Path) -> Path:
    """This test's own copy of the three digits site folders: a DP site's data folder keeps an anchor of
    its privacy ledger, so a data folder shared with other tests would tie their ledgers together."""
    out = tmp_path / "digits-data"
    shutil.copytree(digits_split, out)
    return out


def pytest_configure(config: pytest.Config) -> None:
    """Under xdist workers (./test.sh runs three), in-process torch uses one thread each: two workers with
    two threads each on 2 cores made a 4 s training test take 46 s. (The CLIs the tests start set their own threads.)"""
    if os.environ.get("PYTEST_XDIST_WORKER"):
        import torch

        torch.set_num_threads(1)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """End-to-end (slow) tests first: with several workers (./test.sh), the short unit tests fill the gaps
    at the end instead of one long federation starting last."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)


def digits_checkpoint_quality(run_dir: Path, rnd: int) -> dict[str, float]:
    """Loss, accuracy and ROC-AUC of a deployment's global digits-cnn model after round ``rnd`` (0: the initial
    model, rebuilt from the run's seed as the server built it) on all 1,797 of scikit-learn's digits, exactly.

    Deployment has no central test set, and under DP a site's evaluation reply is a noisy release
    (client/private_statistics.py), so a test asserts learning on the checkpoints the coordinator wrote.
    """
    import json

    import torch
    from torch.utils.data import TensorDataset

    from fedshield.simulations.datasets import load_dataset
    from fedshield.tasks.base import DataSchema, TaskOptions
    from fedshield.tasks.model_factory import build_model
    from fedshield.tasks.registry import get_task

    doc = json.loads((run_dir / "results.json").read_text())
    task = get_task("digits-cnn")
    schema = DataSchema.from_config(doc["schema"])
    model = build_model(task, schema, TaskOptions(model=doc["config"]["model"]), seed=int(doc["config"]["seed"]))
    if rnd > 0:
        checkpoint = torch.load(run_dir / "checkpoints" / f"round-{rnd:03d}.pt", weights_only=True)
        model.load_state_dict(checkpoint["state_dict"])
    digits = load_dataset("digits")
    data = TensorDataset(torch.as_tensor(digits.x, dtype=torch.float32).unsqueeze(1) / 255, torch.as_tensor(digits.y))
    return task.evaluate(model, data, device=torch.device("cpu"))
