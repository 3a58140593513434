"""The coordinator's own client of the SuperLink's Control API, built from Flower's CLI parts.

``fl-server start`` asks the SuperLink about its run every 10 s (``server/run_status_probe.py``). Through
Flower's ``flwr ls`` each check was a Python process (about 1.9 s of CPU for its imports); here one
client is kept, with Flower's own HTTP client and interceptors, and the coordinator's token presented
the way :mod:`fedshield.flower_ext.flower_cli` presents it.
"""

from __future__ import annotations

import ssl
from pathlib import Path

from flwr.cli.cli_account_auth_interceptor import CliAccountAuthHttpInterceptor
from flwr.common.serde import run_from_proto
from flwr.proto.control_pb2 import ListRunsRequest  # pylint: disable=E0611
from flwr.supercore.auth.typing import AccountAuthCredentials
from flwr.supercore.control import ControlHttpClient
from flwr.supercore.interceptors.http.runtime_version import RuntimeVersionHttpInterceptor

from fedshield.flower_ext.flower_cli import token_plugin


def _no_refresh(refresh_token: str) -> AccountAuthCredentials:
    raise RuntimeError("the coordinator token is static; there is nothing to refresh")


class ControlApi:
    """One Control API connection to the SuperLink at ``address``: TLS with ``root_certificates`` (None:
    plain HTTP), the coordinator's ``token`` when there is one, ``timeout`` seconds per request."""

    def __init__(self, address: str, *, root_certificates: Path | None, token: str | None,
                 timeout: float = 10.0) -> None:
        interceptors: list = [RuntimeVersionHttpInterceptor(component_name="fl-server")]
        if token:
            interceptors.append(CliAccountAuthHttpInterceptor(token_plugin(token)(address), _no_refresh))
        scheme = "http" if root_certificates is None else "https"
        verify: bool | ssl.SSLContext = False if root_certificates is None else ssl.create_default_context(
            cafile=str(root_certificates))
        self._client = ControlHttpClient(f"{scheme}://{address}", interceptors=interceptors, verify=verify,
                                         timeout=timeout)

    def run_status(self, run_id: int) -> str | None:
        """The run's status as ``flwr ls`` words it (``running``, ``finished:failed``, ...); None when the
        SuperLink does not answer in time, refuses, or does not know the run."""
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
