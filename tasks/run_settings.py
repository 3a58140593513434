"""Settings a run takes from its task, resolved by `fl-server start` and `fl-sim run` before anything
starts: the model variant (``resolve_model``), the weights to start from, the learning-rate default."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from fedshield.common.errors import ConfigError
from fedshield.common.run_config import RunConfig
from fedshield.tasks.init_weights import read_weights, resolve_model
from fedshield.tasks.registry import get_task
from fedshield.tasks.trusted_examples import load_trusted_data


@dataclass(frozen=True)
class TaskSettings:
    """``model``: the resolved ``--model``; ``init_weights``: absolute path or ""; ``lr``: local step size;
    ``trusted_data``: absolute path of the coordinator's trusted examples or ""."""

    model: str
    init_weights: str
    lr: float
    trusted_data: str = ""


def resolve_settings(task_name: str, *, model: str, init_weights: Path | None, lr: float | None,
                     dp: bool, trusted_data: Path | None = None, seed: int = 0) -> TaskSettings:
    """Check ``--init-weights`` reads as weights, ``--model`` is one the task knows (its ``models``,
    or its own ``resolve_model``; one-line ``ConfigError`` otherwise) and ``--trusted-data`` loads as the
    task's site folder (``DataError`` naming the flag); without ``--lr``, the task's ``default_lr(dp)`` if it
    has one, else :meth:`RunConfig.default_lr`."""
    task = get_task(task_name)
    known = getattr(task, "models", None)  # a task's fixed set of --model variants, when it has one
    if known and model not in known:
        raise ConfigError(f"--model {model!r}: {task_name} models are {', '.join(known)}; pick one of those")
    if init_weights is not None:
        read_weights(init_weights)
    task_lr = getattr(task, "default_lr", None)
    step = lr if lr is not None else (task_lr(dp) if callable(task_lr) else RunConfig.default_lr(dp))
    resolved = resolve_model(task, model, pretrained=init_weights is not None, dp=dp)
    if trusted_data is not None:
        load_trusted_data(task, trusted_data, seed=seed, model=resolved)
    return TaskSettings(resolved, str(Path(init_weights).resolve()) if init_weights is not None else "", float(step),
                        str(Path(trusted_data).resolve()) if trusted_data is not None else "")
