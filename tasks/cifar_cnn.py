"""``cifar-cnn``: the design documents' CNN for 32×32 colour images (CIFAR-10 style), 10 classes.

Architecture (seed document): conv 3×3 (3→32) → ReLU → max-pool 2 → conv 3×3 (32→64) → ReLU →
max-pool 2 → conv 3×3 (64→64) → ReLU → fc 1024→64 → ReLU → fc 64→K (valid padding: 32→30→15→13→6→4).
122,570 parameters at K = 10; no BatchNorm, so Opacus trains it as is, with ghost clipping.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn
from torch.utils.data import TensorDataset

from fedshield.common.errors import DataError
from fedshield.tasks.base import DataSchema, SiteData, TaskOptions
from fedshield.tasks.colour_images import label_set, load_folders, load_npz
from fedshield.tasks.holdout import holdout_indices
from fedshield.tasks.supervised import CLASSIFICATION_METRICS, SupervisedTask

SIDE = 32


class CifarCNN(nn.Module):
    """Input (N, 3, 32, 32) in [0, 1]; output (N, K) logits."""

    def __init__(self, classes: int = 10) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 32, 3), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(64, 64, 3), nn.ReLU(),
        )
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(64 * 4 * 4, 64), nn.ReLU(), nn.Linear(64, classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # centre the [0, 1] pixels (fixed, no parameters): SGD from scratch learns several times faster
        return self.head(self.features((x - 0.5) / 0.25))


class CifarCNNTask(SupervisedTask):
    """The seed colour CNN on 32×32 RGB images."""

    name = "cifar-cnn"
    models: tuple[str, ...] | None = ("auto",)  # one model: any other --model is refused before a run starts
    summary = "CNN (conv32-conv64-conv64-fc64) classifying colour images (resized to 32×32) into K classes"
    data_format = ("data.npz with x (N×H×W×3 uint8, any size) and y (N class indices), or "
                   "images/<label>/*.png|jpg (colour, any size); labels 0-9 unless fedshield.toml sets "
                   "labels = [...]; resized to 32×32; 20% held out for validation")
    metrics = CLASSIFICATION_METRICS
    dp_mode = "bk"  # conv + linear layers only: one-pass book-keeping clipping (client/book_keeping.py)

    def load_site(self, path: Path, options: TaskOptions) -> SiteData:
        path = Path(path)
        labels = label_set(options.extra)
        if (path / "data.npz").is_file():
            x, y = load_npz(path / "data.npz", side=SIDE, labels=labels)
        elif (path / "images").is_dir():
            x, y = load_folders(path / "images", side=SIDE, labels=labels)
        else:
            raise DataError(f"{path}: found neither data.npz nor images/<label>/*.png; put the site's images there")
        if len(x) == 0:
            raise DataError(f"{path}: holds no images; a site needs at least 2 examples")
        train, val = holdout_indices(x, y, val_fraction=options.val_fraction, seed=options.seed, where=str(path))
        xt = torch.as_tensor(x, dtype=torch.float32).permute(0, 3, 1, 2).contiguous() / 255.0
        yt = torch.as_tensor(y)
        schema = DataSchema(kind="classification", input_shape=(3, SIDE, SIDE), num_outputs=len(labels), labels=labels)
        return SiteData(TensorDataset(xt[train], yt[train]), TensorDataset(xt[val], yt[val]), schema, path)

    def build_model(self, schema: DataSchema, options: TaskOptions) -> nn.Module:
        return CifarCNN(schema.num_outputs)
