"""The coordinator's SuperExec process: ``python -m fedshield.flower_ext.superexec_main <flower-superexec arguments>``.

Flower's own ``flower-superexec``, adapted first (:func:`fedshield.flower_ext.superexec.install`: each ServerApp
gets its task token on stdin, not on its command line). It must be given ``--superexec-auth-secret-file``,
the secret the SuperLink checks on every ``AcquireTask``; without it the process refuses to start.
``server/superlink.py`` starts it beside a SuperLink in Flower's ``process`` isolation.
"""

from __future__ import annotations

import sys

from fedshield.common.errors import ConfigError
from fedshield.flower_ext.process_entry import run_process

SECRET_FLAG = "--superexec-auth-secret-file"


def _install() -> None:
    from fedshield.flower_ext import superexec

    if not any(arg == SECRET_FLAG or arg.startswith(f"{SECRET_FLAG}=") for arg in sys.argv[1:]):
        raise ConfigError(f"the SuperExec needs {SECRET_FLAG} (the secret its SuperLink checks); "
                          "start it through fl-server start")
    superexec.install()


def _flower_superexec() -> None:
    from flwr.supercore.cli import flower_superexec

    flower_superexec()


def main() -> None:
    """``python -m fedshield.flower_ext.superexec_main``: Flower's SuperExec, its tasks' tokens off command lines."""
    run_process(_install, _flower_superexec)


if __name__ == "__main__":
    main()
