"""Give the ServerApp two minutes, not 30 s, from launch to its first call to the SuperLink.

When Flower 1.41 and 1.42's SuperExec claims the run's ServerApp task, the SuperLink's state gives the claim a
token that expires after ``HEARTBEAT_DEFAULT_INTERVAL`` (30 s) unless the ``flwr-serverapp`` process
it launched makes its first call by then; after that every call of the ServerApp is refused ("Runtime
task-token authentication failed") and the run fails. ``fl-server start`` submits the run at once, so
the ServerApp starts while the sites are starting too: with 20 sites joining on the same 2-core host
(``benchmarks/transport_overhead.py``, insecure, where no key registration delays the submission) the
ServerApp's first call came 37 s after the run was created and the federation failed, 3 times out of
about 8 such starts. On a coordinator of its own this does not happen, but a busy one is not wrong.

The same constant sets the window a running task has between heartbeats, as
``HEARTBEAT_PATIENCE × HEARTBEAT_DEFAULT_INTERVAL`` = 60 s. :func:`install` rebinds the two names in the
two Flower state modules (in memory and SQL) of the SuperLink process so that the start window is
:data:`START_WINDOW_S` and the running window stays 60 s: a ServerApp that dies is still noticed within
a minute. tests/test_task_start_window.py pins the three uses per module to the installed Flower.
"""

from __future__ import annotations

from importlib import import_module

from flwr.common.constant import HEARTBEAT_DEFAULT_INTERVAL, HEARTBEAT_PATIENCE

from fedshield.flower_ext.version_check import hook

START_WINDOW_S = 120
RUNNING_WINDOW_S = HEARTBEAT_PATIENCE * HEARTBEAT_DEFAULT_INTERVAL  # 60 s, Flower's
STATE_MODULES = ("flwr.supercore.corestate.in_memory_corestate", "flwr.supercore.corestate.sql_corestate")


def install() -> None:
    """In this (the SuperLink's) process: claimed tasks get START_WINDOW_S to start, running ones 60 s."""
    modules = [import_module(name) for name in STATE_MODULES]
    for module in modules:
        for constant in ("HEARTBEAT_DEFAULT_INTERVAL", "HEARTBEAT_PATIENCE"):
            hook(module, constant, "gives a starting ServerApp two minutes")
    for module in modules:
        module.HEARTBEAT_DEFAULT_INTERVAL = START_WINDOW_S  # type: ignore[attr-defined]  # the door rebinds Flower's constant
        module.HEARTBEAT_PATIENCE = RUNNING_WINDOW_S / START_WINDOW_S  # type: ignore[attr-defined]  # 0.5
