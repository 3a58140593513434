"""Start a run's global model from local weights (``--init-weights PATH``) instead of a fresh one.

Accepted files, both read with ``torch.load(weights_only=True)`` (tensors only, no code runs):
a FedShield checkpoint (``runs/<id>/model-final.pt``, ``checkpoints/round-NNN.pt``) or a plain
``state_dict`` saved with ``torch.save(model.state_dict(), PATH)``. Tensors are matched by name and
shape; BatchNorm running statistics have no counterpart in FedShield's GroupNorm models and are
skipped. Only the server reads the file: sites receive the weights with round 1's model.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from fedshield.common.errors import ConfigError

log = logging.getLogger(__name__)
BATCHNORM_STATS = ("running_mean", "running_var", "num_batches_tracked")


def read_weights(path: Path) -> dict[str, torch.Tensor]:
    """The named tensors in ``path``; ``ConfigError`` naming ``--init-weights`` when unreadable."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"--init-weights {path}: no such file; give a FedShield checkpoint or a torch "
                          "state_dict (.pt)")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle errors, truncated files, non-tensor objects
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError(f"--init-weights {path}: not a torch weights file ({first[:160]}); save one with "
                          "torch.save(model.state_dict(), PATH) or pass a run's model-final.pt") from None
    if isinstance(obj, Mapping) and obj.get("format") == "fedshield-checkpoint":
        obj = obj.get("state_dict")
    if not isinstance(obj, Mapping) or not obj or not all(
            isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()):
        raise ConfigError(f"--init-weights {path}: holds no name → tensor mapping; save one with "
                          "torch.save(model.state_dict(), PATH) or pass a run's model-final.pt")
    return dict(obj)


def resolve_model(task: object, model: str, *, pretrained: bool, dp: bool) -> str:
    """The task's own resolution of ``--model`` given whether the run starts from weights and trains
    with DP-SGD (``transfer-mobilenet``: ``auto`` → ``head`` or ``full``; ``digits-cnn``: ``auto`` →
    ``gabor`` or ``full``), or ``model`` unchanged for tasks without one."""
    resolve = getattr(task, "resolve_model", None)
    return resolve(model, pretrained=pretrained, dp=dp) if callable(resolve) else model


def start_from(task: object, model: nn.Module, path: str) -> None:
    """Load ``path`` into the freshly built global ``model`` (``task.head_prefixes()`` may stay fresh)."""
    prefixes = getattr(task, "head_prefixes", None)
    fresh = load_weights(model, read_weights(Path(path)), source=Path(path),
                         fresh_prefixes=tuple(prefixes()) if callable(prefixes) else ())
    log.info("global model starts from %s%s", path,
             f" ({len(fresh)} head tensors freshly initialised: {', '.join(fresh)})" if fresh else "")


def load_weights(model: nn.Module, weights: Mapping[str, torch.Tensor], *, source: Path,
                 fresh_prefixes: tuple[str, ...] = ()) -> list[str]:
    """Copy ``weights`` into ``model`` in place, by name and shape.

    Every tensor of the model must be found with its shape, except those under ``fresh_prefixes``
    (e.g. a classifier pretrained on other classes), which keep their fresh values; their names are
    returned. Raises ``ConfigError`` naming the first tensor that cannot be filled, or the reason the model's
    ``retired_weights(weights)`` gives for weights of an earlier version of it; ``model`` is left untouched then.
    """
    retired = getattr(model, "retired_weights", None)  # a model that can name weights of an earlier version
    reason = retired(weights) if callable(retired) else None
    if reason:
        raise ConfigError(f"{source}: {reason}")
    own = model.state_dict()
    fresh: list[str] = []
    updates: dict[str, torch.Tensor] = {}
    for name, tensor in own.items():
        given = weights.get(name)
        if given is not None and given.shape == tensor.shape:
            updates[name] = given.to(tensor.dtype)
            continue
        if name.startswith(fresh_prefixes):
            fresh.append(name)
            continue
        found = ("is missing" if given is None
                 else f"has shape {tuple(given.shape)}, the model needs {tuple(tensor.shape)}")
        raise ConfigError(f"--init-weights {source}: tensor {name!r} {found}; pass weights of this task and "
                          "--model (e.g. a model-final.pt of a run of the same task)")
    unused = [k for k in weights if k not in own and not k.endswith(BATCHNORM_STATS)]
    if unused:
        log.warning("--init-weights %s: %d tensors not in the model were ignored (first: %s)", source, len(unused),
                    unused[0])
    own.update(updates)
    model.load_state_dict(own)
    return fresh
