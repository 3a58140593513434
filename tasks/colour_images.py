"""Read and validate a site's colour images: ``data.npz`` or ``images/<label>/*.png|jpg``, any size.

Every image is resized (bilinear) to ``side``×``side`` RGB. The label set is the site's
``fedshield.toml`` ``labels`` (class names in index order), by default ``"0"``…``"9"``; a label
folder or an ``npz`` label outside it is an error, as is a greyscale image among colour ones.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from fedshield.common.errors import DataError
from fedshield.tasks.npz_arrays import read_npz_xy

DEFAULT_LABELS = tuple(str(i) for i in range(10))
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


def label_set(extra: dict[str, object]) -> tuple[str, ...]:
    """The class names of a site: ``labels`` from its ``fedshield.toml``, or 0-9."""
    labels = extra.get("labels")
    return tuple(str(n) for n in labels) if isinstance(labels, list) and labels else DEFAULT_LABELS


def _resize(x: np.ndarray, side: int) -> np.ndarray:
    """(N, H, W, 3) uint8 → (N, side, side, 3) uint8, bilinear; unchanged when already that size."""
    if x.shape[1:3] == (side, side):
        return x
    return np.stack([np.asarray(Image.fromarray(img).resize((side, side), Image.Resampling.BILINEAR)) for img in x])


def load_npz(path: Path, *, side: int, labels: tuple[str, ...]) -> tuple[np.ndarray, np.ndarray]:
    """x (N, H, W, 3) uint8 of any H, W and y (N,) class indices → (N, side, side, 3), (N,) int64."""
    x, y = read_npz_xy(path, "N×H×W×3 uint8")
    if x.ndim != 4 or x.shape[-1] != 3:
        raise DataError(f"{path}: x has shape {x.shape}; colour images must be N×H×W×3 (RGB, channels last)")
    if x.dtype != np.uint8:
        raise DataError(f"{path}: x has dtype {x.dtype}; use uint8 pixel values 0-255")
    if y.ndim != 1 or len(y) != len(x):
        raise DataError(f"{path}: y has shape {y.shape} but x holds {len(x)} images; one label per image")
    if not np.issubdtype(y.dtype, np.integer):
        raise DataError(f"{path}: y has dtype {y.dtype}; labels must be integer class indices")
    bad = np.flatnonzero((y < 0) | (y >= len(labels)))
    if bad.size:
        raise DataError(f"{path}: label {y[bad[0]]} at index {bad[0]} is outside 0-{len(labels) - 1}; the task's "
                        f"label set has {len(labels)} classes (set labels = [...] in fedshield.toml)")
    return _resize(x, side), y.astype(np.int64)


def load_folders(folder: Path, *, side: int, labels: tuple[str, ...]) -> tuple[np.ndarray, np.ndarray]:
    """``folder/<label>/*.png|jpg`` → (N, side, side, 3) uint8, (N,) int64 indices into ``labels``."""
    index = {name: i for i, name in enumerate(labels)}
    xs, ys = [], []
    first_colour: Path | None = None
    for label_dir in sorted(p for p in folder.iterdir() if p.is_dir()):
        if label_dir.name not in index:
            raise DataError(f"{label_dir}: label {label_dir.name!r} is not in the task's label set "
                            f"({', '.join(labels)}); rename the folder or set labels = [...] in fedshield.toml")
        for img_path in sorted(p for p in label_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES):
            try:
                with Image.open(img_path) as img:
                    mode = img.mode
                    if mode in ("L", "LA", "1", "I", "I;16", "F"):
                        where = f" while {first_colour} is colour" if first_colour else ""
                        raise DataError(f"{img_path}: greyscale image{where}; this task needs colour (RGB) images, "
                                        "convert it (e.g. PIL .convert('RGB')) or use digits-cnn for greyscale")
                    rgb = img.convert("RGB").resize((side, side), Image.Resampling.BILINEAR)
                    xs.append(np.asarray(rgb, dtype=np.uint8))
            except (UnidentifiedImageError, OSError) as exc:
                raise DataError(f"{img_path}: not a readable image ({exc}); re-export or remove it") from None
            first_colour = first_colour or img_path
            ys.append(index[label_dir.name])
    if not xs:
        raise DataError(f"{folder}: no PNG/JPEG images in images/<label>/; add images or use data.npz")
    return np.stack(xs), np.asarray(ys, dtype=np.int64)
