"""End to end, on a provisioned federation (TLS, enrolled keys): a site's host loses power mid-run (every
process of its `fl-client join`, SIGKILL) and the site joins again with the same command; later the
coordinator is killed the same way and `fl-server start --resume` finishes the run. The other sites'
`fl-client join` processes reconnect on their own, and each site's privacy ledger holds every round it ran
exactly once.

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
LOGS = ("hospital_a.out", "hospital_b-restarted.out", "hospital_c.out")




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


def _server(fed: Path, log: Path, *extra: str) -> subprocess.Popen[bytes]:
    return start_cli("fl-server", "start", "--dir", str(fed), "--join-timeout", "300", *extra, log=log)


def _site(fed: Path, tmp_path: Path, digits_sites: Path, name: str, log: str) -> subprocess.Popen[bytes]:
    return start_cli("fl-client", "join", "--kit", str(fed / "kits" / name), "--data", str(digits_sites / name),
                     "--epsilon", "8", "--threads", "1", "--state-dir", str(tmp_path / f"st-{name}"),
                     "--connect-timeout", "180", "--reconnect-timeout", "300", log=tmp_path / log)


def _wait_for_round(run_dir: Path, rnd: int, server: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 400
    while not (run_dir / "checkpoints" / f"round-{rnd:03d}.pt").exists():
        assert server.poll() is None, log.read_text()[-3000:]
        assert time.monotonic() < deadline, f"round {rnd} never finished"
        time.sleep(0.1)


def test_killed_site_and_killed_coordinator_resume_under_tls(tmp_path: Path, digits_sites: Path) -> None:
    port = free_port()
    fed = tmp_path / "federation"
    init = run_cli("fl-server", "init", "--dir", str(fed), "--server-ip", "127.0.0.1", "--port", str(port),
                   "--sites", *SITES)
    assert init.returncode == 0, init.stderr
    run_dir = tmp_path / "run"
    server = _server(fed, tmp_path / "server.out", "--task", "digits-cnn", "--rounds", str(ROUNDS),
                     "--min-clients", "3", "--run-dir", str(run_dir))
    sites = [_site(fed, tmp_path, digits_sites, name, f"{name}.out") for name in SITES]
    resumed = None
    try:
        # hospital_b's host loses power during round 2 and its operator (or systemd) starts it again at once
        _wait_for_round(run_dir, 1, server, tmp_path / "server.out")
        _kill_tree(sites[1].pid)
        sites[1] = _site(fed, tmp_path, digits_sites, SITES[1], "hospital_b-restarted.out")
        _wait_for_round(run_dir, 3, server, tmp_path / "server.out")
        _kill_tree(server.pid)
        killed = json.loads((run_dir / "results.json").read_text())
        assert killed["status"] == "running"
        assert all(proc.poll() is None for proc in sites)  # the sites wait for the coordinator to come back

        # a flag that would change the run is refused in one line, before anything starts
        refused = run_cli("fl-server", "start", "--dir", str(fed), "--resume", str(run_dir), "--rounds", "10")
        assert refused.returncode == 2
        assert "--rounds 10" in refused.stderr and "drop --rounds" in refused.stderr

        resumed = _server(fed, tmp_path / "resumed.out", "--resume", str(run_dir))
        assert wait_or_kill(resumed, 600) == 0, (tmp_path / "resumed.out").read_text()[-3000:]
        for log, proc in zip(LOGS, sites, strict=True):
            assert wait_or_kill(proc, 60) == 0, (tmp_path / log).read_text()[-3000:]
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
    # the restarted site waited out its killed process's connection, which the SuperLink still held, and joined
    restarted = " ".join((tmp_path / LOGS[1]).read_text().split())
    assert "still holds this kit's previous connection" in restarted, restarted[-3000:]
    for name, log in zip(SITES, LOGS, strict=True):
        # the sites that stayed up lost the coordinator and reconnected; the restarted one may still have been
        # waiting out its old connection when the coordinator died, and then joins the resumed run afresh
        if log != LOGS[1]:
            assert "reconnecting" in (tmp_path / log).read_text()
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
