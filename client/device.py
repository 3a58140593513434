"""``--device auto|cpu|cuda``: pick where a site trains."""

from __future__ import annotations

import torch

from fedshield.common.errors import ConfigError


def resolve_device(name: str) -> torch.device:
    """``auto`` is CUDA when present, else CPU; ``cuda`` without a GPU is a user error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda: no CUDA GPU is visible on this site; use --device auto or cpu")
    if name not in ("cpu", "cuda"):
        raise ConfigError(f"--device {name!r}: use auto, cpu or cuda")
    return torch.device(name)
