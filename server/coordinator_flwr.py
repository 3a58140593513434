"""Flower's ``flwr`` CLI, presenting the coordinator's Control API token (``python -m`` this module).

The SuperLink's Control API is guarded (:mod:`fedshield.flower_ext.control_guard`): it answers only requests
carrying the federation's coordinator token. Flower's CLI already sends an ``Authorization: Bearer``
header for whatever access token its account-auth plugin holds; this entry point gives it a plugin
that holds the token read from ``FEDSHIELD_CONTROL_TOKEN_FILE`` and then runs Flower's CLI unchanged.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from fedshield.common.flower_env import silence_flower
from fedshield.flower_ext.control_guard import TOKEN_ENV


def _token_plugin(token: str):  # type: ignore[no-untyped-def]
    from flwr.cli.auth_plugin.auth_plugin import CliAuthPlugin, LoginError
    from flwr.common.constant import ACCESS_TOKEN_KEY

    class CoordinatorToken(CliAuthPlugin):
        """A static access token: the coordinator's secret from the federation folder."""

        def __init__(self, host: str) -> None:
            self.host = host

        @staticmethod
        def login(login_details, control_client):  # type: ignore[no-untyped-def]
            raise LoginError("FedShield coordinators authenticate with the federation's control token")

        def store_tokens(self, credentials) -> None:  # type: ignore[no-untyped-def]
            return None

        def load_tokens(self) -> None:
            return None

        def write_tokens_to_metadata(self, metadata: Sequence[tuple[str, str | bytes]]):  # type: ignore[no-untyped-def]
            return [*metadata, (ACCESS_TOKEN_KEY, token)]

    return CoordinatorToken


def install() -> None:
    path = os.environ.get(TOKEN_ENV)
    if not path:
        return  # --insecure development runs: no guard, no token
    token = open(path, encoding="utf-8").read().strip()
    import flwr.cli.utils as cli_utils

    plugin = _token_plugin(token)
    cli_utils.load_cli_auth_plugin_from_connection = lambda host, authn_type=None: plugin(host)  # type: ignore[assignment]


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


def main() -> None:
    silence_flower()
    install()
    if sys.argv[1:2] == ["fedshield-register-sites"]:
        # fedshield-register-sites CONNECTION NAME=KEYFILE ...  -> JSON {name: node_id} on stdout
        _, _, connection, *pairs = sys.argv
        keys = dict(pair.split("=", 1) for pair in pairs)
        print(json.dumps(register_sites(connection, keys)))
        return
    from flwr.cli.app import app

    app()


if __name__ == "__main__":
    main()
