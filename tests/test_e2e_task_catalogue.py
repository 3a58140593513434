"""Every catalogue task, end to end: a 2-site simulation under DP-SGD (ε 8) learns in 2 rounds, and
`fl-client join` accepts a site folder in the task's documented format."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import run_cli

from fedshield.common.net import free_port

pytestmark = pytest.mark.slow

# task -> (headline metric, least gain over the initial model after 2 DP rounds); measured in the comment
CATALOGUE = {
    "cifar-cnn": ("accuracy", 0.08),  # measured 0.09 -> 0.28
    "text-transformer": ("accuracy", 0.08),  # measured 0.47 -> 0.73, 0.74 (ROC-AUC 0.41 -> 0.81, 0.82)
}


@pytest.mark.parametrize("task", sorted(CATALOGUE))
def test_two_private_rounds_improve_the_tasks_metric(tmp_path: Path, task: str) -> None:
    metric, gain = CATALOGUE[task]
    proc = run_cli("fl-sim", "run", "--task", task, "--clients", "2", "--rounds", "2", "--epsilon", "8",
                   "--run-dir", str(tmp_path / "run"), "--no-plots", timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    doc = json.loads((tmp_path / "run" / "results.json").read_text())
    rounds = {r["round"]: r for r in doc["rounds"]}
    first, last = rounds[0]["centralized"][metric], rounds[2]["centralized"][metric]
    assert last >= first + gain, f"{task}: central {metric} {first:.3f} -> {last:.3f}"
    for rnd in (1, 2):
        sites = rounds[rnd]["train"]["sites"].values()
        assert len(sites) == 2 and all(s["dp"] and 0 < s["epsilon"] <= 8 + 1e-6 for s in sites)


def _colour_png_site(folder: Path) -> Path:
    rng = np.random.default_rng(0)
    for label in ("cat", "dog"):
        for i in range(4):
            path = folder / "images" / label / f"{i}.jpg"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)).save(path)
    (folder / "fedshield.toml").write_text('labels = ["cat", "dog"]\n')
    return folder


def _text_csv_site(folder: Path) -> Path:
    folder.mkdir(parents=True)
    rows = [f'"review number {i}, it is {"great" if i % 2 else "awful"}",{i % 2}' for i in range(10)]
    (folder / "reviews.csv").write_text("text,label\n" + "\n".join(rows) + "\n")
    return folder


@pytest.mark.parametrize("make,task,examples", [(_colour_png_site, "cifar-cnn", 8),
                                                (_text_csv_site, "text-transformer", 10)])
def test_join_accepts_the_documented_site_format(tmp_path: Path, make, task: str, examples: int) -> None:
    """The site validates its folder and resolves the task before it connects (no server here: it gives up)."""
    site = make(tmp_path / "site")
    port = free_port()
    proc = run_cli("fl-client", "join", "--data", str(site), "--server", f"127.0.0.1:{port}", "--insecure",
                   "--connect-timeout", "2", "--state-dir", str(tmp_path / "state"), timeout=120)
    assert proc.returncode != 0 and "nothing answered within 2 s" in proc.stderr, proc.stdout + proc.stderr
    train = examples - round(examples * 0.2)
    assert f"{train} training / {examples - train} validation examples for task {task}" in " ".join(proc.stdout.split())
