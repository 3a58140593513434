"""Model weights <-> the list of NumPy arrays Flower's legacy ``Parameters`` carry.

FedShield sends a model as ONE float32 vector: every ``state_dict`` tensor flattened and concatenated
in ``state_dict()`` order (deterministic for an architecture; the server and every site build the same
architecture from the same :class:`DataSchema`). Why not one array per tensor, as Flower's examples do:
Flower 1.41 moves every array as separate objects (an array header plus its chunks), each one HTTP
request per hop (ServerApp -> SuperLink -> SuperNode -> ClientApp and back). For the digits CNN that is
20 objects per message instead of 6, and on a loaded 2-core host each request costs tens of ms, which
made object transfer the largest part of a deployed round (benchmarks/deploy_latency.py). Every
aggregation FedShield offers is element-wise (FedAvg, FedAvgM, FedAdam/Yogi/Adagrad, median, trimmed
mean, SecAgg+ quantisation) and clipping norms are over the whole update, so the packed vector
aggregates exactly like the list of tensors. Non-float tensors (e.g. a BatchNorm counter) travel as
float32 and are cast back to their dtype on load; float32 holds integers exactly up to 2**24.
"""

from __future__ import annotations

from collections import OrderedDict

import numpy as np
import torch
from torch import nn


def model_to_ndarrays(model: nn.Module) -> list[np.ndarray]:
    """``[vector]``: every ``state_dict`` tensor of ``model`` flattened, float32, in order (CPU copy)."""
    tensors = [t.detach().to("cpu", torch.float32).reshape(-1) for t in _plain_state_dict(model).values()]
    return [torch.cat(tensors).numpy().copy() if tensors else np.zeros(0, dtype=np.float32)]


def ndarrays_to_model(model: nn.Module, arrays: list[np.ndarray]) -> None:
    """Load a packed ``[vector]`` (see :func:`model_to_ndarrays`) into ``model`` in place."""
    _unwrap(model).load_state_dict(state_dict_from_ndarrays(model, arrays), strict=True)


def state_dict_from_ndarrays(model: nn.Module, arrays: list[np.ndarray]) -> OrderedDict[str, torch.Tensor]:
    """Unpack a packed ``[vector]`` into ``model``'s state-dict names, shapes and dtypes."""
    state = _plain_state_dict(model)
    total = sum(t.numel() for t in state.values())
    if len(arrays) != 1 or np.asarray(arrays[0]).ndim != 1:
        raise ValueError(f"update has {len(arrays)} arrays; FedShield sends one packed vector of {total} values")
    vector = torch.as_tensor(np.asarray(arrays[0]))
    if vector.numel() != total:
        raise ValueError(f"update has {vector.numel()} values, the model has {total}")
    out: OrderedDict[str, torch.Tensor] = OrderedDict()
    offset = 0
    for name, ref in state.items():
        n = ref.numel()
        out[name] = vector[offset:offset + n].reshape(ref.shape).to(ref.dtype).clone()
        offset += n
    return out


def fixed_mask(model: nn.Module) -> list[np.ndarray] | None:
    """``[mask]``, aligned with :func:`model_to_ndarrays`' vector: True at the values of parameters the model
    keeps fixed (``requires_grad`` False: a frozen backbone, digits-cnn's Gabor filters and random middle
    layers). No site's training changes them, so an honest update carries them back unchanged. ``None``
    when every parameter trains. Buffers (BatchNorm statistics) may change in training: never fixed."""
    module = _unwrap(model)
    frozen = {name for name, p in module.named_parameters(remove_duplicate=False) if not p.requires_grad}
    if not frozen:
        return None
    parts = [np.full(t.numel(), name in frozen) for name, t in _plain_state_dict(model).items()]
    return [np.concatenate(parts)]


def _unwrap(model: nn.Module) -> nn.Module:
    """Opacus' GradSampleModule wraps the model as ``_module``; weights live on the inner one."""
    return getattr(model, "_module", model)


def _plain_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    return _unwrap(model).state_dict()
