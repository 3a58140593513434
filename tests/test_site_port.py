"""A site's SuperNode and its local port: chosen away from outgoing connections, restarted if taken anyway."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import pytest

from fedshield.client.cli import _port_taken
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
    assert _port_taken(node.log_path, 0)
    assert not _port_taken(node.log_path, node.log_path.stat().st_size)  # a later start's part of the log
