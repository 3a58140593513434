"""End to end: the coordinator is killed mid-run (every process of it, SIGKILL) and `fl-server start --resume`
finishes the run; the same `fl-client join` processes reconnect on their own, and each site's privacy ledger
holds every round it ran exactly once.

Real SuperLink, SuperNodes and ClientApps, DP-SGD on real handwritten digits, 3 sites, 6 rounds.
"""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path

import psutil
import pytest

from conftest import digits_checkpoint_quality, run_cli, start_cli, wait_or_kill
from fedshield.common.net import free_port

pytestmark = pytest.mark.slow

SITES = ("hospital_a", "hospital_b", "hospital_c")
ROUNDS = 6




def _kill_tree(pid: int) -> None:
    """SIGKILL a process and everything it started (the SuperLink, the SuperExec and the ServerApp run in
    sessions of their own, so a process group is not enough): the coordinator's host lost power."""
    root = psutil.Process(pid)
    tree = [root, *root.children(recursive=True)]
    for proc in tree:
        try:
            proc.send_signal(signal.SIGKILL)
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(tree, timeout=10)


def _server(port: int, log: Path, *extra: str) -> subprocess.Popen[bytes]:
    return start_cli("fl-server", "start", "--insecure", "--port", str(port), "--join-timeout", "300", *extra,
                     log=log)


def test_killed_coordinator_resumes_and_sites_rejoin(tmp_path: Path, digits_sites: Path) -> None:
    port = free_port()
    run_dir = tmp_path / "run"
    server = _server(port, tmp_path / "server.out", "--task", "digits-cnn", "--rounds", str(ROUNDS),
                     "--min-clients", "3", "--run-dir", str(run_dir))
    sites = [start_cli("fl-client", "join", "--data", str(digits_sites / name), "--server", f"127.0.0.1:{port}",
                       "--insecure", "--epsilon", "8", "--threads", "1", "--state-dir", str(tmp_path / f"st-{name}"),
                       "--connect-timeout", "120", "--reconnect-timeout", "300", log=tmp_path / f"{name}.out")
             for name in SITES]
    resumed = None
    try:
        deadline = time.monotonic() + 400
        while not (run_dir / "checkpoints" / "round-003.pt").exists():
            assert server.poll() is None, (tmp_path / "server.out").read_text()[-3000:]
            assert time.monotonic() < deadline, "round 3 never finished"
            time.sleep(0.1)
        _kill_tree(server.pid)
        killed = json.loads((run_dir / "results.json").read_text())
        assert killed["status"] == "running"
        assert all(proc.poll() is None for proc in sites)  # the sites wait for the coordinator to come back

        # a flag that would change the run is refused in one line, before anything starts
        refused = run_cli("fl-server", "start", "--insecure", "--port", str(port), "--resume", str(run_dir),
                          "--rounds", "10")
        assert refused.returncode == 2
        assert "--rounds 10" in refused.stderr and "drop --rounds" in refused.stderr

        resumed = _server(port, tmp_path / "resumed.out", "--resume", str(run_dir))
        assert wait_or_kill(resumed, 600) == 0, (tmp_path / "resumed.out").read_text()[-3000:]
        for name, proc in zip(SITES, sites, strict=True):
            assert wait_or_kill(proc, 60) == 0, (tmp_path / f"{name}.out").read_text()[-3000:]
    finally:
        for proc in [server, *sites, *([resumed] if resumed else [])]:
            if proc.poll() is None:
                proc.kill()

    out = " ".join((tmp_path / "resumed.out").read_text().split())
    assert "resuming run" in out and f"of {ROUNDS}" in out
    doc = json.loads((run_dir / "results.json").read_text())
    assert doc["status"] == "finished"
    rounds = [r["round"] for r in doc["rounds"]]
    assert rounds == list(range(ROUNDS + 1))  # each round once, the earlier ones kept
    (resumption,) = doc["resumed"]
    after = resumption["after_round"]
    assert after >= 2
    assert doc["final"]["round"] == ROUNDS
    run_id = doc["config"]["fedshield-run-id"]
    for name in SITES:
        assert "reconnecting" in (tmp_path / f"{name}.out").read_text()
        ledger = run_cli("fl-client", "privacy", "--data", str(digits_sites / name), "--state-dir",
                         str(tmp_path / f"st-{name}"), "--json")
        assert ledger.returncode == 0, ledger.stderr
        entries = json.loads(ledger.stdout)["entries"]
        trained = [e["round"] for e in entries if e["kind"] == "train"]
        assert len(trained) == len(set(trained)), trained  # never a round twice
        assert all(e["run_id"] == run_id for e in entries if e["kind"] != "count")  # one run, not two
        # every round the coordinator aggregated this site's update in is one train entry of its ledger
        accepted = {r["round"] for r in doc["rounds"] if name in r.get("train", {}).get("sites", {})}
        assert accepted <= set(trained) <= set(range(1, ROUNDS + 1))
        assert set(range(after + 2, ROUNDS + 1)) <= accepted  # after the resumed round, every round counted
    # the run learned across the crash
    initial, final = digits_checkpoint_quality(run_dir, 0), digits_checkpoint_quality(run_dir, ROUNDS)
    assert final["roc_auc"] >= initial["roc_auc"] + 0.15 and final["loss"] <= initial["loss"] - 0.15, (initial, final)
