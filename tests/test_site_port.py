"""A site's SuperNode and its local port: chosen away from outgoing connections, restarted if taken anyway."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import pytest

from fedshield.client.site_join import port_taken
from fedshield.client.supernode import SuperNode
from fedshield.common import net


def test_ports_are_chosen_below_the_range_outgoing_connections_use() -> None:
    low = net._ephemeral_low()
    if low is None:
        pytest.skip("no /proc/sys/net/ipv4/ip_local_port_range on this system")
    ports = {net.free_port() for _ in range(20)}
    assert all(net.LOWEST_CHOSEN_PORT <= p < low for p in ports)
    for port in ports:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", port))  # free when chosen


def test_a_taken_port_falls_back_to_one_the_kernel_picks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(net, "port_in_use", lambda host, port: True)
    port = net.free_port()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))


@pytest.mark.slow
def test_a_supernode_whose_port_is_taken_stops_and_its_site_recognises_why(tmp_path: Path) -> None:
    # what `fl-client join` restarts on: the line Flower's SuperNode (uvicorn) really writes
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", net.free_port()))
        holder.listen()
        taken = holder.getsockname()[1]
        node = SuperNode(superlink=f"127.0.0.1:{net.free_port()}", local_port=taken, node_config={},
                         log_path=tmp_path / "supernode.log", root_certificates=None, max_wait_time=5)
        node.start()
        try:
            deadline = time.monotonic() + 120
            while node.poll() is None and time.monotonic() < deadline:
                time.sleep(0.2)
            assert node.poll() not in (None, 0)
        finally:
            node.stop()
    assert port_taken(node.log_path, 0)
    assert not port_taken(node.log_path, node.log_path.stat().st_size)  # a later start's part of the log


# `fl-client join` itself, in its own process, with its first local port taken before the SuperNode binds
# it (the race this guards against cannot be provoked from outside, so the driver hands join a held port
# first and lets every later choice be free_port's own)
_JOIN_WITH_A_TAKEN_PORT = """
import socket, sys
from fedshield.common import net
holder = socket.socket()
holder.bind(("127.0.0.1", net.free_port()))
holder.listen()
ports = [holder.getsockname()[1]]
real = net.free_port
net.free_port = lambda: ports.pop() if ports else real()
from fedshield.client.cli import app
app(sys.argv[1:])
"""


@pytest.mark.slow
def test_join_restarts_a_supernode_whose_port_was_taken_and_the_site_trains(tmp_path: Path,
                                                                            digits_sites: Path) -> None:
    import json
    import subprocess
    import sys

    from conftest import cli_env, start_cli

    port = net.free_port()
    run_dir = tmp_path / "run"
    server = start_cli("fl-server", "start", "--task", "digits-cnn", "--rounds", "1", "--min-clients", "1",
                       "--run-dir", str(run_dir), "--insecure", "--port", str(port), "--no-dp",
                       "--join-timeout", "300", log=tmp_path / "server.out")
    try:
        site = subprocess.run(
            [sys.executable, "-c", _JOIN_WITH_A_TAKEN_PORT, "join", "--data", str(digits_sites / "hospital_a"),
             "--server", f"127.0.0.1:{port}", "--insecure", "--no-dp", "--threads", "1", "--state-dir",
             str(tmp_path / "state"), "--connect-timeout", "120"],
            env=cli_env(), capture_output=True, text=True, timeout=400, stdin=subprocess.DEVNULL)
        assert site.returncode == 0, site.stdout[-3000:] + site.stderr[-3000:]
        assert server.wait(timeout=120) == 0, (tmp_path / "server.out").read_text()[-3000:]
    finally:
        if server.poll() is None:
            server.kill()
    out = " ".join(site.stdout.split())  # rich wraps long lines
    assert "local port was taken by another process; restarting it on port" in out
    assert "run complete" in out
    assert port_taken(tmp_path / "state" / "supernode.log", 0)  # the first SuperNode did fail to bind
    doc = json.loads((run_dir / "results.json").read_text())
    assert doc["status"] == "finished" and set(doc["sites"]) == {"hospital_a"}
    assert doc["rounds"][-1]["train"]["sites"]["hospital_a"]["examples"] > 0
