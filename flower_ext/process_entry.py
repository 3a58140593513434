"""What every FedShield entry point into a Flower process does: quiet, adapt, hand over.

The ``*_main`` modules of this package are the processes FedShield starts with ``python -m``. Each
``main()`` is :func:`run_process`: no phone-home, the door's ``install()`` for that process, then Flower's
own entry point (or, for the warm executor, its loop). A FedShield error on the way (another Flower, a
missing hook, a guard that is not active) ends the process with one line on stderr and a non-zero exit.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable

from fedshield.common.errors import FedShieldError
from fedshield.common.flower_env import PARENT_PID_ENV, silence_flower


def run_process(install: Callable[[], None], hand_over: Callable[[], None]) -> None:
    """``install()`` then ``hand_over()``; a :class:`FedShieldError` from either is one line and exit code."""
    silence_flower()
    try:
        install()
        hand_over()
    except FedShieldError as exc:
        print(f"FedShield: {exc}", file=sys.stderr, flush=True)
        raise SystemExit(exc.exit_code) from None


def exit_with_parent_from_env() -> None:
    """In a Flower entry point: end (Flower's graceful SIGINT path) when ``$FEDSHIELD_PARENT_PID`` is gone,
    even if that parent was killed with SIGKILL, so a CLI never leaves a port or a retry loop behind."""
    if parent := os.environ.get(PARENT_PID_ENV):
        from flwr.supercore.app_utils import start_parent_process_monitor

        start_parent_process_monitor(int(parent))
