"""Model weights <-> the list of NumPy arrays Flower's legacy ``Parameters`` carry.

The order is the model's ``state_dict()`` order, which is deterministic for a given architecture; the
server and every site build the same architecture from the same :class:`DataSchema`, so positions
match. Shapes are checked on the way in so a mismatched update fails loudly, not silently.
"""

from __future__ import annotations

from collections import OrderedDict

import numpy as np
import torch
from torch import nn


def model_to_ndarrays(model: nn.Module) -> list[np.ndarray]:
    """Copy every ``state_dict`` tensor of ``model`` to a NumPy array (CPU), in order."""
    return [t.detach().cpu().numpy().copy() for t in _plain_state_dict(model).values()]


def ndarrays_to_model(model: nn.Module, arrays: list[np.ndarray]) -> None:
    """Load ``arrays`` (in ``state_dict`` order) into ``model`` in place; shapes must match."""
    state = _plain_state_dict(model)
    if len(arrays) != len(state):
        raise ValueError(f"update has {len(arrays)} arrays, the model has {len(state)} tensors")
    new_state: "OrderedDict[str, torch.Tensor]" = OrderedDict()
    for (name, ref), arr in zip(state.items(), arrays):
        if tuple(arr.shape) != tuple(ref.shape):
            raise ValueError(f"array for {name} has shape {arr.shape}, model needs {tuple(ref.shape)}")
        new_state[name] = torch.as_tensor(np.asarray(arr), dtype=ref.dtype)
    _unwrap(model).load_state_dict(new_state, strict=True)


def state_dict_from_ndarrays(model: nn.Module, arrays: list[np.ndarray]) -> "OrderedDict[str, torch.Tensor]":
    """Name ``arrays`` by ``model``'s state-dict keys (for checkpoints)."""
    keys = list(_plain_state_dict(model).keys())
    return OrderedDict((k, torch.as_tensor(np.asarray(a))) for k, a in zip(keys, arrays))


def _unwrap(model: nn.Module) -> nn.Module:
    """Opacus' GradSampleModule wraps the model as ``_module``; weights live on the inner one."""
    return getattr(model, "_module", model)


def _plain_state_dict(model: nn.Module) -> "OrderedDict[str, torch.Tensor]":
    return _unwrap(model).state_dict()
