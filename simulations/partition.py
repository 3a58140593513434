"""Split example indices across sites: IID, or label-skewed by a Dirichlet prior.

Dirichlet label skew follows Hsu, Qi & Brown 2019, "Measuring the Effects of Non-Identical Data
Distribution for Federated Visual Classification": for each class, the share each site receives is
drawn from Dir(α·1); small α gives each site few classes, large α approaches IID. Regression targets
are binned into quantiles first. Every index is assigned exactly once; the same seed gives the same
partition.
"""

from __future__ import annotations

import numpy as np

from fedshield.common.errors import ConfigError

MAX_TRIES = 100
REGRESSION_BINS = 5


def _check(n_examples: int, n_sites: int) -> None:
    if n_sites < 1:
        raise ConfigError("--sites must be at least 1")
    if n_sites > n_examples:
        raise ConfigError(f"--sites {n_sites} is more than the {n_examples} examples; use fewer sites")


def iid_partition(labels: np.ndarray, n_sites: int, seed: int) -> list[np.ndarray]:
    """Shuffle and deal indices into ``n_sites`` near-equal parts."""
    _check(len(labels), n_sites)
    order = np.random.default_rng(seed).permutation(len(labels))
    return [np.sort(part) for part in np.array_split(order, n_sites)]


def label_bins(labels: np.ndarray) -> np.ndarray:
    """Class labels as they are; real-valued targets as quantile bins."""
    labels = np.asarray(labels)
    if np.issubdtype(labels.dtype, np.integer):
        return labels
    edges = np.quantile(labels, np.linspace(0, 1, REGRESSION_BINS + 1)[1:-1])
    return np.digitize(labels, edges)


def dirichlet_partition(labels: np.ndarray, n_sites: int, alpha: float, seed: int,
                        min_size: int = 2) -> list[np.ndarray]:
    """Label-skewed partition; every site gets at least ``min_size`` examples."""
    if not alpha > 0:
        raise ConfigError(f"--dirichlet {alpha}: α must be positive (small = more skew, e.g. 0.1-1.0)")
    _check(len(labels), n_sites)
    if n_sites * min_size > len(labels):
        raise ConfigError(f"--sites {n_sites}: {len(labels)} examples cannot give every site {min_size}; use fewer sites")
    bins = label_bins(labels)
    rng = np.random.default_rng(seed)
    for _ in range(MAX_TRIES):
        parts: list[list[int]] = [[] for _ in range(n_sites)]
        for cls in np.unique(bins):
            idx = rng.permutation(np.flatnonzero(bins == cls))
            shares = rng.dirichlet(np.full(n_sites, alpha))
            cuts = (np.cumsum(shares)[:-1] * len(idx)).astype(int)
            for site, chunk in enumerate(np.split(idx, cuts)):
                parts[site].extend(chunk.tolist())
        if min(len(p) for p in parts) >= min_size:
            return [np.sort(np.asarray(p, dtype=np.int64)) for p in parts]
    raise ConfigError(f"--dirichlet {alpha} with --sites {n_sites} keeps leaving a site with fewer than "
                      f"{min_size} examples; raise α or use fewer sites")
