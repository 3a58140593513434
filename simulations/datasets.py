"""Real data bundled with scikit-learn, shaped as FedShield tasks expect (nothing is downloaded).

- ``digits``: 1,797 handwritten digits (8×8, values 0-16) upscaled bilinearly to 28×28 uint8 0-255.
- ``breast-cancer``: 569 tumours, 30 numeric features, target ``diagnosis`` (0 malignant, 1 benign).
  Tabular site folders declare each feature's range over the whole public data set (``feature_ranges``).
- ``diabetes``: 442 patients, 10 features, target ``progression`` (raw units, 25-346), trained as
  ``(y - 150) / 75`` via ``fedshield.toml``.
- ``shapes``: *generated*, not real: 3,000 32×32 colour images of ten shapes, CIFAR-10's format
  (:mod:`fedshield.simulations.shapes_dataset`), for ``cifar-cnn``.
- ``reviews``: *generated*, not real: 2,000 short product reviews labelled negative/positive
  (:mod:`fedshield.simulations.reviews_dataset`), for ``text-transformer``.
- ``dates``: *generated*, not real: 3,000 dates written in five styles → ISO 8601
  (:mod:`fedshield.simulations.dates_dataset`), for ``seq2seq-attention``; the style is the label.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from fedshield.common.errors import ConfigError


@dataclass(frozen=True)
class BundledDataset:
    """Examples of one bundled data set and which task they feed.

    ``x``: (N, 28, 28) uint8 greyscale or (N, 32, 32, 3) uint8 colour images, (N, F) float64
    features, (N,) unicode texts, or (N, 2) unicode (source, target) pairs; ``y``: (N,) labels or
    targets (for pairs: a category used to partition, e.g. the date style).
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
    import torch
    from sklearn import datasets as skd

    bunch = skd.load_digits()
    images = torch.as_tensor(bunch.images, dtype=torch.float32).unsqueeze(1) / 16.0
    up = torch.nn.functional.interpolate(images, size=(28, 28), mode="bilinear", align_corners=False)
    x = (up.squeeze(1).clamp(0, 1) * 255).round().to(torch.uint8).numpy()
    return BundledDataset("digits", "digits-cnn", x, bunch.target.astype(np.int64))


def _csv_safe(name: str) -> str:
    return "_".join(name.replace("(", " ").replace(")", " ").split())


def feature_ranges(x: np.ndarray, names: tuple[str, ...]) -> dict[str, list[float]]:
    """Each column's typical range over the whole public data set, mean ± 2 standard deviations, 4 digits.

    What a site's data dictionary would declare (``feature_ranges`` in its ``fedshield.toml``): the
    tabular task maps it to [-1, 1] instead of standardising by a site's own statistics, so one record
    moves no other record's features. Being public, the whole data set's statistics are such a declaration.
    """
    mean, sd = x.mean(axis=0), np.maximum(x.std(axis=0), 1e-9)
    return {name: [float(f"{m - 2 * d:.4g}"), float(f"{m + 2 * d:.4g}")]
            for name, m, d in zip(names, mean, sd, strict=True)}


def _breast_cancer() -> BundledDataset:
    from sklearn import datasets as skd

    bunch = skd.load_breast_cancer()
    names = tuple(_csv_safe(n) for n in bunch.feature_names)
    return BundledDataset("breast-cancer", "tabular", bunch.data, bunch.target.astype(np.int64), names,
                          "diagnosis", {"target": "diagnosis", "kind": "classification", "classes": 2,
                                        "feature_ranges": feature_ranges(bunch.data, names)})


def _diabetes() -> BundledDataset:
    from sklearn import datasets as skd

    bunch = skd.load_diabetes(scaled=False)
    names = tuple(_csv_safe(n) for n in bunch.feature_names)
    return BundledDataset("diabetes", "tabular", bunch.data, bunch.target.astype(np.float64), names,
                          "progression", {"target": "progression", "kind": "regression",
                                          "target_shift": 150.0, "target_scale": 75.0,
                                          "feature_ranges": feature_ranges(bunch.data, names)})


def _shapes() -> BundledDataset:
    from fedshield.simulations.shapes_dataset import SHAPES, generate_shapes

    x, y = generate_shapes()
    return BundledDataset("shapes", "cifar-cnn", x, y, site_config={"labels": list(SHAPES)})


def _reviews() -> BundledDataset:
    from fedshield.simulations.reviews_dataset import LABELS, generate_reviews

    texts, y = generate_reviews()
    return BundledDataset("reviews", "text-transformer", texts, y, ("text",), "label",
                          {"labels": list(LABELS), "max_length": 32})


def _dates() -> BundledDataset:
    from fedshield.simulations.dates_dataset import generate_dates

    pairs, styles = generate_dates()
    return BundledDataset("dates", "seq2seq-attention", pairs, styles, ("source", "target"), "",
                          {"max_length": 48, "max_target_length": 16})


_LOADERS = {"dates": _dates, "digits": _digits, "breast-cancer": _breast_cancer, "diabetes": _diabetes,
            "shapes": _shapes, "reviews": _reviews}


def dataset_names() -> list[str]:
    """The bundled data sets' names, sorted."""
    return sorted(_LOADERS)


def load_dataset(name: str) -> BundledDataset:
    """The bundled data set ``name`` (``ConfigError`` listing the names for an unknown one)."""
    try:
        return _LOADERS[name]()
    except KeyError:
        raise ConfigError(f"--dataset {name!r} is unknown; bundled data sets: {', '.join(dataset_names())}") from None


