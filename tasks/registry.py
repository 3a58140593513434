"""Task registry, fed by the entry-point group ``fedshield.tasks`` (built-in and third-party alike).

A plugin package declares ``[project.entry-points."fedshield.tasks"] my-task = "pkg.mod:MyTask"``;
the value is a class or factory called with no arguments. A plugin that fails to import is skipped
with a warning so it cannot break the other tasks.
"""

from __future__ import annotations

import functools
import logging
from importlib.metadata import entry_points
from typing import TYPE_CHECKING

from fedshield.common.errors import TaskNotFoundError

if TYPE_CHECKING:  # the protocol imports torch; check_task_name must not
    from fedshield.tasks.base import Task

GROUP = "fedshield.tasks"
log = logging.getLogger(__name__)


@functools.cache
def available_tasks() -> dict[str, Task]:
    """Every installed task, by name."""
    from fedshield.tasks.base import Task

    tasks: dict[str, Task] = {}
    for ep in entry_points(group=GROUP):
        try:
            task = ep.load()()
        except Exception as exc:  # a broken plugin must not hide the others
            log.warning("task plugin %s (%s) failed to load: %s", ep.name, ep.value, exc)
            continue
        if not isinstance(task, Task):
            log.warning("task plugin %s (%s) does not implement the Task protocol; skipped", ep.name, ep.value)
            continue
        tasks[ep.name] = task
    return tasks


def builtin_task_names() -> set[str]:
    """Names of the tasks FedShield itself ships (entry points that point into ``fedshield.tasks``)."""
    return {ep.name for ep in entry_points(group=GROUP) if ep.value.startswith("fedshield.tasks.")}


def check_task_name(name: str) -> None:
    """Fail fast on a task no entry point declares, without importing any task (torch takes seconds)."""
    declared = {ep.name for ep in entry_points(group=GROUP)}
    if name not in declared:
        raise TaskNotFoundError(f"unknown task {name!r}; installed tasks: {', '.join(sorted(declared)) or 'none'} "
                                "(list them with `fl-sim tasks`)")


def get_task(name: str) -> Task:
    """The task called ``name``, or a one-line error listing the installed ones."""
    tasks = available_tasks()
    try:
        return tasks[name]
    except KeyError:
        installed = ", ".join(sorted(tasks)) or "none"
        raise TaskNotFoundError(f"unknown task {name!r}; installed tasks: {installed} "
                                "(list them with `fl-sim tasks`)") from None


def task_catalogue() -> list[tuple[str, bool, str, str, tuple[str, ...]]]:
    """Every installed task, sorted: (name, built-in?, summary, data format, metrics)."""
    builtin = builtin_task_names()
    return [(name, name in builtin, task.summary, task.data_format, tuple(task.metrics))
            for name, task in sorted(available_tasks().items())]
