"""SecAgg+ tolerates a site that dies mid-round: its masks are rebuilt from the others' shares."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path

import psutil
import pytest

from conftest import start_cli
from fedshield.common.net import free_port

pytestmark = pytest.mark.slow
SITES = ("hospital_a", "hospital_b", "hospital_c")


def test_round_completes_from_the_other_sites_when_one_is_killed(tmp_path: Path, digits_sites: Path) -> None:
    port = free_port()
    run_dir = tmp_path / "run"
    server = start_cli("fl-server", "start", "--insecure", "--secagg", "--secagg-timeout", "30", "--task",
                       "digits-cnn", "--rounds", "1", "--min-clients", "3", "--run-dir", str(run_dir), "--port",
                       str(port), "--no-dp", "--join-timeout", "300", log=tmp_path / "server.out")
    sites = {name: start_cli("fl-client", "join", "--insecure", "--data", str(digits_sites / name), "--server",
                             f"127.0.0.1:{port}", "--no-dp", "--threads", "1", "--state-dir",
                             str(tmp_path / f"st-{name}"), "--connect-timeout", "120", log=tmp_path / f"{name}.out")
             for name in SITES}
    try:
        # kill hospital_c (SIGKILL, no goodbye) once it is training round 1 under SecAgg+: it has already
        # exchanged keys and shares, so the server must reconstruct its masks from the other two
        victim_log = tmp_path / "hospital_c.out"
        deadline = time.monotonic() + 300
        while "round 1: training" not in (victim_log.read_text(errors="replace") if victim_log.exists() else ""):
            assert time.monotonic() < deadline, victim_log.read_text(errors="replace")[-2000:]
            assert sites["hospital_c"].poll() is None, victim_log.read_text(errors="replace")[-2000:]
            time.sleep(0.05)
        victim = psutil.Process(sites["hospital_c"].pid)
        for proc in [*victim.children(recursive=True), victim]:  # the site's machine "crashes"
            proc.send_signal(signal.SIGKILL)
        assert server.wait(timeout=600) == 0, (tmp_path / "server.out").read_text()[-3000:]
        for name in ("hospital_a", "hospital_b"):
            assert sites[name].wait(timeout=60) == 0, (tmp_path / f"{name}.out").read_text()[-3000:]
    finally:
        for proc in [server, *sites.values()]:
            if proc.poll() is None:
                proc.terminate()
        for proc in [server, *sites.values()]:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()

    doc = json.loads((run_dir / "results.json").read_text())
    assert doc["status"] == "finished" and doc["config"]["secagg"] is True
    rounds = {r["round"]: r for r in doc["rounds"]}
    # the round aggregated the two survivors' masked updates into a model that learned (no DP, seeded:
    # ROC-AUC 0.58 -> 0.88, loss 2.30 -> 2.18); a garbled unmasking would have wrecked both
    assert set(rounds[1]["train"]["sites"]) == {"hospital_a", "hospital_b"}
    start, end = rounds[0]["evaluate"]["aggregate"], rounds[1]["evaluate"]["aggregate"]
    assert end["roc_auc"] >= start["roc_auc"] + 0.2 and end["loss"] <= start["loss"] - 0.05, (start, end)
