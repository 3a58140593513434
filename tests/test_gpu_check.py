"""benchmarks/gpu_check.py, the GPU machine's one script, runs every part on the CPU (as a real process)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import cli_env

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "gpu_check.py"


def _run(*args: str, timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, env=cli_env(),
                          timeout=timeout, stdin=subprocess.DEVNULL, check=False)


@pytest.mark.slow  # a real two-site federation: about 40 s on the 2-core machine
def test_quick_cpu_run_measures_every_part(tmp_path: Path) -> None:
    proc = _run("--device", "cpu", "--quick", "--out", str(tmp_path), timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    doc = json.loads((tmp_path / "gpu_check.json").read_text())
    assert doc["device"] == "cpu" and doc["quick"] is True
    assert [(r["task"], r["batch"]) for r in doc["steps"]] == [("digits-cnn", 64)]
    for row in doc["steps"]:
        assert row["plain_ms"] > 0 and row["private_ms"] > 0 and row["ratio"] > 0
        assert row["dp_mode"] == "bk" and row["private_peak_mib"] is None  # no device memory on the CPU
    (clip,) = doc["clipping"]
    # the clipped sum is not zero (a step happened) and is the same computed twice on the CPU
    assert clip["max_abs"] > 0 and clip["relative"] < 1e-5
    fed = doc["federation"]
    assert fed["status"] == "finished" and fed["rounds_finished"] == 2, fed
    assert fed["server_exit"] == 0 and fed["site_exits"] == [0, 0]
    assert all(s > 0 for s in fed["round_seconds"])
    assert fed["trained_on"] == {"hospital_a": {"1": "cpu", "2": "cpu"}, "hospital_b": {"1": "cpu", "2": "cpu"}}
    table = (tmp_path / "gpu_check.txt").read_text()
    assert "DP/plain" in table and "status finished, 2 rounds finished" in table


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is visible: --device cuda is valid here")
def test_cuda_without_a_gpu_is_a_one_line_error(tmp_path: Path) -> None:
    proc = _run("--device", "cuda", "--out", str(tmp_path / "out"), timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "--device cuda" in proc.stderr, proc.stderr
    assert not (tmp_path / "out").exists()
