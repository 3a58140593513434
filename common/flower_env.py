"""The environment every Flower process FedShield starts runs with.

Nothing phones home: Flower sends telemetry and checks for updates unless ``FLWR_TELEMETRY_ENABLED=0``
and ``FLWR_DISABLE_UPDATE_CHECK=1`` are set (``flower-supernode --help`` alone already tries), so both
are forced here, for our own process (:func:`silence_flower`, called before ``flwr`` is imported) and
for every child (:func:`child_env`). The SuperLink starts ``flower-superexec`` by name, so the bin
folder of the running interpreter is put first on ``PATH``.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

NO_PHONE_HOME: dict[str, str] = {
    "FLWR_TELEMETRY_ENABLED": "0",
    "FLWR_DISABLE_UPDATE_CHECK": "1",
    # Ray (simulation) must not report usage either.
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_DISABLE_DOCKER_CPU_WARNING": "1",
    # MLflow (--track mlflow:...) sends usage telemetry unless this is set (common/mlflow_tracker.py).
    "MLFLOW_DISABLE_TELEMETRY": "true",
}


# SuperExec polls for new app tasks every 1 s by default; Flower reads this variable (0.01-60 s).
# A shorter poll removes up to a second per message from every deployed round.
SUPEREXEC_POLL: dict[str, str] = {"FLWR_SUPEREXEC_TASK_POLL_INTERVAL": "0.1"}


def silence_flower() -> None:
    """Force the no-phone-home variables in this process (call before importing ``flwr``)."""
    os.environ.update(NO_PHONE_HOME)


def bin_dir() -> Path:
    """The folder holding this interpreter's console scripts (``flower-superlink`` and friends)."""
    return Path(sys.executable).parent


def child_env(extra: dict[str, str] | None = None, *, threads: int | None = None) -> dict[str, str]:
    """Environment for a Flower child process: ours, no phone-home, our ``bin`` first on PATH.

    Args:
        extra: further variables to set.
        threads: intra-op threads for torch/OpenMP in the child (``OMP_NUM_THREADS``); None keeps ours.
    """
    env = dict(os.environ)
    env.update(NO_PHONE_HOME)
    env.update(SUPEREXEC_POLL)
    env["PATH"] = os.pathsep.join([str(bin_dir()), env.get("PATH", "")])
    env.setdefault("PYTHONUNBUFFERED", "1")
    if threads is not None:
        env["OMP_NUM_THREADS"] = str(threads)
        env["MKL_NUM_THREADS"] = str(threads)
        env["FEDSHIELD_THREADS"] = str(threads)
    if extra:
        env.update(extra)
    return env


PARENT_PID_ENV = "FEDSHIELD_PARENT_PID"


def parent_env() -> dict[str, str]:
    """Variables that make a child started through our entry points end when this process is gone
    (:func:`fedshield.flower_ext.process_entry.exit_with_parent_from_env`)."""
    return {PARENT_PID_ENV: str(os.getpid())}


def flower_executable(name: str) -> str:
    """Absolute path of a Flower console script installed beside this interpreter."""
    path = bin_dir() / name
    return str(path) if path.exists() else name
