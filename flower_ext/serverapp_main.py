"""The ServerApp process: ``python -m fedshield.flower_ext.serverapp_main <flwr-serverapp arguments>``, its task
token on stdin.

FedShield's SuperExec (:mod:`fedshield.flower_ext.superexec`) starts it instead of ``flwr-serverapp --token
TOKEN``: the token arrives on a pipe (one line, at most :data:`MAX_TOKEN_CHARS` hex digits) and is handed to
Flower's own ``flwr-serverapp`` inside this process, so the kernel's copy of the command line
(``/proc/PID/cmdline``, what ``ps`` shows every local user) never holds it. The ServerApp's own adaptations
are installed by FedShield's ServerApp ``main`` (:mod:`fedshield.flower_ext.serverapp`).
"""

from __future__ import annotations

import re
import sys
from typing import BinaryIO

from fedshield.common.errors import ConfigError
from fedshield.flower_ext.process_entry import run_process

MAX_TOKEN_CHARS = 256
_TOKEN = re.compile(r"[0-9a-f]{16,256}")


def read_token(stream: BinaryIO) -> str:
    """The task token: the first line of ``stream``, hex digits only."""
    token = stream.readline(MAX_TOKEN_CHARS + 2).decode("ascii", errors="replace").strip()
    if not _TOKEN.fullmatch(token):
        raise ConfigError("the ServerApp expects its task token on stdin (one line of hex digits); "
                          "it is started by FedShield's SuperExec, not by hand")
    return token


def _install() -> None:
    from fedshield.flower_ext.version_check import check_flower_version

    check_flower_version("ServerApp")


def _flwr_serverapp() -> None:
    from flwr.superlink.cli import flwr_serverapp

    token = read_token(sys.stdin.buffer)
    # Only this process's copy of its arguments: /proc/PID/cmdline is the kernel's copy from exec, unchanged.
    sys.argv = [sys.argv[0], *sys.argv[1:], "--token", token]
    flwr_serverapp()


def main() -> None:
    """``python -m fedshield.flower_ext.serverapp_main``: Flower's ServerApp process, its token read from stdin."""
    run_process(_install, _flwr_serverapp)


if __name__ == "__main__":
    main()
