"""`fl-server start --host ADDRESS`: a coordinator listening on one specific address its certificate names.

The coordinator's own calls (registering the sites' keys, submitting the run, asking its status) dial the
address the SuperLink listens on, not 127.0.0.1, and a --host the certificate does not name is refused
before anything starts; a site that dials the coordinator by a name the certificate does not list refuses
it. 127.0.0.2 is a loopback address on Linux that is not 127.0.0.1.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from conftest import run_cli, start_cli
from fedshield.common import pki
from fedshield.common.net import free_port

HOST = "127.0.0.2"
SITES = ("hospital_a", "hospital_b")


def test_a_host_the_certificate_does_not_name_is_refused_and_can_be_added(tmp_path: Path) -> None:
    fed = tmp_path / "federation"
    assert run_cli("fl-server", "init", "--dir", str(fed), "--server-ip", HOST, "--sites", "a").returncode == 0
    refused = run_cli("fl-server", "start", "--dir", str(fed), "--host", "127.0.0.3", "--rounds", "1",
                      "--run-dir", str(tmp_path / "run"))
    assert refused.returncode == 2, refused.stdout + refused.stderr
    error = refused.stderr.strip().splitlines()[-1]
    assert error.startswith("error: --host 127.0.0.3") and "--renew-server-cert --server-ip 127.0.0.3" in error, error
    assert not (tmp_path / "run").exists()
    renewed = run_cli("fl-server", "init", "--dir", str(fed), "--renew-server-cert", "--server-ip", "127.0.0.3")
    assert renewed.returncode == 0, renewed.stderr
    cert = pki.load_cert(fed / "server" / "server.crt")
    assert pki.names_host(cert, "127.0.0.3") and pki.names_host(cert, HOST) and not pki.names_host(cert, "127.0.0.4")
    assert (fed / "kits" / "a" / "kit.toml").read_text().count(HOST) == 1  # the kits keep their address


@pytest.mark.slow
def test_a_federation_runs_on_a_loopback_address_other_than_127_0_0_1(tmp_path: Path, digits_sites: Path) -> None:
    port = free_port(HOST)
    fed = tmp_path / "federation"
    proc = run_cli("fl-server", "init", "--dir", str(fed), "--server-ip", HOST, "--port", str(port),
                   "--sites", *SITES)
    assert proc.returncode == 0, proc.stderr
    run_dir = tmp_path / "run"
    server = start_cli("fl-server", "start", "--dir", str(fed), "--host", HOST, "--task", "digits-cnn", "--rounds", "1",
                       "--min-clients", "2", "--run-dir", str(run_dir), "--join-timeout", "300",
                       log=tmp_path / "server.out")
    # "127.2" reaches 127.0.0.2 too, but the certificate does not name it: the site refuses the server
    stranger = run_cli("fl-client", "join", "--kit", str(fed / "kits" / SITES[0]), "--data",
                       str(digits_sites / SITES[0]), "--server", f"127.2:{port}", "--state-dir",
                       str(tmp_path / "state-stranger"),
                       "--connect-timeout", "60", timeout=120)
    assert stranger.returncode == 2, stranger.stdout + stranger.stderr
    assert "certificate is not valid for '127.2'" in stranger.stderr.strip().splitlines()[-1], stranger.stderr
    # the sites dial the address in their kits: 127.0.0.2
    sites = [start_cli("fl-client", "join", "--kit", str(fed / "kits" / name), "--data", str(digits_sites / name),
                       "--threads", "1", "--state-dir", str(tmp_path / f"state-{name}"), "--connect-timeout", "60",
                       log=tmp_path / f"{name}.out") for name in SITES]
    try:
        assert server.wait(timeout=300) == 0, (tmp_path / "server.out").read_text()[-3000:]
        for name, site in zip(SITES, sites, strict=True):
            assert site.wait(timeout=60) == 0, (tmp_path / f"{name}.out").read_text()[-3000:]
    finally:
        for proc in (server, *sites):
            if proc.poll() is None:
                proc.terminate()
        for proc in (server, *sites):
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
    doc = json.loads((run_dir / "results.json").read_text())
    assert doc["status"] == "finished" and set(doc["sites"]) == set(SITES)
    assert f"server listening on {HOST}:{port}" in (tmp_path / "server.out").read_text()
    assert f"connecting to {HOST}:{port}" in (tmp_path / f"{SITES[0]}.out").read_text()


def test_the_superexec_dials_an_ipv6_listen_address_in_brackets(tmp_path: Path) -> None:
    """`--host fd00:fed::1`: the SuperExec's Runtime API address was written `fd00:fed::1:PORT`, which Flower's
    HTTP client took for a port of 'fed::1:PORT' and exited on, taking the coordinator with it."""
    from fedshield.common.local_secret import LocalSecret
    from fedshield.server.superlink import SuperLink

    link = SuperLink(host="fd00:fed::1", port=9092, state_db=None, log_path=tmp_path / "sl.log", tls=None)
    link.secret = LocalSecret.create("test")
    try:
        cmd = link.superexec_command(superlink_pid=1)
    finally:
        link.secret.remove()
    assert cmd[cmd.index("--runtime-api-address") + 1] == "[fd00:fed::1]:9092"
