"""Submit the FedShield app to our SuperLink as a Flower run, and read its status.

The submitted app (a FAB) holds only a ``pyproject.toml`` that names FedShield's installed ServerApp
and ClientApp and carries the run config; no code travels. Sites resolve the components from their
own installed FedShield. Flower's CLI reads connections from ``$FLWR_HOME/config.toml``; we give it a
private ``FLWR_HOME`` inside the run folder so a user's own Flower settings are never touched.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from fedshield.common.atomic_io import atomic_write_text
from fedshield.common.errors import FedShieldError
from fedshield.common.flower_env import child_env, flower_executable
from fedshield.common.run_config import RunConfig
from fedshield.flower_ext.control_guard import TOKEN_ENV

CONNECTION = "fedshield"
TOKEN_POINTER = "fedshield.json"


class SubmissionError(FedShieldError):
    """``flwr run`` did not accept the run."""


def write_app(app_dir: Path, cfg: RunConfig, extra_config: dict[str, Any]) -> Path:
    """Write the app folder ``flwr run`` bundles: pyproject with components and run config."""
    body = cfg.to_toml()
    for key, value in extra_config.items():
        body += f"{key} = {json.dumps(value)}\n"
    text = (
        "[build-system]\n"
        'requires = ["hatchling"]\n'
        'build-backend = "hatchling.build"\n\n'
        "[project]\n"
        'name = "fedshield-run"\n'
        'version = "1.0.0"\n'
        'description = "FedShield run: components resolved from each side\'s installed fedshield"\n'
        "dependencies = []\n\n"
        "[tool.flwr.app]\n"
        'publisher = "fedshield"\n\n'
        "[tool.flwr.app.components]\n"
        'serverapp = "fedshield.server.server_app:app"\n'
        'clientapp = "fedshield.client.client_app:app"\n\n'
        "[tool.flwr.app.config]\n" + body
    )
    atomic_write_text(app_dir / "pyproject.toml", text)
    return app_dir


def write_flwr_home(flwr_home: Path, address: str, *, root_certificates: Path | None,
                    control_token: Path | None = None) -> Path:
    """A private ``$FLWR_HOME/config.toml`` with one connection, ``fedshield``, to our SuperLink.

    ``control_token``: the federation's coordinator token file, presented on every Control API call
    (:mod:`fedshield.flower_ext.flower_cli`); remembered in ``$FLWR_HOME/fedshield.json``.
    """
    atomic_write_text(flwr_home / TOKEN_POINTER,
                      json.dumps({"control-token-file": str(control_token) if control_token else None}) + "\n",
                      mode=0o600)
    lines = [f"[superlink.{CONNECTION}]", f'address = "{address}"']
    if root_certificates is None:
        lines.append("insecure = true")
    else:
        lines.append(f'root-certificates = "{root_certificates}"')
    atomic_write_text(flwr_home / "config.toml", "\n".join(lines) + "\n", mode=0o600)
    return flwr_home


def _flwr(args: list[str], flwr_home: Path, timeout: float) -> subprocess.CompletedProcess[str]:
    """Flower's ``flwr`` CLI against our private FLWR_HOME, with the coordinator token when there is one."""
    env = {"FLWR_HOME": str(flwr_home)}
    try:
        token_file = json.loads((flwr_home / TOKEN_POINTER).read_text()).get("control-token-file")
    except (OSError, ValueError):
        token_file = None
    if token_file:
        env[TOKEN_ENV] = token_file
        cmd = [sys.executable, "-m", "fedshield.flower_ext.flower_cli_main", *args]
    else:
        cmd = [flower_executable("flwr"), *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=child_env(env),
                          stdin=subprocess.DEVNULL, check=False)


def _last_line(proc: subprocess.CompletedProcess[str]) -> str:
    """The last line a failed ``flwr`` call printed (stderr first), for a one-line error."""
    return ((proc.stderr or proc.stdout).strip().splitlines() or ["no output"])[-1]


def register_sites(public_keys: dict[str, Path], flwr_home: Path, timeout: float = 120.0) -> dict[str, int]:
    """Allow the sites holding these keys (Flower's SuperNode authentication); return their node ids."""
    proc = _flwr(["fedshield-register-sites", CONNECTION, *(f"{n}={p}" for n, p in public_keys.items())],
                 flwr_home, timeout)
    try:
        out = json.loads(proc.stdout.strip().splitlines()[-1])
    except (json.JSONDecodeError, IndexError):
        out = None
    if proc.returncode != 0 or not isinstance(out, dict):
        raise SubmissionError(f"registering the enrolled sites with the SuperLink failed: {_last_line(proc)}")
    return {str(k): int(v) for k, v in out.items()}


def unregister_site(node_id: int, flwr_home: Path, timeout: float = 60.0) -> None:
    """``flwr supernode unregister NODE_ID``: the running SuperLink stops accepting that site's key."""
    proc = _flwr(["supernode", "unregister", str(node_id), CONNECTION, "--format", "json"], flwr_home, timeout)
    try:
        ok = bool(json.loads(proc.stdout).get("success", False))
    except (json.JSONDecodeError, AttributeError):
        ok = False
    if proc.returncode != 0 or not ok:
        raise SubmissionError(f"unregistering node {node_id} from the running SuperLink failed: {_last_line(proc)}")


def submit(app_dir: Path, flwr_home: Path, timeout: float = 120.0) -> int:
    """``flwr run APP fedshield --format json``; return the run id."""
    proc = _flwr(["run", str(app_dir), CONNECTION, "--format", "json"], flwr_home, timeout)
    try:
        out = json.loads(proc.stdout)
    except json.JSONDecodeError:
        out = {}
    if proc.returncode != 0 or not out.get("success", True) or "run-id" not in out:
        raise SubmissionError(f"flwr run refused the run: {out.get('error-message') or _last_line(proc)}")
    return int(out["run-id"])
