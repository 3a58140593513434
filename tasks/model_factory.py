"""Build a task's model the same way on the server and at every site.

Opacus cannot compute per-sample gradients through BatchNorm; ``ModuleValidator.fix`` swaps such
layers (BatchNorm -> GroupNorm) and must run on both sides so the architectures — and therefore the
positions of the arrays exchanged each round — agree.
"""

from __future__ import annotations

import logging

import torch
from opacus.validators import ModuleValidator
from torch import nn

from fedshield.tasks.base import DataSchema, Task, TaskOptions

log = logging.getLogger(__name__)


def build_model(task: Task, schema: DataSchema, options: TaskOptions, *, seed: int) -> nn.Module:
    """A fresh, Opacus-compatible model for ``schema``, initialised from ``seed``."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = task.build_model(schema, options)
    problems = ModuleValidator.validate(model, strict=False)
    if problems:
        log.warning("task %s: model layers Opacus cannot train privately were replaced (%s)",
                    task.name, "; ".join(str(p) for p in problems))
        model = ModuleValidator.fix(model)
    return model
