"""A coordinator that withstands the network: what a stranger without credentials can make its port hold.

A real `fl-server start --dir` (TLS, site authentication) on loopback. A client with no site key and no
token sends request bodies far over the cap: each is refused (HTTP 413) before it is read, and the
SuperLink's memory stays near its baseline (on the old code, four 100 MB POSTs took it from 149 to
954 MiB, never given back). Connections that send nothing, half a TLS ClientHello, half their headers or
half their body are closed after the configured idle limit, and one peer's connections past its share as
they open. The federation then trains as usual, its long polls unharmed by a 3 s idle limit.
"""

from __future__ import annotations

import json
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
from netns_hosts import loopback_namespace, missing_requirement

from conftest import BIN, cli_env, run_cli, start_cli, stop_processes, wait_for_text
from fedshield.common.net import free_port

pytestmark = pytest.mark.slow
SITES = ("hospital_a", "hospital_b")
MIB = 2**20
ATTACK_BYTES = 100 * MIB
IDLE_S = 3
# the idle limit is 3 s; a connection still open after this long was not closed for being idle (on the old
# code an idle connection is held for good, an unfinished TLS handshake for asyncio's 60 s)
GIVE_UP_S = 30.0
# half of a TLS 1.2+ ClientHello: the record header announces 512 bytes, 6 follow
HALF_CLIENT_HELLO = b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03"




def _superlink(server: subprocess.Popen[bytes]) -> psutil.Process:
    return next(p for p in psutil.Process(server.pid).children(recursive=True)
                if "fedshield.flower_ext.superlink_main" in p.cmdline())


def _rss_mib(process: psutil.Process) -> float:
    return process.memory_info().rss / MIB


def _tls(port: int, ca: Path) -> ssl.SSLSocket:
    """A TLS connection that trusts the federation's CA (public) and presents nothing else."""
    context = ssl.create_default_context(cafile=str(ca))
    return context.wrap_socket(socket.create_connection(("127.0.0.1", port), timeout=60), server_hostname="127.0.0.1")


