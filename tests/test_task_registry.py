"""The task registry: built-ins come through the entry-point group, unknown names fail helpfully."""

from __future__ import annotations

import pytest

from fedshield.common.errors import TaskNotFoundError
from fedshield.tasks import Task, available_tasks, get_task


def test_builtin_tasks_are_registered_through_entry_points() -> None:
    tasks = available_tasks()
    assert {"digits-cnn", "tabular"} <= set(tasks)
    for name, task in tasks.items():
        assert isinstance(task, Task)
        assert task.name == name and task.data_format and task.metrics


def test_unknown_task_lists_installed_ones() -> None:
    with pytest.raises(TaskNotFoundError) as err:
        get_task("resnet-9000")
    message = str(err.value)
    assert "resnet-9000" in message and "digits-cnn" in message and "tabular" in message
    assert "\n" not in message
