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


def test_broken_plugin_is_skipped_with_a_warning(monkeypatch: pytest.MonkeyPatch,
                                                 caplog: pytest.LogCaptureFixture) -> None:
    from importlib.metadata import EntryPoint

    from fedshield.tasks import registry

    fake = [EntryPoint("tabular", "fedshield.tasks.tabular:TabularTask", registry.GROUP),
            EntryPoint("broken", "fedshield_no_such_module:Task", registry.GROUP)]
    monkeypatch.setattr(registry, "entry_points", lambda group: fake)
    registry.available_tasks.cache_clear()
    try:
        with caplog.at_level("WARNING"):
            assert list(registry.available_tasks()) == ["tabular"]
        assert "broken" in caplog.text
    finally:
        registry.available_tasks.cache_clear()
