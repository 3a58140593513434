"""The examples a coordinator holds and trusts (``--trusted-data``), read and checked like a site's folder.

Checked when ``fl-server start`` or ``fl-sim run`` plans a run (a one-line error before anything starts) and
read again by the ServerApp (:mod:`fedshield.server.trusted_reference`), which trains on them each round.
"""

from __future__ import annotations

from pathlib import Path

from fedshield.common.errors import DataError
from fedshield.common.run_config import RunConfig
from fedshield.tasks.base import SiteData, Task
from fedshield.tasks.site_config import site_options

FLAG = "--trusted-data"


def load_trusted_data(task: Task, folder: Path, *, seed: int, model: str) -> SiteData:
    """The trusted examples: ``folder`` read by the task's own site loader (every check a site's folder
    gets). ``DataError`` naming ``--trusted-data`` when it does not load."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"{FLAG} {folder}: no such folder; pass a folder in the task's site format (as for "
                        "fl-client join --data)")
    _, options = site_options(folder, {"seed": seed})
    options.model = model
    try:
        return task.load_site(folder, options)
    except DataError as exc:
        raise DataError(f"{FLAG}: {exc}") from None


def trusted_learning_rate(task: Task) -> float:
    """The task's step size without DP: the coordinator's examples are its own, their gradients unclipped."""
    task_lr = getattr(task, "default_lr", None)
    return float(task_lr(False)) if callable(task_lr) else RunConfig.default_lr(False)
