"""The SuperNode process: ``python -m fedshield.flower_ext.supernode_main <flower-supernode arguments>``.

Flower's own ``flower-supernode``, adapted first (:func:`fedshield.flower_ext.supernode.install`): short
idle polls, a wake-up for the site's warm executor (``$FEDSHIELD_WAKE_FD``), scoped middleware; and it
ends when ``fl-client join`` is gone (``$FEDSHIELD_PARENT_PID``). ``client/supernode.py`` starts it.
"""

from __future__ import annotations

from fedshield.flower_ext.process_entry import exit_with_parent_from_env, run_process


def _install() -> None:
    from fedshield.flower_ext import supernode

    supernode.install()
    exit_with_parent_from_env()


def _flower_supernode() -> None:
    from flwr.supernode.cli import flower_supernode

    flower_supernode()


def main() -> None:
    """``python -m fedshield.flower_ext.supernode_main``: Flower's SuperNode, adapted."""
    run_process(_install, _flower_supernode)


if __name__ == "__main__":
    main()
