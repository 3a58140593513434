"""Loopback/network helpers: free ports, port checks, reachability with a bounded wait."""

from __future__ import annotations

import ipaddress
import random
import socket
import time
from pathlib import Path

EPHEMERAL_RANGE_FILE = Path("/proc/sys/net/ipv4/ip_local_port_range")
LOWEST_CHOSEN_PORT = 15000


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free on ``host`` right now, below the kernel's ephemeral range where it can be.

    ``bind(0)`` hands out a port of the ephemeral range, the range the kernel also gives outgoing
    connections. Between choosing a port and a starting process binding it (seconds) another process's
    connection can take it: with 20 sites on one host, a SuperNode's local API once lost its port that
    way ("address already in use") and the site stopped. Below the range only listeners compete.
    """
    low = _ephemeral_low()
    if low is not None and low - LOWEST_CHOSEN_PORT >= 1000:
        for _ in range(100):
            port = random.randrange(LOWEST_CHOSEN_PORT, low)
            if not port_in_use(host, port):
                return port
    with socket.socket(address_family(host), socket.SOCK_STREAM) as sock:
        sock.bind((host.strip("[]"), 0))
        return int(sock.getsockname()[1])


def _ephemeral_low() -> int | None:
    """The first port of Linux's ephemeral range, or None where it cannot be read."""
    try:
        return int(EPHEMERAL_RANGE_FILE.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def address_family(host: str) -> socket.AddressFamily:
    """``AF_INET6`` for an IPv6 literal (bracketed or not), else ``AF_INET``: an IPv4 socket cannot bind an
    IPv6 address, and ``fl-server start --host fd00::1`` was refused as "port already in use"."""
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def port_in_use(host: str, port: int, *, listeners_only: bool = False) -> bool:
    """True when something already listens on ``host:port`` (or binding is refused).

    ``listeners_only``: connections a stopped server left in TIME_WAIT (up to a minute after a coordinator
    was killed) do not count, as for a server that binds with ``SO_REUSEADDR`` (uvicorn and gRPC do).
    """
    with socket.socket(address_family(host), socket.SOCK_STREAM) as sock:
        if listeners_only:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host.strip("[]"), port))
        except OSError:
            return True
    return False


def split_address(address: str, *, flag: str) -> tuple[str, int]:
    """``host:port`` -> (host, port); raise a one-line error naming ``flag`` otherwise."""
    from fedshield.common.errors import ConfigError

    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"{flag} {address!r}: expected HOST:PORT, e.g. 127.0.0.1:9092")
    return host.strip("[]"), int(port)


def wait_reachable(host: str, port: int, timeout: float) -> bool:
    """Try TCP connects until one succeeds or ``timeout`` seconds pass."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection((host, port), timeout=2.0):
                return True
        except OSError:
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.3)


#: addresses that mean "every interface": a process on this host reaches such a listener on loopback
EVERY_INTERFACE = ("0.0.0.0", "::", "")


def dial_host(listen_host: str) -> str:
    """The address this host's own processes dial to reach a listener on ``listen_host``: that address, or
    127.0.0.1 for an every-interface listener."""
    return "127.0.0.1" if listen_host in EVERY_INTERFACE else listen_host


def is_ip(host: str) -> bool:
    """Whether ``host`` is an IP address literal (not a DNS name)."""
    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    return True


def join_address(host: str, port: int) -> str:
    """``HOST:PORT``, an IPv6 literal in brackets."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
