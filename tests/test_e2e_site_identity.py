"""A site is the name its key was enrolled under: a kit cannot join under another site's name.

Real processes: a provisioned federation (`fl-server init`), a coordinator (`fl-server start --dir`), sites
(`fl-client join`) and, for the attack, a modified site (tests/impostor_site.py) that claims another
site's name with its own kit, past `fl-client join`'s local check.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import cli_env, run_cli, start_cli, stop_processes, wait_for_text
from fedshield.common.net import free_port

IMPOSTOR = Path(__file__).parent / "impostor_site.py"


def _init(tmp_path: Path, *sites: str) -> tuple[Path, int]:
    port = free_port()
    fed = tmp_path / "federation"
    proc = run_cli("fl-server", "init", "--dir", str(fed), "--server-ip", "127.0.0.1", "--port", str(port),
                   "--sites", *sites)
    assert proc.returncode == 0, proc.stderr
    return fed, port






def test_a_kit_joins_only_under_its_enrolled_name(tmp_path: Path, digits_sites: Path) -> None:
    fed, port = _init(tmp_path, "hospital_a", "hospital_b")
    proc = run_cli("fl-client", "join", "--kit", str(fed / "kits" / "hospital_a"), "--name", "hospital_b",
                   "--data", str(digits_sites / "hospital_a"), "--server", f"127.0.0.1:{port}",
                   "--connect-timeout", "1", "--state-dir", str(tmp_path / "st"))
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: --name hospital_b"), proc.stderr
    assert "enrolled as site 'hospital_a'" in lines[0]
    assert "connecting" not in proc.stdout  # refused before it tried the server
    # its own name, and no --name at all, are what a kit joins with
    same = run_cli("fl-client", "join", "--kit", str(fed / "kits" / "hospital_a"), "--name", "hospital_a",
                   "--data", str(digits_sites / "hospital_a"), "--server", f"127.0.0.1:{port}",
                   "--connect-timeout", "1", "--state-dir", str(tmp_path / "st"))
    assert "nothing answered within 1 s" in same.stderr, same.stderr


@pytest.mark.slow
def test_a_site_claiming_another_sites_name_is_refused_and_named_by_its_key(tmp_path: Path,
                                                                            digits_sites: Path) -> None:
    fed, port = _init(tmp_path, "hospital_a", "hospital_b", "hospital_c")
    run_dir = tmp_path / "run"
    server = start_cli("fl-server", "start", "--dir", str(fed), "--task", "digits-cnn", "--rounds", "1",
                       "--min-clients", "3", "--run-dir", str(run_dir), "--join-timeout", "300",
                       log=tmp_path / "server.out")
    honest = [start_cli("fl-client", "join", "--kit", str(fed / "kits" / name), "--data", str(digits_sites / name),
                        "--threads", "1", "--state-dir", str(tmp_path / f"state-{name}"), "--connect-timeout", "60",
                        log=tmp_path / f"{name}.out")
              for name in ("hospital_b", "hospital_c")]
    # hospital_a's kit, claiming to be hospital_b
    with open(tmp_path / "impostor.out", "wb") as out:
        impostor = subprocess.Popen(
            [sys.executable, str(IMPOSTOR), "--kit", str(fed / "kits" / "hospital_a"), "--data",
             str(digits_sites / "hospital_a"), "--server", f"127.0.0.1:{port}", "--state-dir",
             str(tmp_path / "state-impostor"), "--claim", "hospital_b"],
            env=cli_env(), stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        assert server.wait(timeout=300) == 0, (tmp_path / "server.out").read_text()[-3000:]
        for name, proc in zip(("hospital_b", "hospital_c"), honest, strict=True):
            assert proc.wait(timeout=60) == 0, (tmp_path / f"{name}.out").read_text()[-3000:]
        assert impostor.wait(timeout=60) == 1, (tmp_path / "impostor.out").read_text()[-3000:]
    finally:
        stop_processes(server, *honest, impostor)

    told = (tmp_path / "impostor.out").read_text()
    assert "the coordinator refused this site" in told and "claims to be site 'hospital_b'" in told, told
    doc = json.loads((run_dir / "results.json").read_text())
    assert doc["status"] == "finished"
    # the impostor is reported under the name its key was enrolled under, with a reason naming both names
    reason = doc["refused_sites"]["hospital_a"]
    assert "'hospital_a'" in reason and "'hospital_b'" in reason and "\n" not in reason, reason
    # and took no part: the run's sites and every round are the two honest ones
    assert set(doc["sites"]) == {"hospital_b", "hospital_c"}
    for entry in doc["rounds"]:
        for stage in ("train", "evaluate"):
            if stage in entry:
                assert set(entry[stage]["sites"]) == {"hospital_b", "hospital_c"}, entry
                assert not entry[stage]["failures"], entry
    # the coordinator's log names it the same way
    assert "site hospital_a refused: site 'hospital_a' claims to be site 'hospital_b'" in (
        tmp_path / "server.out").read_text()


@pytest.mark.slow
def test_a_second_join_with_one_kit_is_told_the_kit_is_connected(tmp_path: Path, digits_sites: Path) -> None:
    fed, port = _init(tmp_path, "hospital_a", "hospital_b")
    run_dir = tmp_path / "run"
    server = start_cli("fl-server", "start", "--dir", str(fed), "--task", "digits-cnn", "--rounds", "1",
                       "--min-clients", "2", "--run-dir", str(run_dir), "--join-timeout", "300",
                       log=tmp_path / "server.out")
    kit = fed / "kits" / "hospital_a"
    first = start_cli("fl-client", "join", "--kit", str(kit), "--data", str(digits_sites / "hospital_a"),
                      "--threads", "1", "--state-dir", str(tmp_path / "state-1"), "--connect-timeout", "60",
                      log=tmp_path / "first.out")
    try:
        wait_for_text(run_dir / "server.log", "Activated node_id")
        second = run_cli("fl-client", "join", "--kit", str(kit), "--data", str(digits_sites / "hospital_a"),
                         "--threads", "1", "--state-dir", str(tmp_path / "state-2"), "--connect-timeout", "60",
                         timeout=120)
        assert second.returncode != 0, second.stdout + second.stderr
        error = second.stderr.strip().splitlines()[-1]
        assert "already connected" in error and "another process" in error and "hospital_a" in error, error
        assert "not enrolled" not in second.stderr
        assert first.poll() is None  # the first connection is untouched
    finally:
        stop_processes(server, first)
