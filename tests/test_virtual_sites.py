"""Lazy virtual sites: one plan on disk, a site's folder written only when it is served."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest

from fedshield.client.site_session import identify_site, load_site
from fedshield.common.errors import ConfigError
from fedshield.common.run_config import RunConfig
from fedshield.simulations.datasets import augment_images, auto_copies, load_dataset, simulation_pool
from fedshield.simulations.partition import PartitionSpec
from fedshield.simulations.run_setup import prepare_data
from fedshield.simulations.virtual_sites import NpyRows, materialize_site, site_indices


def test_sites_are_built_on_first_use_with_exactly_their_partition(tmp_path: Path) -> None:
    prepared = prepare_data(tmp_path, "digits", 40, PartitionSpec("dirichlet", alpha=0.5), seed=1,
                            test_fraction=0.2, augment=1)
    data = tmp_path / "data"
    assert not list(data.glob("site_*"))  # nothing per site up front
    assert prepared.counts.shape == (40, 10) and prepared.sizes.sum() == 1797 - prepared.test_examples
    cfg = RunConfig(task="digits-cnn", sim_data_dir=str(data), seed=1)
    node_config = {"partition-id": 7, "num-partitions": 40}
    site = identify_site(node_config, cfg)
    assert not site.data_path.exists()  # identifying a site (e.g. for a notice) builds nothing
    # the simulation's first ClientApp mod writes the folder before the site's own code reads it
    from flwr.app import Context, RecordDict

    from fedshield.simulations.virtual_sites import VirtualSiteFolders

    context = Context(run_id=1, node_id=7, node_config=node_config, state=RecordDict(), run_config={})
    _, _, loaded = VirtualSiteFolders(str(data))(None, context, lambda msg, ctx: load_site(site, cfg))  # type: ignore[arg-type]
    assert sorted(p.name for p in data.glob("site_*")) == ["site_0007"]
    assert len(loaded.train) + len(loaded.val) == prepared.sizes[7]
    pool_y = np.load(data / "pool" / "y.npy")
    expected = np.bincount(pool_y[site_indices(data, 7)], minlength=10)
    got = np.bincount(np.load(data / "site_0007" / "data.npz")["y"], minlength=10)
    assert np.array_equal(expected, got) and np.array_equal(got, prepared.counts[7])


def test_auto_trusted_examples_are_ten_per_class_out_of_the_test_set(tmp_path: Path) -> None:
    """`fl-sim run --trusted-examples auto` (the default): the coordinator keeps ten held-out examples per class,
    none of which is tested on; none where nothing is held out or the targets are no classes."""
    prepared = prepare_data(tmp_path / "d", "digits", 3, PartitionSpec("iid"), seed=0, test_fraction=0.2, augment=1,
                            trusted_examples=None)
    trusted = np.load(tmp_path / "d" / "data" / "trusted" / "data.npz")
    test = np.load(tmp_path / "d" / "data" / "test" / "data.npz")
    assert prepared.trusted_examples == 100 and np.array_equal(np.bincount(trusted["y"]), np.full(10, 10))
    assert prepared.test_examples == len(test["y"]) == 360 - 100
    assert not {row.tobytes() for row in trusted["x"]} & {row.tobytes() for row in test["x"]}
    none = prepare_data(tmp_path / "n", "digits", 3, PartitionSpec("iid"), seed=0, test_fraction=0.0, augment=1,
                        trusted_examples=None)
    assert none.trusted_examples == 0 and "--test-fraction 0" in none.trusted_note
    regression = prepare_data(tmp_path / "r", "diabetes", 3, PartitionSpec("iid"), seed=0, test_fraction=0.2,
                              augment=1, trusted_examples=None)
    assert regression.trusted_examples == 0 and "not labelled by class" in regression.trusted_note
    assert not (tmp_path / "r" / "data" / "trusted").exists()


def test_no_test_fraction_deals_every_example_as_fl_sim_split_does(tmp_path: Path) -> None:
    from fedshield.simulations.split import write_sites

    spec = PartitionSpec("dirichlet", alpha=0.5)
    prepare_data(tmp_path / "sim", "digits", 3, spec, seed=0, test_fraction=0.0, augment=1)
    assert not (tmp_path / "sim" / "data" / "test").exists()  # no central test set to evaluate on
    folders = write_sites("digits", 3, tmp_path / "split", dirichlet=0.5, seed=0)
    for i, folder in enumerate(folders):
        split = np.load(folder / "data.npz")
        sim = np.load(materialize_site(tmp_path / "sim" / "data", i) / "data.npz")
        assert np.array_equal(split["x"], sim["x"]) and np.array_equal(split["y"], sim["y"])


def test_concurrent_builders_of_one_site_agree(tmp_path: Path) -> None:
    prepare_data(tmp_path, "breast-cancer", 5, PartitionSpec(), seed=0, test_fraction=0.2, augment=1)
    folders: list[Path] = []
    threads = [threading.Thread(target=lambda: folders.append(materialize_site(tmp_path / "data", 3)))
               for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(folders)) == 1 and (folders[0] / "data.csv").is_file()
    assert not [p for p in (tmp_path / "data").iterdir() if p.name.startswith(".")]  # no temporary folders left


def test_central_test_set_is_real_and_held_out_of_every_site() -> None:
    pool = simulation_pool("digits", sites=1000, test_fraction=0.2, augment=0, seed=0)
    real = load_dataset("digits")
    assert pool.copies == auto_copies(len(real.y) - len(pool.test.y), 1000) and pool.copies > 1
    assert len(pool.labels) == pool.copies * (len(real.y) - len(pool.test.y)) == pool.copies * len(pool.real.y)
    assert len(pool.labels) / 1000 >= 16
    # every test image is a real digit that is not among the sites' real examples
    site_real = {bytes(x) for x in pool.real.x}
    assert not any(bytes(x) in site_real for x in pool.test.x)
    real_set = {bytes(x) for x in real.x}
    assert all(bytes(x) in real_set for x in pool.test.x)


def test_pool_file_streams_every_copy(tmp_path: Path) -> None:
    pool = simulation_pool("digits", sites=300, test_fraction=0.2, augment=3, seed=4)
    pool.write_x(tmp_path / "x.npy")
    x = np.load(tmp_path / "x.npy")
    assert x.shape == (3 * len(pool.real.y), 28, 28)
    assert np.array_equal(x, augment_images(pool.real.x, 3, seed=4))
    rows = NpyRows(tmp_path / "x.npy")
    idx = np.array([5, 0, len(x) - 1, 5])
    assert np.array_equal(rows.take(idx), x[idx])


def test_augmented_copies_differ_but_keep_shape_and_ink() -> None:
    x = load_dataset("digits").x[:50]
    out = augment_images(x, 3, seed=0)
    assert out.shape == (150, 28, 28) and out.dtype == np.uint8
    assert np.array_equal(out[:50], x) and not np.array_equal(out[50:100], x)
    ink = x.astype(float).sum(axis=(1, 2))
    moved = out[50:100].astype(float).sum(axis=(1, 2))
    assert np.all(np.abs(moved / ink - 1) < 0.35)  # a jittered digit, not noise
    assert np.array_equal(augment_images(x, 3, seed=0), out)


def test_tabular_data_cannot_be_augmented_and_bad_fractions_are_refused() -> None:
    with pytest.raises(ConfigError, match="only the greyscale digits can be augmented"):
        simulation_pool("breast-cancer", sites=10, test_fraction=0.2, augment=3, seed=0)
    with pytest.raises(ConfigError, match="--test-fraction"):
        simulation_pool("digits", sites=10, test_fraction=1.0, augment=1, seed=0)
