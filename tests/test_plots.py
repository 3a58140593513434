"""The report plots: each writes one valid PNG of a sensible size, atomically, for ordinary and edge-case inputs."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fedshield.simulations import plots


def _check_png(returned: Path, expected: Path) -> None:
    assert Path(returned) == expected
    assert expected.is_file()
    assert expected.read_bytes()[:4] == b"\x89PNG"
    with Image.open(expected) as image:
        width, height = image.size
    assert width > 200 and height > 200, (width, height)
    leftovers = [p.name for p in expected.parent.iterdir() if p.name != expected.name]
    assert leftovers == [], leftovers


def _results_doc(n_sites: int = 12, rounds: int = 3, dp: bool = True, regression: bool = False) -> dict:
    rng = np.random.default_rng(0)

    def metrics(r: int) -> dict:
        if regression:
            return {"loss": 1.0 / (r + 1), "mse": 1.0 / (r + 1), "mae": 0.8 / (r + 1), "r2": 0.2 * r}
        return {"loss": 2.0 / (r + 1), "accuracy": 0.3 + 0.15 * r}

    entries = [{"round": 0, "evaluate": {"aggregate": metrics(0)}, "centralized": metrics(0)}]
    for r in range(1, rounds + 1):
        sites = {}
        for s in range(n_sites):
            if (s + r) % 3 == 0:  # some sites skip some rounds
                continue
            info = {"examples": 50, "train-loss": 1.0 / r}
            if dp:
                info["epsilon"] = 0.5 * r + 0.01 * s
            sites[f"site_{s:04d}"] = info
        entries.append({
            "round": r,
            "train": {"sites": sites, "loss": 1.5 / r + float(rng.random()) * 0.01},
            "evaluate": {"aggregate": metrics(r)},
            "centralized": {**metrics(r), "loss": None} if r == 2 else metrics(r),
        })
    return {"task": "tabular-regression" if regression else "digits", "rounds": entries}


def test_metrics_per_round(tmp_path: Path) -> None:
    out = tmp_path / "a" / "metrics.png"
    _check_png(plots.plot_metrics_per_round(_results_doc(), out), out)


def test_metrics_per_round_regression_and_empty(tmp_path: Path) -> None:
    out = tmp_path / "reg" / "metrics.png"
    _check_png(plots.plot_metrics_per_round(_results_doc(regression=True), out), out)
    empty = tmp_path / "empty" / "metrics.png"
    _check_png(plots.plot_metrics_per_round({"task": "digits", "rounds": []}, empty), empty)


@pytest.mark.parametrize("n_sites", [4, 12, 30])
def test_epsilon_per_site(tmp_path: Path, n_sites: int) -> None:
    out = tmp_path / "epsilon.png"
    _check_png(plots.plot_epsilon_per_site(_results_doc(n_sites=n_sites), out), out)


def test_epsilon_dp_off(tmp_path: Path) -> None:
    out = tmp_path / "epsilon.png"
    _check_png(plots.plot_epsilon_per_site(_results_doc(dp=False), out), out)


def test_confusion_matrix(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    y = rng.integers(0, 10, 300)
    pred = np.where(rng.random(300) < 0.7, y, rng.integers(0, 10, 300))
    out = tmp_path / "confusion.png"
    _check_png(plots.plot_confusion_matrix(y, pred, [str(i) for i in range(10)], out), out)


def _probs(rng: np.random.Generator, y: np.ndarray, k: int) -> np.ndarray:
    logits = rng.normal(size=(y.size, k))
    logits[np.arange(y.size), y] += 1.5
    e = np.exp(logits)
    return e / e.sum(axis=1, keepdims=True)


@pytest.mark.parametrize("k", [2, 10])
def test_roc(tmp_path: Path, k: int) -> None:
    rng = np.random.default_rng(2)
    y = rng.integers(0, k - 1 if k > 2 else k, 200)  # with 10 classes, class 9 is absent and skipped
    out = tmp_path / "roc.png"
    _check_png(plots.plot_roc(y, _probs(rng, y, k), out), out)


def test_roc_single_class(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    y = np.zeros(50, dtype=int)
    out = tmp_path / "roc.png"
    _check_png(plots.plot_roc(y, _probs(rng, y, 3), out), out)


def test_regression_fit(tmp_path: Path) -> None:
    rng = np.random.default_rng(4)
    y = rng.normal(size=150)
    out = tmp_path / "fit.png"
    _check_png(plots.plot_regression_fit(y, (y + 0.3 * rng.normal(size=150))[:, None], out), out)


@pytest.mark.parametrize("shape", [(200, 10), (8, 3)])
def test_partition_heatmap(tmp_path: Path, shape: tuple[int, int]) -> None:
    rng = np.random.default_rng(5)
    counts = rng.integers(0, 40, size=shape)
    out = tmp_path / "partition.png"
    returned = plots.plot_partition_heatmap(counts, [f"c{i}" for i in range(shape[1])], out, title="test partition")
    _check_png(returned, out)


def _pu_rows() -> list[dict]:
    rows = []
    for dirichlet in (0.1, 1.0):
        for eps in (1.0, 4.0, 16.0, math.inf):
            for seed in range(3):
                acc = 0.9 - 0.2 / eps  # 0.9 without DP
                rows.append({"epsilon": eps, "accuracy": acc - 0.05 * dirichlet + 0.01 * seed, "seed": seed,
                             "dirichlet": dirichlet})
    rows.append({"epsilon": 4.0, "accuracy": None, "seed": 9, "dirichlet": 0.1})  # unfinished: skipped
    return rows


def test_privacy_utility_groups(tmp_path: Path) -> None:
    out = tmp_path / "plots" / "privacy_utility.png"
    _check_png(plots.plot_privacy_utility(_pu_rows(), out, metric="accuracy", group_keys=("dirichlet",)), out)


def test_privacy_utility_edge_cases(tmp_path: Path) -> None:
    only_inf = [{"epsilon": math.inf, "accuracy": 0.8 + 0.01 * s, "seed": s} for s in range(3)]
    out = tmp_path / "inf" / "pu.png"
    _check_png(plots.plot_privacy_utility(only_inf, out), out)
    none = tmp_path / "none" / "pu.png"
    _check_png(plots.plot_privacy_utility([], none, metric="r2"), none)
