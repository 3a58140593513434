"""``digits-mlp``: a two-layer perceptron (784 → 64 → 10) on 28×28 greyscale digit images.

A complete FedShield task plugin in one file: the data format it documents, a loader that validates
every example before training (errors name the file and the fix), the model, and, inherited from
FedShield's ``SupervisedTask``, the training loop and the metrics. FedShield creates the optimizer,
the Poisson-sampled loader and the Opacus privacy engine around it, so the task is private without
a line of DP code here.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import TensorDataset

from fedshield.common.errors import DataError
from fedshield.tasks.base import DataSchema, SiteData, TaskOptions
from fedshield.tasks.holdout import holdout_indices
from fedshield.tasks.supervised import SupervisedTask

SIDE = 28
CLASSES = 10


class DigitsMLP(nn.Module):
    """Input (N, 1, 28, 28) in [0, 1]; output (N, 10) logits. 50,890 parameters."""

    def __init__(self, hidden: int = 64) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(SIDE * SIDE, hidden), nn.ReLU(), nn.Linear(hidden, CLASSES))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def read_digits(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """``data.npz`` with x (N, 28, 28) uint8 and y (N,) integer labels 0-9; DataError otherwise."""
    try:
        with np.load(path, allow_pickle=False) as npz:
            x, y = npz["x"], npz["y"]
    except KeyError as exc:
        raise DataError(f"{path}: missing array {exc}; save it with numpy.savez(path, x=images, y=labels)") from None
    except (OSError, ValueError):
        raise DataError(f"{path}: not a readable .npz file; save it with numpy.savez(path, x=images, "
                        "y=labels)") from None
    if x.dtype != np.uint8 or x.ndim != 3 or x.shape[1:] != (SIDE, SIDE):
        raise DataError(f"{path}: x is {x.dtype} {x.shape}; digits-mlp needs N×28×28 uint8 greyscale images")
    if y.shape != (len(x),) or not np.issubdtype(y.dtype, np.integer):
        raise DataError(f"{path}: y is {y.dtype} {y.shape}; give one integer label per image")
    bad = np.flatnonzero((y < 0) | (y >= CLASSES))
    if bad.size:
        raise DataError(f"{path}: label {y[bad[0]]} of image {bad[0]} is outside 0-9")
    return x, y.astype(np.int64)


class DigitsMLPTask(SupervisedTask):
    """What FedShield asks of a task: name, summary, data format, metrics, DP mode, loader, model."""

    name = "digits-mlp"
    summary = "Two-layer perceptron (784-64-10) on 28×28 greyscale digit images (example plugin)"
    data_format = "data.npz with x (N×28×28 uint8) and y (N labels 0-9); 20% held out for validation"
    metrics = ("loss", "accuracy", "precision", "recall", "f1", "roc_auc")
    dp_mode = "ghost"  # linear layers only: Opacus' fast gradient clipping applies
    reads_sites_of = ("digits-cnn",)  # `fl-sim split --dataset digits` writes folders for digits-cnn

    def load_site(self, path: Path, options: TaskOptions) -> SiteData:
        x, y = read_digits(Path(path) / "data.npz")
        train, val = holdout_indices(x, y, val_fraction=options.val_fraction, seed=options.seed, where=str(path))
        xt = torch.as_tensor(x, dtype=torch.float32).unsqueeze(1) / 255.0
        yt = torch.as_tensor(y)
        schema = DataSchema(kind="classification", input_shape=(1, SIDE, SIDE), num_outputs=CLASSES)
        return SiteData(TensorDataset(xt[train], yt[train]), TensorDataset(xt[val], yt[val]), schema, Path(path))

    def build_model(self, schema: DataSchema, options: TaskOptions) -> nn.Module:
        return DigitsMLP()
