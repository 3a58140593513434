"""`fl-server start`'s run-status check against a real, guarded SuperLink over TLS (server/run_status_probe.py)."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest

from fedshield.common.run_config import RunConfig
from fedshield.server.federation import init_federation
from fedshield.server.run_status_probe import RunStatusProbe
from fedshield.server.run_submission import TOKEN_POINTER, submit, write_app, write_flwr_home
from fedshield.server.superlink import SuperLink, TlsFiles


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.slow
def test_the_coordinator_reads_its_runs_status_in_process_and_nobody_else_can(tmp_path: Path) -> None:
    port = _free_port()
    fed = init_federation(tmp_path / "fed", name="probe", server_names=["localhost"], server_ips=["127.0.0.1"],
                          port=port, sites=["hospital_a"])
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    superlink = SuperLink(host="127.0.0.1", port=port, state_db=None, log_path=run_dir / "server.log",
                          tls=TlsFiles(fed.ca_cert, fed.server_cert, fed.server_key), enable_node_auth=True,
                          control_token=fed.control_token, fleet_ready_file=run_dir / ".fleet-ready")
    superlink.start()
    try:
        home = write_flwr_home(run_dir / ".flwr", f"127.0.0.1:{port}", root_certificates=fed.ca_cert,
                               control_token=fed.control_token)
        cfg = RunConfig(task="digits-cnn", rounds=1, min_clients=1, run_dir=str(run_dir)).validate()
        run_id = submit(write_app(run_dir / "app", cfg, {"join-timeout": 60}), home)
        probe = RunStatusProbe(home)
        try:
            assert probe(run_id) in {"pending", "starting", "running"}  # what `flwr ls` would say
            assert probe(run_id + 1) is None  # a run the SuperLink does not know
        finally:
            probe.close()
        # the same connection without the coordinator's token: the control guard refuses it
        stranger = tmp_path / "stranger"
        stranger.mkdir()
        (stranger / "config.toml").write_text((home / "config.toml").read_text())
        (stranger / TOKEN_POINTER).write_text(json.dumps({"control-token-file": None}))
        outsider = RunStatusProbe(stranger)
        try:
            assert outsider(run_id) is None
        finally:
            outsider.close()
    finally:
        superlink.stop()
    after = RunStatusProbe(home, timeout=2.0)
    try:
        assert after(run_id) is None  # the SuperLink is gone: unknown, not an exception
    finally:
        after.close()
