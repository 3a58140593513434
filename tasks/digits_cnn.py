"""``digits-cnn``: the seed documents' CNN for 28×28 greyscale digit images, 10 classes.

Architecture (seed document): conv 5×5 (1→32) → ReLU → max-pool 2 → conv 5×5 (32→64) → ReLU →
max-pool 2 → fc 3136→128 → ReLU → fc 128→10. 454,922 parameters; no BatchNorm, so Opacus trains it
as is.

Variants (``--model``): ``full`` trains every layer; ``gabor`` and ``frozen-middle`` are built for
DP-SGD at small sites; ``auto`` (the default) is ``gabor`` when the run trains with DP-SGD from a fresh
model, ``full`` without DP or from ``--init-weights``.

``frozen-middle`` trains only the first convolution and the last layer (2,122 parameters) and keeps
the second convolution and the 3136→128 layer at their seeded random initialisation, identical at every
site (up to the float rounding of the server's weighted mean): the noise norm grows with the square
root of the trained parameter count (Abadi et al. 2016), 1/15 of the full model's here, while fixed
random layers still give the trained ones useful features. It also uses tanh instead of ReLU, a
bounded activation that keeps per-example gradient norms small and even, so clipping discards less
of them (Papernot et al. 2021, "Tempered Sigmoid Activations for Deep Learning with Differential
Privacy"), and centres its inputs from [0, 1] to [-1, 1]. At ε = 3 over 3 digits sites (docs/performance.md) the
tanh and the centring took it from 0.74 to 0.85 accuracy.

``gabor`` is ``frozen-middle`` with a fixed first convolution too: its 32 filters are a bank of Gabor
filters (``tasks/gabor_filters.py``: 2 scales × 8 orientations × even and odd phase, zero mean, L2 norm
``GABOR_NORM``), handcrafted edge and bar detectors in place of learned ones (Tramèr & Boneh 2021), so
only the last layer trains (1,290 parameters). At ε = 3 over 3 digits sites it reaches 0.88 against
``frozen-middle``'s 0.85 (docs/performance.md); without DP it underfits (0.71), so it is for private runs.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch import nn
from torch.utils.data import TensorDataset

from fedshield.common.errors import ConfigError, DataError
from fedshield.tasks.base import DataSchema, SiteData, TaskOptions
from fedshield.tasks.gabor_filters import gabor_bank
from fedshield.tasks.holdout import holdout_indices
from fedshield.tasks.npz_arrays import read_npz_xy
from fedshield.tasks.supervised import CLASSIFICATION_METRICS, SupervisedTask

SIDE = 28
CLASSES = 10
MODELS = ("auto", "full", "frozen-middle", "gabor")
# L2 norm of each fixed Gabor filter (so tanh sees edges at its bend): at ε = 3 (docs/performance.md) norm 2 gave
# 0.881 accuracy, 3 and 4 0.878-0.880, 1 0.867, 0.5 0.832
GABOR_NORM = 2.0
SCHEMA = DataSchema(kind="classification", input_shape=(1, SIDE, SIDE), num_outputs=CLASSES)


class DigitsCNN(nn.Module):
    """Input (N, 1, 28, 28) in [0, 1]; output (N, 10) logits.

    ``activation``: the nonlinearity after each convolution and the hidden linear layer (the seed
    document's ReLU, or tanh for ``frozen-middle`` and ``gabor``); ``centred``: map inputs to [-1, 1] first.
    """

    def __init__(self, classes: int = CLASSES, activation: type[nn.Module] = nn.ReLU, centred: bool = False) -> None:
        super().__init__()
        self.centred = centred
        self.features = nn.Sequential(
            nn.Conv2d(1, 32, 5, padding=2), activation(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 5, padding=2), activation(), nn.MaxPool2d(2),
        )
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(64 * 7 * 7, 128), activation(), nn.Linear(128, classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.centred:
            x = x * 2.0 - 1.0
        return self.head(self.features(x))


def _load_npz(path: Path) -> tuple[np.ndarray, np.ndarray]:
    x, y = read_npz_xy(path, "N×28×28 uint8")
    if x.ndim != 3 or x.shape[1:] != (SIDE, SIDE):
        raise DataError(f"{path}: x has shape {x.shape}; digits-cnn needs N×28×28 greyscale images")
    if x.dtype != np.uint8:
        raise DataError(f"{path}: x has dtype {x.dtype}; digits-cnn needs uint8 pixel values 0-255")
    if y.ndim != 1 or len(y) != len(x):
        raise DataError(f"{path}: y has shape {y.shape} but x holds {len(x)} images; one label per image")
    if not np.issubdtype(y.dtype, np.integer):
        if np.issubdtype(y.dtype, np.floating) and np.all(np.mod(y, 1) == 0):
            y = y.astype(np.int64)
        else:
            raise DataError(f"{path}: y has dtype {y.dtype}; labels must be integers 0-9")
    bad = np.flatnonzero((y < 0) | (y >= CLASSES))
    if bad.size:
        raise DataError(f"{path}: label {y[bad[0]]} at index {bad[0]} is outside 0-9; digits-cnn has 10 classes")
    return x, y.astype(np.int64)


def _load_images(folder: Path) -> tuple[np.ndarray, np.ndarray]:
    xs, ys = [], []
    for label_dir in sorted(p for p in folder.iterdir() if p.is_dir()):
        if not label_dir.name.isdigit() or not 0 <= int(label_dir.name) < CLASSES:
            raise DataError(f"{label_dir}: label folder must be named 0-9; digits-cnn has 10 classes")
        for png in sorted(label_dir.glob("*.png")):
            try:
                with Image.open(png) as img:
                    if img.size != (SIDE, SIDE):
                        raise DataError(f"{png}: image is {img.size[0]}×{img.size[1]}, digits-cnn needs 28×28 "
                                        "greyscale; resize it or use a task for that size")
                    xs.append(np.asarray(img.convert("L"), dtype=np.uint8))
            except (UnidentifiedImageError, OSError) as exc:
                raise DataError(f"{png}: not a readable PNG ({exc}); re-export or remove it") from None
            ys.append(int(label_dir.name))
    if not xs:
        raise DataError(f"{folder}: no PNG images in images/<label>/; add images or use data.npz")
    return np.stack(xs), np.asarray(ys, dtype=np.int64)


class DigitsCNNTask(SupervisedTask):
    """The seed CNN on 28×28 greyscale digits."""

    name = "digits-cnn"
    models: tuple[str, ...] | None = MODELS  # checked by `fl-server start` / `fl-sim run` before anything starts
    summary = "CNN (conv32-conv64-fc128) classifying 28×28 greyscale images into 10 classes"
    data_format = ("data.npz with x (N×28×28 uint8) and y (N labels 0-9), or images/<label>/*.png "
                   "(28×28 greyscale, label folders 0-9); 20% held out for validation")
    metrics: tuple[str, ...] = CLASSIFICATION_METRICS
    # Conv2d and Linear only: one-pass book-keeping clipping (client/book_keeping.py, Bu et al. 2023),
    # 1.2-1.3x a plain step at batch 64 on CPU against 2.4-2.7x for Opacus' ghost clipping (docs/performance.md).
    dp_mode = "bk"

    def load_site(self, path: Path, options: TaskOptions) -> SiteData:
        path = Path(path)
        if not path.is_dir():
            raise DataError(f"{path}: site folder does not exist; pass the folder that holds data.npz or images/")
        if (path / "data.npz").is_file():
            x, y = _load_npz(path / "data.npz")
        elif (path / "images").is_dir():
            x, y = _load_images(path / "images")
        else:
            raise DataError(f"{path}: found neither data.npz nor images/<label>/*.png; put the site's digits there")
        if len(x) == 0:
            raise DataError(f"{path}: holds no images; a site needs at least 2 examples")
        train, val = holdout_indices(x, y, val_fraction=options.val_fraction, seed=options.seed, where=str(path))
        xt = torch.as_tensor(x, dtype=torch.float32).unsqueeze(1) / 255.0
        yt = torch.as_tensor(y)
        return SiteData(TensorDataset(xt[train], yt[train]), TensorDataset(xt[val], yt[val]), SCHEMA, path)

    def resolve_model(self, model: str, *, pretrained: bool, dp: bool) -> str:
        """``auto`` → ``gabor`` under DP-SGD (at ε = 3 over 3 digits sites, 5 rounds, 3 seeds: 0.77 accuracy
        at 1 local epoch against ``frozen-middle``'s 0.76 and the full model's 0.54; 0.88 against 0.85 at 5,
        docs/performance.md), else ``full``: without DP the full model learns more (``gabor`` underfits: 0.71 against
        0.91), and pretrained weights (``--init-weights``) come from a ReLU network."""
        if model != "auto":
            return model
        return "gabor" if dp and not pretrained else "full"

    def build_model(self, schema: DataSchema, options: TaskOptions) -> nn.Module:
        if options.model not in MODELS:
            raise ConfigError(f"--model {options.model!r}: digits-cnn models are auto (gabor with DP, else full), "
                              "full, frozen-middle and gabor (for DP: frozen-middle trains the first convolution "
                              "and the last layer, gabor the last layer only)")
        if options.model not in ("frozen-middle", "gabor"):
            return DigitsCNN(schema.num_outputs)
        model = DigitsCNN(schema.num_outputs, activation=nn.Tanh, centred=True)
        model.features[3].requires_grad_(False)  # conv 32→64
        model.head[1].requires_grad_(False)  # fc 3136→128
        if options.model == "gabor":
            conv = model.features[0]
            assert isinstance(conv, nn.Conv2d)
            with torch.no_grad():
                conv.weight.copy_(gabor_bank(conv.kernel_size[0], norm=GABOR_NORM))
                if conv.bias is not None:
                    conv.bias.zero_()
            conv.requires_grad_(False)
        return model
