"""The site's warm ClientApp executor process (``python -m fedshield.flower_ext.app_executor_main``).

``fl-client join`` starts it beside the site's SuperNode (``client/supernode.py``): it adapts this process's
Flower (:func:`fedshield.flower_ext.app_executor.install`), then takes the SuperNode's ClientApp tasks, each
request signed with the secret in ``--superexec-auth-secret-file``, and runs them here until it is stopped or
the SuperNode (``--parent-pid``) is gone.
"""

from __future__ import annotations

import argparse
import logging
import signal
import threading

from fedshield.common.errors import ConfigError
from fedshield.flower_ext.process_entry import run_process


def _install() -> None:
    from fedshield.flower_ext import app_executor

    app_executor.install()


def _serve(args: argparse.Namespace) -> None:
    from flwr.supercore.auth import load_superexec_auth_secret

    from fedshield.flower_ext.app_executor import exit_with_parent, serve_until_stopped
    from fedshield.flower_ext.executor_wake import WakeWaiter

    try:
        secret = load_superexec_auth_secret(args.superexec_auth_secret_file)
    except ValueError as exc:
        raise ConfigError(f"--superexec-auth-secret-file: {exc}; it is created by fl-client join") from None

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    if args.parent_pid is not None:
        exit_with_parent(args.parent_pid)
    wake = WakeWaiter.from_fd(args.wake_fd) if args.wake_fd is not None else None
    serve_until_stopped(args.runtime_api_address, stop, wake, secret)


def main() -> None:
    """``python -m fedshield.flower_ext.app_executor_main``: the site's warm ClientApp executor."""
    parser = argparse.ArgumentParser(description="FedShield warm ClientApp executor for one SuperNode")
    parser.add_argument("--runtime-api-address", required=True)
    parser.add_argument("--parent-pid", type=int, default=None)
    parser.add_argument("--wake-fd", type=int, default=None,
                        help="inherited socket the SuperNode writes to when a message arrives")
    parser.add_argument("--superexec-auth-secret-file", required=True,
                        help="the secret the SuperNode was given (--superexec-auth-secret-file), signing task requests")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per poll otherwise
    run_process(_install, lambda: _serve(args))


if __name__ == "__main__":
    main()
