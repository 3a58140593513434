"""Read the ``x`` and ``y`` arrays of a site's ``data.npz``, with one-line errors naming the file."""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np

from fedshield.common.errors import DataError


def read_npz_xy(path: Path, x_hint: str) -> tuple[np.ndarray, np.ndarray]:
    """(x, y) as stored; ``x_hint`` describes the expected x in the error, e.g. ``N×28×28 uint8``."""
    try:
        with np.load(path, allow_pickle=False) as npz:
            missing = [k for k in ("x", "y") if k not in npz.files]
            if missing:
                raise DataError(f"{path}: missing array {missing[0]!r}; save x ({x_hint}) and y (N labels)")
            return npz["x"], npz["y"]
    except DataError:
        raise
    except (OSError, ValueError, EOFError, zipfile.BadZipFile):
        raise DataError(f"{path}: not a readable .npz archive of numeric arrays; write it with "
                        "numpy.savez(path, x=images, y=labels)") from None
