"""The SuperLink process: ``python -m fedshield.flower_ext.superlink_main <flower-superlink arguments>``.

Flower's own ``flower-superlink``, adapted first (:func:`fedshield.flower_ext.superlink.install`): with
``$FEDSHIELD_CONTROL_TOKEN_FILE`` the control guard (and ``$FEDSHIELD_FLEET_READY_FILE`` holds sites off
until the coordinator has registered them), the network limits (``$FEDSHIELD_MAX_MESSAGE_BYTES``,
``$FEDSHIELD_IDLE_TIMEOUT_S``, defaults without them), long polls, scoped middleware and the ServerApp's start
window; and it ends when ``fl-server start`` is gone (``$FEDSHIELD_PARENT_PID``).
``server/superlink.py`` starts it.
"""

from __future__ import annotations

import os

from fedshield.flower_ext.process_entry import exit_with_parent_from_env, run_process


def _install() -> None:
    from fedshield.flower_ext import superlink
    from fedshield.flower_ext.control_guard import LISTEN_HOST_ENV, READY_ENV, TOKEN_ENV, read_token
    from fedshield.flower_ext.network_limits import NetworkLimits

    token_file = os.environ.get(TOKEN_ENV)
    superlink.install(read_token(token_file) if token_file else None, os.environ.get(READY_ENV) or None,
                      limits=NetworkLimits.from_env(), listen_host=os.environ.get(LISTEN_HOST_ENV) or None)
    exit_with_parent_from_env()


def _flower_superlink() -> None:
    from flwr.superlink.cli import flower_superlink

    flower_superlink()


def main() -> None:
    """``python -m fedshield.flower_ext.superlink_main``: Flower's SuperLink, adapted and guarded."""
    run_process(_install, _flower_superlink)


if __name__ == "__main__":
    main()
