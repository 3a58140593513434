"""Third-party tasks: the example plugin in tests/plugins, installed with pip, is listed by `fl-sim tasks`
and `fl-server tasks` and learns in a 2-site private simulation like a built-in task."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import run_cli

pytestmark = pytest.mark.slow
PLUGIN = Path(__file__).parent / "plugins" / "fedshield-digits-mlp"


@pytest.fixture(scope="module")
def plugin_path(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """pip-install the plugin into its own folder (not into the shared test environment, whose task
    list other tests check) and put that folder on PYTHONPATH for the CLIs: entry points are found
    there exactly as in site-packages. No build isolation: nothing is downloaded."""
    target = tmp_path_factory.mktemp("plugin") / "site-packages"
    build = tmp_path_factory.mktemp("plugin-build")
    source = shutil.copytree(PLUGIN, build / PLUGIN.name)  # setuptools builds in place: not in the repository
    proc = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                           "--target", str(target), str(source)], capture_output=True, text=True, cwd=build,
                          timeout=300, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert list(target.glob("fedshield_digits_mlp-*.dist-info/entry_points.txt"))
    return {"PYTHONPATH": str(target)}


def test_plugin_is_listed_with_its_format_and_metrics(plugin_path: dict[str, str]) -> None:
    for cli in ("fl-sim", "fl-server"):
        proc = run_cli(cli, "tasks", env=plugin_path)
        assert proc.returncode == 0, proc.stderr
        text = " ".join(proc.stdout.split())
        assert "digits-mlp [plugin]: Two-layer perceptron (784-64-10)" in text
        assert "data: data.npz with x (N×28×28 uint8)" in text and "metrics: loss, accuracy" in text
    assert "digits-mlp" not in run_cli("fl-sim", "tasks").stdout  # only where it is installed


def test_plugin_learns_in_a_private_two_site_simulation(plugin_path: dict[str, str], tmp_path: Path) -> None:
    proc = run_cli("fl-sim", "run", "--task", "digits-mlp", "--dataset", "digits", "--clients", "2", "--rounds", "2",
                   "--epsilon", "8", "--run-dir", str(tmp_path / "run"), "--no-plots", env=plugin_path, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    doc = json.loads((tmp_path / "run" / "results.json").read_text())
    rounds = {r["round"]: r for r in doc["rounds"]}
    first, last = rounds[0]["centralized"]["accuracy"], rounds[2]["centralized"]["accuracy"]
    assert last >= first + 0.3, f"central accuracy {first:.3f} -> {last:.3f}"
    sites = rounds[2]["train"]["sites"].values()
    assert len(sites) == 2 and all(s["dp"] and 0 < s["epsilon"] <= 8 + 1e-6 for s in sites)