def _post_oversized(port: int, ca: Path, *, declared: bool) -> tuple[int | None, int]:
    """POST ``ATTACK_BYTES`` of junk to the Fleet API (with a Content-Length, or chunked without one);
    (the status answered, or None when the server closed first; the bytes it took before that)."""
    piece = b"\0" * MIB
    framing = f"Content-Length: {ATTACK_BYTES}" if declared else "Transfer-Encoding: chunked"
    sent = 0
    with _tls(port, ca) as conn:
        conn.sendall(f"POST /v1/fleet/push-object HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                     f"Content-Type: application/protobuf\r\n{framing}\r\n\r\n".encode())
        try:
            while sent < ATTACK_BYTES:
                conn.sendall(piece if declared else b"%x\r\n%s\r\n" % (len(piece), piece))
                sent += len(piece)
            if not declared:
                conn.sendall(b"0\r\n\r\n")
            status_line = conn.recv(4096)
        except OSError:  # the server closed the connection while the body was still coming: refused unread
            return None, sent
    return (int(status_line.split()[1]) if status_line else None), sent


def test_oversized_requests_without_credentials_are_refused_unread_and_memory_stays_bounded(
        tmp_path: Path, digits_sites: Path) -> None:
    port = free_port()
    fed = tmp_path / "federation"
    assert run_cli("fl-server", "init", "--dir", str(fed), "--server-ip", "127.0.0.1", "--port", str(port),
                   "--sites", *SITES).returncode == 0
    ca = fed / "kits" / SITES[0] / "ca.crt"
    run_dir = tmp_path / "run"
    server = start_cli("fl-server", "start", "--dir", str(fed), "--task", "digits-cnn", "--rounds", "1",
                       "--min-clients", "2", "--run-dir", str(run_dir), "--join-timeout", "600",
                       "--idle-timeout", str(IDLE_S), log=tmp_path / "server.out")
    sites: list[subprocess.Popen[bytes]] = []
    try:
        wait_for_text(tmp_path / "server.out", "waiting for 2 site(s)", timeout=180)
        link = _superlink(server)
        baseline = _rss_mib(link)
        answers = [_post_oversized(port, ca, declared=True) for _ in range(4)]
        answers.append(_post_oversized(port, ca, declared=False))
        after = _rss_mib(link)
        # each refused with 413, or cut off while most of the body was still unsent; never read and answered
        for status, sent in answers:
            assert status == 413 or (status is None and sent < ATTACK_BYTES // 2), answers
        log = (run_dir / "server.log").read_text(errors="replace")
        assert log.count("FedShield limits: refused POST /v1/fleet/push-object") == 5, log[-3000:]
        # 500 MB sent at it: the old code grew by ~200 MiB a request; bounded now (generously: not a benchmark)
        assert after - baseline < 100, (baseline, after)

        for name in SITES:  # then the federation trains, its long polls unharmed by the 3 s idle limit
            sites.append(start_cli("fl-client", "join", "--kit", str(fed / "kits" / name), "--data",
                                   str(digits_sites / name), "--server", f"127.0.0.1:{port}", "--epsilon", "8",
                                   "--threads", "1", "--state-dir", str(tmp_path / f"state-{name}"),
                                   "--connect-timeout", "60", log=tmp_path / f"{name}.out"))
        assert server.wait(timeout=600) == 0, (tmp_path / "server.out").read_text()[-3000:]
        for name, proc in zip(SITES, sites, strict=True):
            assert proc.wait(timeout=60) == 0, (tmp_path / f"{name}.out").read_text()[-3000:]
    finally:
        stop_processes(server, *sites)
    doc = json.loads((run_dir / "results.json").read_text())
    assert doc["status"] == "finished" and set(doc["sites"]) == set(SITES)


def _closed_by_server(conn: socket.socket, deadline: float) -> bool:
    """Whether the server closes ``conn`` before ``deadline`` (end of stream or a reset)."""
    while (left := deadline - time.monotonic()) > 0:
        conn.settimeout(left)
        try:
            if conn.recv(4096) == b"":
                return True
        except TimeoutError:
            return False
        except OSError:
            return True
    return False


@pytest.fixture()
def waiting_coordinator(tmp_path: Path) -> Iterator[tuple[int, Path]]:
    """A `fl-server start --dir --idle-timeout 3` waiting for sites that never come; (port, CA certificate)."""
    port = free_port()
    fed = tmp_path / "federation"
    assert run_cli("fl-server", "init", "--dir", str(fed), "--server-ip", "127.0.0.1", "--port", str(port),
                   "--sites", *SITES).returncode == 0
    server = start_cli("fl-server", "start", "--dir", str(fed), "--task", "digits-cnn", "--rounds", "1",
                       "--min-clients", "2", "--run-dir", str(tmp_path / "run"), "--join-timeout", "600",
                       "--idle-timeout", str(IDLE_S), log=tmp_path / "server.out")
    try:
        wait_for_text(tmp_path / "server.out", "waiting for 2 site(s)", timeout=180)
        yield port, fed / "kits" / SITES[0] / "ca.crt"
    finally:
        stop_processes(server)


def test_idle_half_open_and_stalled_connections_are_closed_after_the_idle_limit(
        waiting_coordinator: tuple[int, Path]) -> None:
    port, ca = waiting_coordinator
    silent = [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(5)]
    half_hello = [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(5)]
    for conn in half_hello:
        conn.sendall(HALF_CLIENT_HELLO)
    half_headers, half_body = _tls(port, ca), _tls(port, ca)  # a finished handshake, then a stalled request
    half_headers.sendall(b"POST /v1/fleet/pull-messages HTTP/1.1\r\nHost: 127.0.0.1\r\n")
    half_body.sendall(b"POST /v1/fleet/pull-messages HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                      b"Content-Type: application/protobuf\r\nContent-Length: 1000\r\n\r\n" + b"\0" * 10)
    deadline = time.monotonic() + GIVE_UP_S
    try:
        kept = {name: sum(not _closed_by_server(c, deadline) for c in conns)
                for name, conns in (("silent", silent), ("half ClientHello", half_hello),
                                    ("half headers", [half_headers]), ("half body", [half_body]))}
    finally:
        for conn in [*silent, *half_hello, half_headers, half_body]:
            conn.close()
    assert not any(kept.values()), f"connections still open after {GIVE_UP_S:g} s: {kept}"


def test_one_peer_cannot_hold_more_than_its_share_of_connections(tmp_path: Path) -> None:
    """300 idle connections from one peer were all held (each can carry a capped body while it is read); now
    a peer address's connections past --max-connections-per-peer are closed as they open. The attacker
    connects from 127.0.0.9, so the coordinator's own processes (on 127.0.0.1) keep their share."""
    port = free_port()
    server = start_cli("fl-server", "start", "--insecure", "--port", str(port), "--task", "digits-cnn", "--rounds",
                       "1", "--min-clients", "2", "--run-dir", str(tmp_path / "run"), "--join-timeout", "600",
                       "--idle-timeout", "15", "--max-connections-per-peer", "4", log=tmp_path / "server.out")

    def connect() -> socket.socket:
        conn = socket.socket()
        conn.bind(("127.0.0.9", 0))
        conn.connect(("127.0.0.1", port))
        return conn

    try:
        wait_for_text(tmp_path / "server.out", "waiting for 2 site(s)", timeout=180)
        flood = [connect() for _ in range(12)]
        time.sleep(2.0)  # refused ones are closed as they open; held ones idle for 15 s
        held = [conn for conn in flood if not _closed_by_server(conn, time.monotonic() + 0.2)]
        assert len(held) == 4, f"{len(held)} of 12 connections from one peer held open"
        for conn in flood:
            conn.close()
        time.sleep(1.0)  # the server sees the four close: their share is free again
        again = connect()
        try:
            again.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            again.settimeout(10)
            assert again.recv(4096).startswith(b"HTTP/1.1 ")  # served
        finally:
            again.close()
        log = (tmp_path / "run" / "server.log").read_text(errors="replace")
        assert "127.0.0.9 holds 4 open connections (--max-connections-per-peer)" in log, log[-2000:]
    finally:
        stop_processes(server)




_FLOOD = """
import socket, sys, time
server, port, sources = sys.argv[1], int(sys.argv[2]), sys.argv[3].split(",")
conns = []
for i in range(14):
    conn = socket.socket(socket.AF_INET6)
    conn.bind((sources[i % len(sources)], 0))
    conn.connect((server, port))
    conns.append(conn)
time.sleep(2.0)  # refused ones are closed as they open; held ones idle for 15 s
held = 0
for conn in conns:
    conn.settimeout(0.2)
    try:
        held += conn.recv(1) != b""
    except socket.timeout:
        held += 1
    except OSError:
        pass
print(held)
"""


def test_an_ipv6_peer_cannot_multiply_its_share_with_the_addresses_of_its_network(tmp_path: Path) -> None:
    """An IPv6 host is routinely given a whole /64: counted per address, one peer opened 14 connections from
    seven addresses of its network to a coordinator that allows 4 per peer, and all 14 were held. Now a /64
    is one peer. The coordinator listens on an IPv6 address of its own (``--host``, which an IPv4-only port
    check refused as "already in use"), in a namespace the test makes."""
    reason = missing_requirement() or (None if Path("/proc/net/if_inet6").exists() else "this kernel has no IPv6")
    if reason:
        pytest.skip(reason)
    attacker = [f"fd00:bad::{i}" for i in range(2, 9)]
    with loopback_namespace("v", ["fd00:fed::1", *attacker]) as netns:
        port = free_port()
        log = tmp_path / "server.out"
        with open(log, "wb") as out:
            server = subprocess.Popen(
                ["ip", "netns", "exec", netns, str(BIN / "fl-server"), "start", "--insecure", "--host", "fd00:fed::1",
                 "--port", str(port), "--task", "digits-cnn", "--rounds", "1", "--min-clients", "2", "--run-dir",
                 str(tmp_path / "run"), "--join-timeout", "600", "--idle-timeout", "15",
                 "--max-connections-per-peer", "4"], env=cli_env(), stdout=out, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL)
        try:
            wait_for_text(log, "waiting for 2 site(s)", timeout=180)
            assert f"--server [fd00:fed::1]:{port} --insecure" in log.read_text()  # rich ate the brackets
            flood = subprocess.run(["ip", "netns", "exec", netns, sys.executable, "-c", _FLOOD, "fd00:fed::1",
                                    str(port), ",".join(attacker)], capture_output=True, text=True, timeout=120,
                                   check=True)
            assert int(flood.stdout.strip()) == 4, flood.stdout
            server_log = (tmp_path / "run" / "server.log").read_text(errors="replace")
            assert "fd00:bad::/64 holds 4 open connections (--max-connections-per-peer)" in server_log
        finally:
            stop_processes(server)
