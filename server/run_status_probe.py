"""A run's status from the SuperLink's Control API, asked from this process.

While a run goes on, ``fl-server start`` checks every 10 s whether the run still exists: a ServerApp that
dies before it can write its failure leaves ``results.json`` saying "running". Asking through Flower's
``flwr ls`` started a Python process per check, about 1.9 s of CPU for its imports: a fifth of a core
for the whole run, taken from the sites whenever they share the coordinator's host (a 20-site
federation on one 2-core machine showed it as bursts of 0.3-0.5 cores every check). Here one Control
API client is kept and each check is one ``ListRuns`` request, through Flower's own HTTP client, with the
federation's coordinator token (:mod:`fedshield.flower_ext.control_guard`) when there is one.
"""

from __future__ import annotations

import json
import ssl
import tomllib
from pathlib import Path

from flwr.cli.cli_account_auth_interceptor import CliAccountAuthHttpInterceptor
from flwr.common.serde import run_from_proto
from flwr.proto.control_pb2 import ListRunsRequest  # pylint: disable=E0611
from flwr.supercore.auth.typing import AccountAuthCredentials
from flwr.supercore.control import ControlHttpClient
from flwr.supercore.interceptors.http.runtime_version import RuntimeVersionHttpInterceptor

from fedshield.server.coordinator_flwr import _token_plugin
from fedshield.server.run_submission import CONNECTION, TOKEN_POINTER


def _no_refresh(refresh_token: str) -> AccountAuthCredentials:
    raise RuntimeError("the coordinator token is static; there is nothing to refresh")


class RunStatusProbe:
    """``probe(run_id)``: the run's status as ``flwr ls`` words it (``running``, ``finished:failed``, ...), or
    None when the SuperLink does not answer within ``timeout`` seconds or does not know the run."""

    def __init__(self, flwr_home: Path, timeout: float = 10.0) -> None:
        """``flwr_home``: the private ``$FLWR_HOME`` that ``write_flwr_home`` wrote (address, CA, token)."""
        conn = tomllib.loads((flwr_home / "config.toml").read_text())["superlink"][CONNECTION]
        pointer = json.loads((flwr_home / TOKEN_POINTER).read_text()).get("control-token-file")
        interceptors: list = [RuntimeVersionHttpInterceptor(component_name="fl-server")]
        if pointer:  # the same token plugin and Flower interceptor as `flwr` run by coordinator_flwr
            plugin = _token_plugin(Path(pointer).read_text(encoding="utf-8").strip())(str(conn["address"]))
            interceptors.append(CliAccountAuthHttpInterceptor(plugin, _no_refresh))
        insecure = bool(conn.get("insecure", False))
        scheme = "http" if insecure else "https"
        verify: bool | ssl.SSLContext = False if insecure else ssl.create_default_context(
            cafile=str(conn["root-certificates"]))
        self._client = ControlHttpClient(f"{scheme}://{conn['address']}", interceptors=interceptors, verify=verify,
                                         timeout=timeout)

    def __call__(self, run_id: int) -> str | None:
        try:
            response = self._client.ListRuns(ListRunsRequest(run_id=run_id))
        except Exception:  # noqa: BLE001  a busy or restarting SuperLink: unknown, the caller asks again
            return None
        for proto in response.run_dict.values():
            status = run_from_proto(proto).status
            return f"{status.status}:{status.sub_status}" if status.sub_status else status.status
        return None

    def close(self) -> None:
        self._client.close()
