"""Flower's ``flwr`` CLI, presenting the coordinator's Control API token.

The SuperLink's Control API is guarded (:mod:`fedshield.flower_ext.control_guard`): it answers only requests
carrying the federation's coordinator token. Flower's CLI already sends an ``Authorization: Bearer``
header for whatever access token its account-auth plugin holds; :func:`install` gives it a plugin that
holds the token read from ``FEDSHIELD_CONTROL_TOKEN_FILE``, and Flower's CLI then runs unchanged
(:mod:`fedshield.flower_ext.flower_cli_main`). :func:`register_sites` is one more command the same process
offers: several sites' keys in one call.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from fedshield.flower_ext.control_guard import TOKEN_ENV, read_token
from fedshield.flower_ext.version_check import check_flower_version, rebinding_point


def token_plugin(token: str):
    """A Flower CLI account-auth plugin class whose access token is ``token`` (the coordinator's)."""
    from flwr.cli.auth_plugin.auth_plugin import CliAuthPlugin, LoginError
    from flwr.common.constant import ACCESS_TOKEN_KEY

    class CoordinatorToken(CliAuthPlugin):
        """A static access token: the coordinator's secret from the federation folder."""

        def __init__(self, host: str) -> None:
            self.host = host

        @staticmethod
        def login(login_details, control_client):
            raise LoginError("FedShield coordinators authenticate with the federation's control token")

        def store_tokens(self, credentials) -> None:
            return None

        def load_tokens(self) -> None:
            return None

        def write_tokens_to_metadata(self, metadata: Sequence[tuple[str, str | bytes]]):
            return [*metadata, (ACCESS_TOKEN_KEY, token)]

    return CoordinatorToken


def install() -> None:
    """In the ``flwr`` CLI's process: with ``$FEDSHIELD_CONTROL_TOKEN_FILE``, every Control API client the CLI
    makes presents the coordinator's token."""
    check_flower_version("flwr CLI")
    path = os.environ.get(TOKEN_ENV)
    if not path:
        return  # --insecure development runs: no guard, no token
    import flwr.cli.utils as cli_utils

    rebinding_point(cli_utils, "load_cli_auth_plugin_from_connection", "presents the coordinator's token")
    plugin = token_plugin(read_token(path))
    cli_utils.load_cli_auth_plugin_from_connection = lambda host, authn_type=None: plugin(host)


def register_sites(connection: str, keys: dict[str, str]) -> dict[str, int]:
    """Register several sites' OpenSSH public keys in one process (``flwr supernode register`` takes one
    key per ~2 s process start); the same Control API call, through Flower's own CLI client."""
    from flwr.cli.flower_config import read_superlink_connection
    from flwr.cli.supernode.register import try_load_public_key
    from flwr.cli.utils import init_http_client_from_connection
    from flwr.proto.control_pb2 import RegisterNodeRequest  # pylint: disable=E0611

    client = init_http_client_from_connection(read_superlink_connection(connection))
    try:
        out = {}
        for name, key_file in keys.items():
            response = client.RegisterNode(RegisterNodeRequest(public_key=try_load_public_key(Path(key_file)),
                                                               name=name))
            out[name] = int(response.node_id)
        return out
    finally:
        client.close()
