"""Prepare one simulated federation's data: central test set, pool, partition, lazy site plan.

What ``fl-sim run`` (and every cell of ``fl-sim sweep``) does before Flower's engine starts. The
partition is computed here once, up front (indices only, O(examples) memory); site folders are
written later, only for sites the ServerApp samples (:mod:`fedshield.simulations.virtual_sites`).
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fedshield.common.atomic_io import atomic_write_bytes
from fedshield.common.errors import ConfigError
from fedshield.simulations.datasets import BundledDataset, simulation_pool
from fedshield.simulations.partition import PartitionSpec, label_counts, make_partition
from fedshield.simulations.virtual_sites import write_plan

PARTITION_FILE = "partition.npz"
#: ``--trusted-examples auto``: held-out examples per class the simulated coordinator keeps as trusted data
#: (digits: 100 of 360; 100 were measured in benchmarks/poisoning.py)
AUTO_PER_CLASS = 10


@dataclass(frozen=True)
class PreparedData:
    """The partition a run trains on: (sites, classes) counts, names, and the test set's size."""

    dataset: str
    names: list[str]
    counts: np.ndarray
    class_names: list[str]
    copies: int
    test_examples: int
    largest_site: int
    trusted_examples: int = 0
    trusted_note: str = ""  # why ``--trusted-examples auto`` gave the coordinator none

    @property
    def sizes(self) -> np.ndarray:
        return self.counts.sum(axis=1)


def virtual_site_names(n: int) -> list[str]:
    """site_0000, site_0001, ...: the names virtual site ``partition-id`` maps to."""
    return [f"site_{i:04d}" for i in range(n)]


def prepare_data(run_dir: Path, dataset: str, sites: int, spec: PartitionSpec, *, seed: int,
                 test_fraction: float, augment: int, trusted_examples: int | None = 0) -> PreparedData:
    """Write ``<run_dir>/data`` (plan + test set, and ``trusted_examples`` of the held-out examples as the
    coordinator's trusted folder; None: :func:`auto_trusted_count` of them) and ``<run_dir>/partition.npz``
    (counts per site)."""
    pool = simulation_pool(dataset, sites=sites, test_fraction=test_fraction, augment=augment, seed=seed)
    trusted_note = ""
    if trusted_examples is None:
        trusted_examples, trusted_note = auto_trusted_count(pool.test)
    trusted = trusted_indices(pool.test, trusted_examples, seed) if trusted_examples else None
    labels = pool.labels
    parts = make_partition(labels, sites, spec, seed)
    names = virtual_site_names(sites)
    counts, class_names = label_counts(labels, parts)
    write_plan(run_dir / "data", pool, parts, names,
               {"partition": spec.to_dict(), "seed": seed, "copies": pool.copies, "test_fraction": test_fraction,
                "test_examples": int(len(pool.test.y)) - trusted_examples, "trusted_examples": trusted_examples},
               trusted)
    buffer = io.BytesIO()
    np.savez(buffer, counts=counts, class_names=np.array(class_names), names=np.array(names))
    atomic_write_bytes(run_dir / PARTITION_FILE, buffer.getvalue())
    return PreparedData(dataset, names, counts, class_names, pool.copies, int(len(pool.test.y)) - trusted_examples,
                        int(max(len(p) for p in parts)), trusted_examples, trusted_note)


def auto_trusted_count(test: BundledDataset) -> tuple[int, str]:
    """``--trusted-examples auto``: :data:`AUTO_PER_CLASS` held-out examples per class for the coordinator, at
    most a third of the held-out share (the rest stays the central test set); 0 and why where there is no
    held-out share, the data are not labelled by class, or a third of it holds fewer than one per class."""
    held = len(test.y)
    if held == 0:
        return 0, "--test-fraction 0 holds nothing out"
    if not test.is_classification:
        return 0, "the data are not labelled by class"
    classes = len(np.unique(test.y))
    count = min(AUTO_PER_CLASS * classes, held // 3)
    if count < classes:
        return 0, f"a third of the {held} held-out examples is less than one per class"
    return count, ""


def trusted_indices(test: BundledDataset, count: int, seed: int) -> np.ndarray:
    """``count`` of the held-out examples (stratified by class) for the coordinator's trusted folder
    (``fl-sim run --trusted-examples``); at most half of them, so a central test set remains."""
    held = len(test.y)
    if held == 0:
        raise ConfigError(f"--trusted-examples {count}: the coordinator's examples come from the held-out share, "
                          "and --test-fraction is 0; give --test-fraction 0.2 or more")
    if count > held // 2:
        raise ConfigError(f"--trusted-examples {count}: at most {held // 2} (half of the {held} held-out "
                          "examples, so a central test set remains); give fewer or raise --test-fraction")
    if not test.is_classification:
        return np.random.default_rng(seed).choice(held, size=count, replace=False)
    classes = len(np.unique(test.y))
    if count < classes:
        raise ConfigError(f"--trusted-examples {count}: at least one per class ({classes}); give {classes} or more")
    from sklearn.model_selection import train_test_split

    _, picked = train_test_split(np.arange(held), test_size=count, random_state=seed, shuffle=True, stratify=test.y)
    return np.sort(picked)
