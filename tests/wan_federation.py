"""A federation across namespaces: a coordinator host, site hosts and the WAN relay between them (test harness).

Shared by tests/test_e2e_multi_host.py and benchmarks/wan_rounds.py. The coordinator's firewall admits only
the federation port, the sites' firewalls nothing inbound; the router hands the sites' connections to the
coordinator's port to tests/wan_relay.py, which delays and loses what passes. Sites resolve
``SERVER_NAME`` (in the certificate) and ``STRANGE_NAME`` (not in it) to the coordinator.
"""

from __future__ import annotations

import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from netns_hosts import Host, NetnsLab

BIN = Path(sys.executable).parent
PORT, RELAY_PORT = 9092, 19092
SERVER_NAME, STRANGE_NAME = "fl.fedshield.test", "coordinator.lan"
RELAY = Path(__file__).with_name("wan_relay.py")


def start_in(host: Host, *args: str, log: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    """Start a FedShield CLI inside ``host``'s namespace, output to ``log``."""
    with open(log, "wb") as fh:
        return subprocess.Popen(host.argv(str(BIN / args[0]), *args[1:]), env=env, stdout=fh,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)


@dataclass
class WanFederation:
    """Hosts, firewalls and relay of one federation; ``work`` holds its folders and logs."""

    lab: NetnsLab
    work: Path
    sites: tuple[str, ...]
    env: dict[str, str]

    def __post_init__(self) -> None:
        self.coordinator = self.lab.add_host("coordinator")
        self.hosts = {name: self.lab.add_host(name) for name in self.sites}
        self.lab.admit_only(self.coordinator, PORT)
        for host in self.hosts.values():
            self.lab.admit_only(host, None)
            self.lab.divert(host, self.coordinator, PORT, RELAY_PORT)
            self.lab.name_hosts(host, {SERVER_NAME: self.coordinator.address, STRANGE_NAME: self.coordinator.address})
        self.federation = self.work / "federation"
        self.relay_stats = self.work / "relay.json"
        self.relay: subprocess.Popen[bytes] | None = None

    def provision(self) -> subprocess.CompletedProcess[str]:
        """``fl-server init`` with the coordinator's name and namespace address as the certificate's SANs."""
        return subprocess.run([str(BIN / "fl-server"), "init", "--dir", str(self.federation), "--server-name",
                               SERVER_NAME, "--server-ip", self.coordinator.address, "--port", str(PORT), "--sites",
                               *self.sites], env=self.env, capture_output=True, text=True, check=False, timeout=120)

    def start_relay(self, *, delay_ms: float, loss: float, seed: int = 0) -> None:
        """The WAN relay in the router namespace; returns once it listens."""
        log = self.work / "relay.out"
        self.relay_stats.unlink(missing_ok=True)
        with open(log, "wb") as fh:
            self.relay = subprocess.Popen(
                self.lab.router_argv(str(BIN / "python"), str(RELAY), "--port", str(RELAY_PORT), "--upstream",
                                     f"{self.coordinator.address}:{PORT}", "--delay-ms", str(delay_ms), "--loss",
                                     str(loss), "--seed", str(seed), "--stats", str(self.relay_stats)),
                stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + 30
        while not self.relay_stats.exists():
            if self.relay.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the WAN relay did not start: {log.read_text()[-2000:]}")
            time.sleep(0.1)

    def start_server(self, run_dir: Path, *args: str) -> subprocess.Popen[bytes]:
        """``fl-server start --dir --host ADDRESS`` in the coordinator's namespace (``args``: run flags)."""
        return start_in(self.coordinator, "fl-server", "start", "--dir", str(self.federation), "--host",
                        self.coordinator.address, "--run-dir", str(run_dir), *args,
                        log=self.work / "server.out", env=self.env)

    def join(self, name: str, data: Path, *args: str, server: str = SERVER_NAME,
             log: Path | None = None) -> subprocess.Popen[bytes]:
        """``fl-client join --kit`` in site ``name``'s namespace, dialling ``server`` (``args``: site flags)."""
        return start_in(self.hosts[name], "fl-client", "join", "--kit", str(self.federation / "kits" / name),
                        "--data", str(data), "--server", f"{server}:{PORT}", *args,
                        log=log or self.work / f"{name}.out", env=self.env)

    def input_rules(self, host: Host) -> str:
        """``iptables -L INPUT -v`` inside ``host``: the policy, the rules and their packet counts."""
        return subprocess.run(host.argv("iptables", "-L", "INPUT", "-v", "-n", "-x"), capture_output=True,
                              text=True, check=True).stdout
