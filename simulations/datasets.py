"""Real data bundled with scikit-learn, shaped as FedShield tasks expect (nothing is downloaded).

- ``digits``: 1,797 handwritten digits (8×8, values 0-16) upscaled bilinearly to 28×28 uint8 0-255.
- ``breast-cancer``: 569 tumours, 30 numeric features, target ``diagnosis`` (0 malignant, 1 benign).
- ``diabetes``: 442 patients, 10 features, target ``progression`` (raw units, 25-346), trained as
  ``(y - 150) / 75`` via ``fedshield.toml``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from sklearn import datasets as skd

from fedshield.common.errors import ConfigError


@dataclass(frozen=True)
class BundledDataset:
    """Examples of one bundled data set and which task they feed.

    ``x``: (N, 28, 28) uint8 images or (N, F) float64 features; ``y``: (N,) labels or targets.
    """

    name: str
    task: str
    x: np.ndarray
    y: np.ndarray
    feature_names: tuple[str, ...] = ()
    target: str = ""
    site_config: dict[str, object] = field(default_factory=dict)

    @property
    def is_classification(self) -> bool:
        return np.issubdtype(self.y.dtype, np.integer)


def _digits() -> BundledDataset:
    bunch = skd.load_digits()
    images = torch.as_tensor(bunch.images, dtype=torch.float32).unsqueeze(1) / 16.0
    up = torch.nn.functional.interpolate(images, size=(28, 28), mode="bilinear", align_corners=False)
    x = (up.squeeze(1).clamp(0, 1) * 255).round().to(torch.uint8).numpy()
    return BundledDataset("digits", "digits-cnn", x, bunch.target.astype(np.int64))


def _csv_safe(name: str) -> str:
    return "_".join(name.replace("(", " ").replace(")", " ").split())


def _breast_cancer() -> BundledDataset:
    bunch = skd.load_breast_cancer()
    names = tuple(_csv_safe(n) for n in bunch.feature_names)
    return BundledDataset("breast-cancer", "tabular", bunch.data, bunch.target.astype(np.int64), names,
                          "diagnosis", {"target": "diagnosis"})


def _diabetes() -> BundledDataset:
    bunch = skd.load_diabetes(scaled=False)
    names = tuple(_csv_safe(n) for n in bunch.feature_names)
    return BundledDataset("diabetes", "tabular", bunch.data, bunch.target.astype(np.float64), names,
                          "progression", {"target": "progression", "kind": "regression",
                                          "target_shift": 150.0, "target_scale": 75.0})


_LOADERS = {"digits": _digits, "breast-cancer": _breast_cancer, "diabetes": _diabetes}


def dataset_names() -> list[str]:
    return sorted(_LOADERS)


def load_dataset(name: str) -> BundledDataset:
    try:
        return _LOADERS[name]()
    except KeyError:
        raise ConfigError(f"--dataset {name!r} is unknown; bundled data sets: {', '.join(dataset_names())}") from None
