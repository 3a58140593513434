"""A whole federation connects to nothing but its own loopback addresses.

Every Python process FedShield starts (fl-server, SuperLink, SuperExec, ServerApp, flwr CLI,
fl-client, SuperNode, ClientApp) records each outgoing connection and name lookup through a
test-only sitecustomize; the test then asserts that every one went to loopback or a local socket.
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
from pathlib import Path

import pytest

from conftest import BIN, cli_env
from fedshield.common.net import free_port

pytestmark = pytest.mark.slow
AUDIT = Path(__file__).parent / "netaudit"
LOCAL_NAMES = {"127.0.0.1", "localhost", "::1", "0.0.0.0", ""}


def _is_local(target: str) -> bool:
    value = ast.literal_eval(target)
    if isinstance(value, (str, bytes)):  # AF_UNIX path, or a host name being resolved
        host = value.decode() if isinstance(value, bytes) else value
        return host in LOCAL_NAMES or host.startswith("/") or host.startswith("127.")
    if value is None:
        return True
    host = value[0]
    return host in LOCAL_NAMES or str(host).startswith("127.")


def test_federation_talks_only_to_loopback(tmp_path: Path, digits_sites: Path) -> None:
    log = tmp_path / "connections.jsonl"
    env = cli_env()
    env.update({"FEDSHIELD_NETAUDIT_LOG": str(log),
                "PYTHONPATH": os.pathsep.join([str(AUDIT), env.get("PYTHONPATH", "")])})
    port = free_port()

    def start(args: list[str], name: str) -> subprocess.Popen[bytes]:
        out = open(tmp_path / f"{name}.out", "wb")  # noqa: SIM115 - the child process owns it
        return subprocess.Popen([str(BIN / args[0]), *args[1:]], env=env, stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL)

    server = start(["fl-server", "start", "--rounds", "1", "--min-clients", "2", "--insecure", "--port", str(port),
                    "--run-dir", str(tmp_path / "run"), "--join-timeout", "300"], "server")
    sites = [start(["fl-client", "join", "--data", str(digits_sites / s), "--server", f"127.0.0.1:{port}",
                    "--insecure", "--threads", "1", "--state-dir", str(tmp_path / f"st-{s}"),
                    "--connect-timeout", "120"], s) for s in ("hospital_a", "hospital_b")]
    try:
        assert server.wait(timeout=600) == 0, (tmp_path / "server.out").read_text()[-2000:]
        for proc in sites:
            assert proc.wait(timeout=60) == 0
    finally:
        for proc in (server, *sites):
            if proc.poll() is None:
                proc.kill()
    records = [json.loads(line) for line in log.read_text().splitlines()]
    programs = {Path(r["argv"][0]).name for r in records}
    # the audit saw the whole process tree, not just the CLIs (the SuperLink only listens)
    for part in ("fl-server", "fl-client", "superexec_main", "serverapp_main", "app_executor", "supernode", "flwr"):
        assert any(part in p for p in programs), (part, programs)
    outside = [r for r in records if not _is_local(r["target"])]
    assert outside == [], outside[:5]
