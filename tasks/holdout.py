"""Seeded held-out validation split of a site's examples, stratified where the labels allow it."""

from __future__ import annotations

import numpy as np
from sklearn.model_selection import train_test_split

from fedshield.common.errors import DataError


def holdout_indices(n: int, labels: np.ndarray | None, *, val_fraction: float, seed: int,
                    where: str) -> tuple[np.ndarray, np.ndarray]:
    """(train, val) index arrays; stratified when every class has at least two examples."""
    if n < 2:
        raise DataError(f"{where}: only {n} example(s); a site needs at least 2 (one to train, one to validate)")
    idx = np.arange(n)
    n_val = min(n - 1, max(1, int(round(n * val_fraction))))
    stratify = None
    if labels is not None:
        _, counts = np.unique(labels, return_counts=True)
        if counts.min() >= 2 and n_val >= len(counts) and n - n_val >= len(counts):
            stratify = labels
    train, val = train_test_split(idx, test_size=n_val, random_state=seed, shuffle=True, stratify=stratify)
    return np.sort(train), np.sort(val)
