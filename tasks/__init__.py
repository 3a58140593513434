"""fedshield.tasks: the Task protocol, the registry, and the built-in tasks.

The names below are imported on first use (PEP 562), so that importing the registry to check a task
name does not import torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "DataSchema": "base",
    "SiteData": "base",
    "Task": "base",
    "TaskOptions": "base",
    "TrainResult": "base",
    "available_tasks": "registry",
    "get_task": "registry",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
