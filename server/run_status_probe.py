"""A run's status from the SuperLink's Control API, asked from this process.

While a run goes on, ``fl-server start`` checks every 10 s whether the run still exists: a ServerApp that
dies before it can write its failure leaves ``results.json`` saying "running". Asking through Flower's
``flwr ls`` started a Python process per check, about 1.9 s of CPU for its imports: a fifth of a core
for the whole run, taken from the sites whenever they share the coordinator's host (a 20-site
federation on one 2-core machine showed it as bursts of 0.3-0.5 cores every check). Here one Control
API client (:class:`fedshield.flower_ext.control_api.ControlApi`) is kept and each check is one
``ListRuns`` request, with the federation's coordinator token (:mod:`fedshield.flower_ext.control_guard`)
when there is one.
"""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

from fedshield.flower_ext.control_api import ControlApi
from fedshield.server.run_submission import CONNECTION, TOKEN_POINTER


class RunStatusProbe:
    """``probe(run_id)``: the run's status as ``flwr ls`` words it (``running``, ``finished:failed``, ...), or
    None when the SuperLink does not answer within ``timeout`` seconds or does not know the run."""

    def __init__(self, flwr_home: Path, timeout: float = 10.0) -> None:
        """``flwr_home``: the private ``$FLWR_HOME`` that ``write_flwr_home`` wrote (address, CA, token)."""
        conn = tomllib.loads((flwr_home / "config.toml").read_text())["superlink"][CONNECTION]
        pointer = json.loads((flwr_home / TOKEN_POINTER).read_text()).get("control-token-file")
        token = Path(pointer).read_text(encoding="utf-8").strip() if pointer else None
        root = None if bool(conn.get("insecure", False)) else Path(conn["root-certificates"])
        self._api = ControlApi(str(conn["address"]), root_certificates=root, token=token, timeout=timeout)

    def __call__(self, run_id: int) -> str | None:
        return self._api.run_status(run_id)

    def close(self) -> None:
        self._api.close()
