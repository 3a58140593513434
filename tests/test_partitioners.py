"""Partitioners: every example once, reproducible, skew follows α."""

from __future__ import annotations

import numpy as np
import pytest

from fedshield.common.errors import ConfigError
from fedshield.simulations.partition import (
    PartitionSpec,
    dirichlet_partition,
    iid_partition,
    label_counts,
    make_partition,
    quantity_skew_partition,
    shard_partition,
    spec_from_flags,
)

LABELS = np.repeat(np.arange(10), 100)


def _skew(parts: list[np.ndarray]) -> float:
    """Mean over sites of the share of the site's most common label."""
    return float(np.mean([np.bincount(LABELS[p], minlength=10).max() / len(p) for p in parts]))


@pytest.mark.parametrize("make", [lambda s: iid_partition(LABELS, 7, s),
                                  lambda s: dirichlet_partition(LABELS, 7, 0.3, s)])
def test_every_example_assigned_once_and_seed_reproduces(make) -> None:
    parts = make(3)
    together = np.concatenate(parts)
    assert len(together) == len(LABELS) and len(np.unique(together)) == len(LABELS)
    assert all(np.array_equal(a, b) for a, b in zip(parts, make(3), strict=True))
    assert not all(np.array_equal(a, b) for a, b in zip(parts, make(4), strict=True))


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


# ------------------------------------------------------------------ shards, quantity skew, dispatch


@pytest.mark.parametrize("spec", [PartitionSpec("iid"), PartitionSpec("dirichlet", alpha=0.3),
                                  PartitionSpec("shards", shards=2), PartitionSpec("quantity", beta=0.5)])
def test_every_partitioner_assigns_each_example_once_reproducibly(spec: PartitionSpec) -> None:
    parts = make_partition(LABELS, 20, spec, seed=5)
    together = np.concatenate(parts)
    assert len(together) == len(LABELS) and len(np.unique(together)) == len(LABELS)
    assert min(len(p) for p in parts) >= 2
    again = make_partition(LABELS, 20, spec, seed=5)
    assert all(np.array_equal(a, b) for a, b in zip(parts, again, strict=True))


def test_shards_give_each_site_at_most_k_labels() -> None:
    for k in (1, 2, 3):
        parts = shard_partition(LABELS, 10, k, seed=0)
        assert max(len(np.unique(LABELS[p])) for p in parts) <= k
        assert max(len(p) for p in parts) - min(len(p) for p in parts) <= k  # near-equal sites


def test_quantity_skew_makes_sizes_unequal_but_labels_iid() -> None:
    def spread(beta: float) -> float:
        sizes = [len(p) for p in quantity_skew_partition(LABELS, 10, beta, 0)]
        return max(sizes) / min(sizes)

    assert spread(0.3) > 5 and spread(1000.0) < 1.5
    parts = quantity_skew_partition(LABELS, 5, 1000.0, 0)
    assert max(_skew([p]) for p in parts) < 0.25  # no label dominates a site


def test_thousand_sites_from_few_examples_get_at_least_two_each() -> None:
    labels = np.repeat(np.arange(10), 1800)
    parts = make_partition(labels, 1000, PartitionSpec("dirichlet", alpha=0.3), seed=0)
    sizes = np.array([len(p) for p in parts])
    assert sizes.min() >= 2 and sizes.sum() == len(labels)
    counts, names = label_counts(labels, parts)
    assert counts.shape == (1000, 10) and names[0] == "0" and counts.sum() == len(labels)
    assert (counts > 0).sum(axis=1).mean() < 7  # α = 0.3: sites see only some labels


@pytest.mark.parametrize("flags,match", [
    ({"iid": True, "dirichlet": 0.5}, "exclude each other"),
    ({"partition": "shards"}, "needs --shards"),
    ({"partition": "dirichlet", "shards": 2}, "does not take --shards"),
    ({"partition": "zipf"}, "unknown"),
])
def test_partition_flags_are_checked(flags, match) -> None:
    args = {"partition": None, "iid": False, "dirichlet": None, "shards": None, "quantity_skew": None, **flags}
    with pytest.raises(ConfigError, match=match):
        spec_from_flags(**args)


@pytest.mark.parametrize("call,match", [
    (lambda: shard_partition(LABELS, 500, 3, 0), "needs 1500 shards"),
    (lambda: shard_partition(LABELS, 10, 0, 0), "at least 1 shard"),
    (lambda: quantity_skew_partition(LABELS, 10, 0.0, 0), "β must be positive"),
    (lambda: quantity_skew_partition(LABELS, 600, 1.0, 0), "cannot give every site 2"),
])
def test_partitions_that_would_leave_a_site_empty_are_refused(call, match) -> None:
    with pytest.raises(ConfigError, match=match):
        call()
