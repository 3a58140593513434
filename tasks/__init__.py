"""fedshield.tasks: the Task protocol, the registry, and the built-in tasks."""

from fedshield.tasks.base import DataSchema, SiteData, Task, TaskOptions, TrainResult
from fedshield.tasks.registry import available_tasks, get_task

__all__ = [
    "DataSchema",
    "SiteData",
    "Task",
    "TaskOptions",
    "TrainResult",
    "available_tasks",
    "get_task",
]
