"""Hosts for multi-host tests: Linux network namespaces joined by a router namespace (test harness only).

A ``NetnsLab`` makes one router namespace and, per host, a namespace with its own address on a /24 of
10.231.0.0/16 reached through a veth pair to the router (``10.231.N.2`` the host, ``10.231.N.1`` the router,
which forwards between them). The addresses exist only inside the namespaces the lab creates; nothing is
connected to the machine's own network namespace, so two labs (two tests, two pytest workers) may use the
same addresses side by side. Names carry the creating process's pid (``fsn<pid><tag>...``): ``sweep_stale``
deletes the namespaces of processes that died without cleaning up, and ``close`` ends every process still
running inside the lab's namespaces (by pid, as ``ip netns pids`` lists them) before deleting them.

Needs root, ``ip`` (iproute2) and ``iptables``; ``missing_requirement`` says what is missing.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

PREFIX = "fsn"
ETC_NETNS = Path("/etc/netns")  # `ip netns exec NS` bind-mounts /etc/netns/NS/hosts over /etc/hosts


def missing_requirement() -> str | None:
    """Why this machine cannot run a lab (a skip reason), or None."""
    if os.geteuid() != 0:
        return "network namespaces need root (run the suite as root, as CI does)"
    for tool in ("ip", "iptables"):
        if shutil.which(tool) is None:
            return f"`{tool}` is not installed (apt-get install {'iproute2' if tool == 'ip' else tool})"
    return None


def _sh(*argv: str) -> str:
    proc = subprocess.run(argv, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: {proc.stderr.strip() or proc.stdout.strip()}")
    return proc.stdout


def _pids_in(netns: str) -> list[int]:
    proc = subprocess.run(["ip", "netns", "pids", netns], capture_output=True, text=True, check=False)
    return [int(p) for p in proc.stdout.split()]


def _delete_netns(*names: str) -> None:
    """End the processes inside the namespaces ``names`` (TERM, KILL after 10 s), then delete them and their
    /etc/netns folders."""
    pids = [pid for netns in names for pid in _pids_in(netns)]
    for pid in pids:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + 10
    while pids and time.monotonic() < deadline:
        time.sleep(0.2)
        pids = [pid for netns in names for pid in _pids_in(netns)]
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    for netns in names:
        subprocess.run(["ip", "netns", "del", netns], capture_output=True, check=False)
        shutil.rmtree(ETC_NETNS / netns, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def sweep_stale() -> list[str]:
    """Delete the lab namespaces whose creating process is gone; returns their names."""
    proc = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=False)
    stale = []
    for line in proc.stdout.splitlines():
        name = line.split()[0] if line.split() else ""
        match = re.fullmatch(rf"{PREFIX}(\d+)[a-z].*", name)
        if match and not _alive(int(match.group(1))):
            _delete_netns(name)
            stale.append(name)
    return stale


_LISTEN = ("import socket, sys; s = socket.create_server((sys.argv[1], int(sys.argv[2]))); "
           "print('listening', flush=True)\nwhile True: s.accept()[0].close()")
_DIAL = "import socket, sys; socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=float(sys.argv[3]))"


@dataclass(frozen=True)
class Host:
    """One namespace with one address; ``link`` is its veth's name in the router namespace."""

    role: str
    netns: str
    address: str
    link: str

    def argv(self, *command: str) -> list[str]:
        """``command`` run inside this host's namespace."""
        return ["ip", "netns", "exec", self.netns, *command]

    def listen(self, port: int) -> subprocess.Popen[bytes]:
        """A TCP listener on this host's address and ``port`` (accepts until ended); returns once it listens."""
        proc = subprocess.Popen(self.argv(sys.executable, "-c", _LISTEN, self.address, str(port)),
                                stdout=subprocess.PIPE)
        assert proc.stdout is not None and proc.stdout.readline().strip() == b"listening"
        return proc

    def can_dial(self, address: str, port: int, timeout: float = 3.0) -> bool:
        """Whether a TCP connection from this host to ``address:port`` opens within ``timeout`` s."""
        return subprocess.run(self.argv(sys.executable, "-c", _DIAL, address, str(port), str(timeout)),
                              capture_output=True, check=False, timeout=timeout + 30).returncode == 0


