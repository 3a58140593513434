"""A real federation's audit logs: the events in order, the intruders in them, and every log verifies.

Real processes: `fl-server init`, `revoke-site`, `fl-server start --dir`, two `fl-client join`, and two
intruders while the coordinator waits: a foreign `flwr run` without the coordinator token, and a site kit
whose key was never registered. Then the federation's, the run's and a site's logs are checked with
`fl-server audit verify`, and an edited line is caught with its entry number.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from conftest import BIN, cli_env, run_cli, start_cli, stop_processes, wait_for_text
from fedshield.common import pki
from fedshield.common.audit_log import LOG_FILE, entry_hash
from fedshield.common.net import free_port

SITES = ("hospital_a", "hospital_b")




def _entries(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / LOG_FILE).read_text().splitlines()]


def _in_order(events: list[str], expected: list[str]) -> bool:
    """Whether ``expected`` occurs in ``events`` in this order (other events may come between)."""
    it = iter(events)
    return all(any(e == want for e in it) for want in expected)


@pytest.mark.slow  # a whole run with two sites and two intruders: 1-4 minutes on 2 shared cores
def test_a_run_is_audited_with_its_intruders_and_tampering_is_named(tmp_path: Path, digits_sites: Path) -> None:
    port = free_port()
    fed = tmp_path / "federation"
    assert run_cli("fl-server", "init", "--dir", str(fed), "--server-ip", "127.0.0.1", "--port", str(port),
                   "--sites", *SITES, "hospital_c").returncode == 0
    assert run_cli("fl-server", "revoke-site", "hospital_c", "--dir", str(fed)).returncode == 0
    unregistered = tmp_path / "unregistered-kit"
    shutil.copytree(fed / "kits" / "hospital_a", unregistered)
    private, public = pki.new_node_key()
    pki.write_private(unregistered / "node.key", private)
    (unregistered / "node.pub").write_bytes(public)

    run_dir = tmp_path / "run"
    server = start_cli("fl-server", "start", "--dir", str(fed), "--task", "digits-cnn", "--rounds", "1",
                       "--min-clients", "2", "--run-dir", str(run_dir), "--join-timeout", "300",
                       log=tmp_path / "server.out")
    sites: list[subprocess.Popen[bytes]] = []
    try:
        wait_for_text(tmp_path / "server.out", "waiting for 2 site(s)")
        # a foreign `flwr run`: it has the CA certificate, not the coordinator token
        home = tmp_path / "intruder-flwr"
        home.mkdir()
        (home / "config.toml").write_text(f'[superlink.target]\naddress = "127.0.0.1:{port}"\n'
                                          f'root-certificates = "{fed / "kits" / "hospital_a" / "ca.crt"}"\n')
        intruder = subprocess.run([str(BIN / "flwr"), "run", str(run_dir / "app"), "target", "--format", "json"],
                                  env={**cli_env(), "FLWR_HOME": str(home)}, capture_output=True, text=True,
                                  timeout=120, stdin=subprocess.DEVNULL)
        assert json.loads(intruder.stdout)["success"] is False
        # a key the coordinator never registered
        stranger = run_cli("fl-client", "join", "--kit", str(unregistered), "--data", str(digits_sites / "hospital_a"),
                           "--state-dir", str(tmp_path / "st-stranger"), "--connect-timeout", "30", timeout=180)
        assert stranger.returncode != 0 and "refused this site's key" in stranger.stderr, stranger.stderr
        for name in SITES:
            sites.append(start_cli("fl-client", "join", "--kit", str(fed / "kits" / name), "--data",
                                   str(digits_sites / name), "--epsilon", "8", "--threads", "1", "--state-dir",
                                   str(tmp_path / f"state-{name}"), "--connect-timeout", "60",
                                   log=tmp_path / f"{name}.out"))
        assert server.wait(timeout=300) == 0, (tmp_path / "server.out").read_text()[-3000:]
        for name, proc in zip(SITES, sites, strict=True):
            assert proc.wait(timeout=60) == 0, (tmp_path / f"{name}.out").read_text()[-3000:]
    finally:
        stop_processes(server, *sites)

    # the federation's log: who was enrolled and revoked, the run, both intruders, who connected, the end
    federation = _entries(fed)
    events = [e["event"] for e in federation]
    assert _in_order(events, ["federation created", "site enrolled", "site enrolled", "site enrolled",
                              "site revoked", "run submitted", "site connected", "site connected",
                              "run finished"]), events
    assert [e["site"] for e in federation if e["event"] == "site enrolled"] == [*SITES, "hospital_c"]
    submitted = next(e for e in federation if e["event"] == "run submitted")
    assert submitted["by"] and submitted["run_dir"] == str(run_dir.resolve()) and submitted["task"] == "digits-cnn"
    foreign = [e for e in federation if e["event"] == "run refused"]
    assert foreign and foreign[0]["path"] == "/v1/control/start-run" and "coordinator" in foreign[0]["reason"]
    assert foreign[0]["seq"] > submitted["seq"]
    unknown = [e for e in federation if e["event"] == "site refused"]
    assert unknown and "not registered" in unknown[0]["reason"] and unknown[0]["key"].startswith("SHA256:"), unknown
    assert {e["site"] for e in federation if e["event"] == "site connected"} == set(SITES)

    # the run's log: submitted, the sites, the round with what each site reported it spent, finished
    run = _entries(run_dir)
    assert [e["event"] for e in run] == ["run submitted", "site connected", "site connected", "round",
                                         "run finished"], run
    results = json.loads((run_dir / "results.json").read_text())
    trained = next(r for r in results["rounds"] if r["round"] == 1)["train"]["sites"]
    rnd = run[3]
    assert rnd["round"] == 1 and rnd["participants"] == sorted(SITES) and rnd["failed"] == {}
    assert {s: v["epsilon"] for s, v in rnd["spent"].items()} == {s: trained[s]["epsilon"] for s in SITES}

    # a site's own log: what it released, ending at the ε it reported to the coordinator
    state = tmp_path / "state-hospital_a"
    site = _entries(state)
    assert site[0]["event"] == "counts released"
    train = [e for e in site if e["event"] == "released" and e["kind"] == "train"]
    assert [e["round"] for e in train] == [1] and train[0]["steps"] > 0
    assert train[0]["epsilon_spent"] == trained["hospital_a"]["epsilon"]

    for folder in (fed, run_dir, state):
        verified = run_cli("fl-server", "audit", "verify", str(folder))
        assert verified.returncode == 0 and "intact" in verified.stdout, verified.stdout + verified.stderr

    # the coordinator's local user rewrites the run's spending without the key: named, by its number
    lines = (run_dir / LOG_FILE).read_text().splitlines()
    edited = json.loads(lines[3])
    edited["spent"]["hospital_a"]["epsilon"] = 0.01
    edited["hash"] = entry_hash(edited)
    lines[3] = json.dumps(edited)
    (run_dir / LOG_FILE).write_text("\n".join(lines) + "\n")
    caught = run_cli("fl-server", "audit", "verify", str(run_dir))
    assert caught.returncode == 1 and "entry 4: altered" in caught.stdout, caught.stdout + caught.stderr
