"""Partitioners: every example once, reproducible, skew follows α."""

from __future__ import annotations

import numpy as np
import pytest

from fedshield.common.errors import ConfigError
from fedshield.simulations.partition import dirichlet_partition, iid_partition

LABELS = np.repeat(np.arange(10), 100)


def _skew(parts: list[np.ndarray]) -> float:
    """Mean over sites of the share of the site's most common label."""
    return float(np.mean([np.bincount(LABELS[p], minlength=10).max() / len(p) for p in parts]))


@pytest.mark.parametrize("make", [lambda s: iid_partition(LABELS, 7, s), lambda s: dirichlet_partition(LABELS, 7, 0.3, s)])
def test_every_example_assigned_once_and_seed_reproduces(make) -> None:
    parts = make(3)
    together = np.concatenate(parts)
    assert len(together) == len(LABELS) and len(np.unique(together)) == len(LABELS)
    assert all(np.array_equal(a, b) for a, b in zip(parts, make(3)))
    assert not all(np.array_equal(a, b) for a, b in zip(parts, make(4)))


def test_small_alpha_skews_labels_more_than_large_alpha() -> None:
    low = np.mean([_skew(dirichlet_partition(LABELS, 10, 0.1, s)) for s in range(5)])
    high = np.mean([_skew(dirichlet_partition(LABELS, 10, 100.0, s)) for s in range(5)])
    iid = _skew(iid_partition(LABELS, 10, 0))
    assert low > 0.5 > high and high < 0.2 and iid < 0.2


def test_regression_targets_are_binned_for_dirichlet() -> None:
    y = np.linspace(0.0, 1.0, 500)
    parts = dirichlet_partition(y, 5, 0.5, 0)
    assert sum(len(p) for p in parts) == 500 and min(len(p) for p in parts) >= 2


@pytest.mark.parametrize("call,match", [
    (lambda: dirichlet_partition(LABELS, 3, 0.0, 0), "positive"),
    (lambda: dirichlet_partition(LABELS, 3, -1.0, 0), "positive"),
    (lambda: iid_partition(LABELS[:5], 6, 0), "more than the 5 examples"),
])
def test_bad_partition_arguments(call, match) -> None:
    with pytest.raises(ConfigError, match=match):
        call()
