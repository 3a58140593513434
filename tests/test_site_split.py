"""`fl-sim split` writes loadable site folders atomically and refuses to overwrite."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from conftest import run_cli
from fedshield.client.site_check import check_site
from fedshield.common.errors import ConfigError
from fedshield.simulations.split import write_sites


@pytest.mark.parametrize("dataset,task,n", [("digits", "digits-cnn", 1797), ("breast-cancer", "tabular", 569),
                                            ("diabetes", "tabular", 442), ("shapes", "cifar-cnn", 3000)])
def test_split_writes_loadable_sites_covering_every_example(tmp_path: Path, dataset: str, task: str, n: int) -> None:
    sites = write_sites(dataset, 3, tmp_path / "out", dirichlet=0.5, seed=0)
    assert [p.name for p in sites] == ["hospital_a", "hospital_b", "hospital_c"]
    total = 0
    for site in sites:
        name, _, data = check_site(site, task=None, overrides={})
        assert name == task
        total += len(data.train) + len(data.val)
    assert total == n


def test_split_refuses_non_empty_out_and_leaves_nothing_behind(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(ConfigError, match="--out"):
        write_sites("digits", 3, out, dirichlet=None, seed=0)
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    with pytest.raises(ConfigError, match="positive"):
        write_sites("digits", 3, tmp_path / "new", dirichlet=0.0, seed=0)
    with pytest.raises(ConfigError, match="one distinct name per site"):
        write_sites("digits", 3, tmp_path / "new", dirichlet=None, seed=0, names=["a", "b"])
    with pytest.raises(ConfigError, match="not a plain folder name"):
        write_sites("digits", 2, tmp_path / "new", dirichlet=None, seed=0, names=["a", "../b"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_split_cli_and_its_errors(tmp_path: Path) -> None:
    ok = run_cli("fl-sim", "split", "--dataset", "breast-cancer", "--sites", "4", "--out", str(tmp_path / "bc"))
    assert ok.returncode == 0, ok.stderr
    assert len(list((tmp_path / "bc").iterdir())) == 4
    csv = (tmp_path / "bc" / "hospital_a" / "data.csv").read_text().splitlines()
    assert csv[0].endswith(",diagnosis") and len(csv) > 100
    bad = run_cli("fl-sim", "split", "--dataset", "mnist", "--sites", "2", "--out", str(tmp_path / "x"))
    assert bad.returncode == 2 and "--dataset 'mnist' is unknown" in bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1 and "Traceback" not in bad.stderr
    assert not (tmp_path / "x").exists()
    many = run_cli("fl-sim", "split", "--dataset", "diabetes", "--sites", "500", "--out", str(tmp_path / "y"))
    assert many.returncode == 2 and "more than the 442 examples" in many.stderr


def test_custom_names_and_many_sites(tmp_path: Path) -> None:
    named = write_sites("breast-cancer", 2, tmp_path / "n", dirichlet=None, seed=0, names=["north", "south"])
    assert [p.name for p in named] == ["north", "south"] and all((p / "data.csv").is_file() for p in named)
    many = write_sites("diabetes", 27, tmp_path / "m", dirichlet=None, seed=0)
    assert many[0].name == "site_0000" and many[-1].name == "site_0026"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m", "n"]  # no temporary folder left behind


def test_same_seed_same_sites(tmp_path: Path) -> None:
    a = write_sites("digits", 2, tmp_path / "a", dirichlet=0.3, seed=7)
    b = write_sites("digits", 2, tmp_path / "b", dirichlet=0.3, seed=7)
    for pa, pb in zip(a, b, strict=True):
        assert np.array_equal(np.load(pa / "data.npz")["y"], np.load(pb / "data.npz")["y"])
