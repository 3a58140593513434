"""Flower's ``flwr`` CLI as the coordinator runs it (``python -m fedshield.flower_ext.flower_cli_main ARGS``).

The CLI is adapted first (:func:`fedshield.flower_ext.flower_cli.install`: the coordinator's token on every
Control API call), then Flower's own ``flwr`` runs with ``ARGS``. One extra command,
``fedshield-register-sites CONNECTION NAME=KEYFILE ...``, registers several sites' keys at once and prints
``{name: node_id}`` as JSON. ``server/run_submission.py`` starts it.
"""

from __future__ import annotations

import json
import sys

from fedshield.flower_ext.process_entry import run_process


def _install() -> None:
    from fedshield.flower_ext import flower_cli

    flower_cli.install()


def _flwr() -> None:
    if sys.argv[1:2] == ["fedshield-register-sites"]:
        from fedshield.flower_ext.flower_cli import register_sites

        _, _, connection, *pairs = sys.argv
        keys = dict(pair.split("=", 1) for pair in pairs)
        print(json.dumps(register_sites(connection, keys)))
        return
    from flwr.cli.app import app

    app()


def main() -> None:
    """``python -m fedshield.flower_ext.flower_cli_main``: Flower's ``flwr`` CLI with the coordinator's token."""
    run_process(_install, _flwr)


if __name__ == "__main__":
    main()