# ---------------------------------------------------------------- simulation pools
MIN_EXAMPLES_PER_SITE = 16  # what `--augment 0` (auto) aims for, on average, per virtual site


@dataclass(frozen=True)
class SimulationPool:
    """A bundled data set cut for one simulation.

    ``real``: the real examples the sites share out; with ``copies`` > 1 each is followed, in
    :meth:`write_x`, by jittered copies (:func:`augmented_copies`), so the pool has
    ``copies · len(real)`` examples and its labels are :attr:`labels`. ``test``: a stratified share of
    the real examples that no site ever sees, the server's central test set.
    """

    real: BundledDataset
    test: BundledDataset
    copies: int
    seed: int

    @property
    def labels(self) -> np.ndarray:
        """(copies · N,) labels of the whole pool, in pool order."""
        return np.tile(self.real.y, self.copies)

    def write_x(self, path: Path) -> None:
        """Write the pool's examples as one ``.npy`` file, one copy at a time (memory: one copy)."""
        shape = (len(self.real.y) * self.copies, *self.real.x.shape[1:])
        with open(path, "wb") as fh:
            np.lib.format.write_array_header_1_0(
                fh, {"descr": np.lib.format.dtype_to_descr(self.real.x.dtype), "fortran_order": False, "shape": shape})
            for chunk in augmented_copies(self.real.x, self.copies, self.seed):
                fh.write(np.ascontiguousarray(chunk).tobytes())


def _subset(data: BundledDataset, idx: np.ndarray) -> BundledDataset:
    return BundledDataset(data.name, data.task, data.x[idx], data.y[idx], data.feature_names, data.target,
                          dict(data.site_config))


def augmented_copies(x: np.ndarray, copies: int, seed: int) -> Iterator[np.ndarray]:
    """``x`` (N, H, W) uint8, then ``copies - 1`` jittered copies of it, each (N, H, W) uint8.

    Each copy is a seeded random affine transform of the original: rotation ±12°, scale 0.9-1.1,
    shift ±2 px (the usual digit augmentation, e.g. Simard et al. 2003). Bilinear resampling.
    """
    yield x
    if copies <= 1:
        return
    import torch

    gen = torch.Generator().manual_seed(seed)
    images = torch.as_tensor(x, dtype=torch.float32).unsqueeze(1) / 255.0
    n, _, h, w = images.shape
    for _ in range(copies - 1):
        angle = (torch.rand(n, generator=gen) * 2 - 1) * (12 * np.pi / 180)
        scale = 0.9 + torch.rand(n, generator=gen) * 0.2
        shift = (torch.rand(n, 2, generator=gen) * 2 - 1) * (2.0 / (w / 2))
        cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
        theta = torch.stack([torch.stack([cos, -sin, shift[:, 0]], 1), torch.stack([sin, cos, shift[:, 1]], 1)], 1)
        grid = torch.nn.functional.affine_grid(theta, list(images.shape), align_corners=False)
        moved = torch.nn.functional.grid_sample(images, grid, mode="bilinear", padding_mode="zeros",
                                                align_corners=False)
        yield (moved.squeeze(1).clamp(0, 1) * 255).round().to(torch.uint8).numpy()


def augment_images(x: np.ndarray, copies: int, seed: int) -> np.ndarray:
    """All of :func:`augmented_copies` in one (N·copies, H, W) array."""
    return np.concatenate(list(augmented_copies(x, copies, seed)))


def auto_copies(real_for_sites: int, sites: int) -> int:
    """Copies per real example so that ``sites`` sites get ``MIN_EXAMPLES_PER_SITE`` each on average."""
    return max(1, math.ceil(sites * MIN_EXAMPLES_PER_SITE / max(real_for_sites, 1)))


def simulation_pool(name: str, *, sites: int, test_fraction: float, augment: int, seed: int) -> SimulationPool:
    """Hold out the central test set (none at ``test_fraction`` 0); the rest, with ``augment`` copies
    each (0 = auto), is the pool.

    Only image data sets can be augmented; tabular ones with too few rows for the sites fail later in
    the partitioner with the flag to change.
    """
    if not 0 <= test_fraction < 1:
        raise ConfigError(f"--test-fraction {test_fraction}: must be in [0, 1), e.g. 0.2 (0 = no central test set)")
    if augment < 0:
        raise ConfigError(f"--augment {augment}: give copies per example (1 = none) or 0 for automatic")
    data = load_dataset(name)
    stratify = data.y if data.is_classification else None
    if test_fraction == 0:  # every example goes to the sites, exactly as `fl-sim split` would deal them
        site_idx, test_idx = np.arange(len(data.y)), np.arange(0)
    else:
        from sklearn.model_selection import train_test_split

        site_idx, test_idx = train_test_split(np.arange(len(data.y)), test_size=test_fraction, random_state=seed,
                                              shuffle=True, stratify=stratify)
    greyscale = data.x.ndim == 3  # the jitter of augmented_copies is written for greyscale digits
    copies = augment or (auto_copies(len(site_idx), sites) if greyscale else 1)
    if copies > 1 and not greyscale:
        raise ConfigError(f"--augment {copies}: only the greyscale digits can be augmented, not {name}; "
                          "use --augment 1")
    return SimulationPool(_subset(data, np.sort(site_idx)), _subset(data, np.sort(test_idx)), copies, seed)