@dataclass
class NetnsLab:
    """A router namespace and hosts around it; ``tag`` (a letter or two) keeps one process's labs apart."""

    tag: str
    hosts: dict[str, Host] = field(default_factory=dict)

    def __post_init__(self) -> None:
        sweep_stale()
        self.base = f"{PREFIX}{os.getpid()}{self.tag}"
        self.router = f"{self.base}r"
        self.made = [self.router]  # every namespace made so far, deleted by close() even after a failed step
        _sh("ip", "netns", "add", self.router)
        self._in_router("ip", "link", "set", "lo", "up")
        self._in_router("sysctl", "-qw", "net.ipv4.ip_forward=1")

    def _in_router(self, *argv: str) -> str:
        return _sh("ip", "netns", "exec", self.router, *argv)

    def add_host(self, role: str) -> Host:
        """A new namespace ``role`` at 10.231.N.2/24, routed through the router (10.231.N.1)."""
        index = len(self.hosts)
        netns, link = f"{self.base}h{index}", f"h{index}"
        _sh("ip", "netns", "add", netns)
        self.made.append(netns)
        _sh("ip", "-n", self.router, "link", "add", link, "type", "veth", "peer", "name", "eth0", "netns", netns)
        _sh("ip", "-n", self.router, "addr", "add", f"10.231.{index}.1/24", "dev", link)
        _sh("ip", "-n", self.router, "link", "set", link, "up")
        for args in (("addr", "add", f"10.231.{index}.2/24", "dev", "eth0"), ("link", "set", "eth0", "up"),
                     ("link", "set", "lo", "up"), ("route", "add", "default", "via", f"10.231.{index}.1")):
            _sh("ip", "-n", netns, *args)
        host = Host(role, netns, f"10.231.{index}.2", link)
        self.hosts[role] = host
        return host

    def admit_only(self, host: Host, tcp_port: int | None) -> None:
        """Firewall ``host``: inbound only loopback, replies to its own connections and, if given, ``tcp_port``."""
        rules = [["-P", "INPUT", "DROP"], ["-A", "INPUT", "-i", "lo", "-j", "ACCEPT"],
                 ["-A", "INPUT", "-m", "conntrack", "--ctstate", "ESTABLISHED,RELATED", "-j", "ACCEPT"]]
        if tcp_port is not None:
            rules.append(["-A", "INPUT", "-p", "tcp", "--dport", str(tcp_port), "-j", "ACCEPT"])
        for rule in rules:
            _sh(*host.argv("iptables", *rule))

    def divert(self, source: Host, target: Host, port: int, relay_port: int) -> None:
        """In the router, hand ``source``'s TCP connections to ``target:port`` to a relay on ``relay_port``."""
        self._in_router("iptables", "-t", "nat", "-A", "PREROUTING", "-i", source.link, "-p", "tcp", "-d",
                        target.address, "--dport", str(port), "-j", "REDIRECT", "--to-ports", str(relay_port))

    def name_hosts(self, host: Host, names: dict[str, str]) -> None:
        """``/etc/hosts`` inside ``host``'s namespace: ``names`` (name -> address) besides localhost."""
        folder = ETC_NETNS / host.netns
        folder.mkdir(parents=True, exist_ok=True)
        lines = ["127.0.0.1 localhost", *(f"{addr} {name}" for name, addr in names.items())]
        (folder / "hosts").write_text("\n".join(lines) + "\n")

    def router_argv(self, *command: str) -> list[str]:
        """``command`` run inside the router namespace."""
        return ["ip", "netns", "exec", self.router, *command]

    def close(self) -> None:
        """End every process inside the lab's namespaces and delete them."""
        _delete_netns(*self.made)
        self.made.clear()
        self.hosts.clear()


@contextmanager
def loopback_namespace(tag: str, addresses: list[str]) -> Iterator[str]:
    """One namespace whose loopback carries ``addresses`` (IPv6 or IPv4 literals, each on its own), for a
    server and its peers on one "host" with many addresses; yields its name. Deleted afterwards, with every
    process still running in it."""
    name = f"{PREFIX}{os.getpid()}{tag}"
    sweep_stale()
    _delete_netns(name)  # a leftover of this process's earlier try
    try:
        _sh("ip", "netns", "add", name)
        _sh("ip", "-n", name, "link", "set", "lo", "up")
        for address in addresses:
            family = ["-6"] if ":" in address else []
            _sh("ip", "-n", name, *family, "addr", "add", f"{address}/{128 if family else 32}", "dev", "lo",
                *(["nodad"] if family else []))
        yield name
    finally:
        _delete_netns(name)
