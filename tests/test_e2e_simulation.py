"""End to end on Flower's simulation engine (Ray): the deployment apps, simulated."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import run_cli

pytestmark = pytest.mark.slow


def test_tabular_breast_cancer_four_virtual_sites(tmp_path: Path) -> None:
    run_dir = tmp_path / "sim"
    proc = run_cli("fl-sim", "run", "--task", "tabular", "--clients", "4", "--rounds", "3", "--run-dir", str(run_dir),
                   "--epsilon", "8", "--local-epochs", "2", timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    doc = json.loads((run_dir / "results.json").read_text())
    assert doc["status"] == "finished" and doc["mode"] == "simulation"
    assert len(doc["sites"]) == 4 and doc["schema"]["schema-kind"] == "classification"
    rounds = {r["round"]: r for r in doc["rounds"]}
    assert sorted(rounds) == [0, 1, 2, 3]
    # the central test set: real examples no site holds, evaluated exactly by the server after every round
    assert rounds[3]["centralized"]["accuracy"] > 0.85 > rounds[0]["centralized"]["accuracy"]
    assert rounds[3]["centralized"]["roc_auc"] > 0.9
    # the sites' own evaluations are DP releases (about 23 held-out records a site: mostly noise at this size),
    # of per-record sums only: loss and accuracy, no ROC-AUC
    for site in rounds[3]["evaluate"]["sites"].values():
        assert site["site-metrics"] == "dp" and set(site) == {"examples", "loss", "accuracy", "site-metrics", "epsilon"}
        assert 0 <= site["accuracy"] <= 1
    assert "privacy" in doc and "exact_site_metrics" not in doc["privacy"]
    assert doc["total_sites"] == 4
    for site in rounds[3]["train"]["sites"].values():
        assert site["dp"] is True and 0 < site["epsilon"] <= 8 + 1e-6
    assert "round 3/3" in proc.stdout
    # the report: plots and a one-page summary, next to results.json
    for name in ("metrics", "epsilon", "confusion", "roc", "partition"):
        assert (run_dir / "plots" / f"{name}.png").read_bytes()[:4] == b"\x89PNG", name
    summary = (run_dir / "summary.md").read_text()
    assert "| 3 |" in summary and "central test" in summary and "![roc](plots/roc.png)" in summary


def test_virtual_sites_run_at_the_priority_of_the_simulation(tmp_path: Path) -> None:
    """Ray starts its workers at niceness 15; a virtual site is a Ray worker, so on a busy host any other
    process took the CPU from it (10 sites beside 8 busy loops on 2 cores: no reply to the first query in
    300 s). fl-sim's workers run at its own niceness."""
    import os
    import time

    import psutil

    from conftest import start_cli, stop_processes

    sim = start_cli("fl-sim", "run", "--task", "tabular", "--clients", "2", "--rounds", "1", "--no-plots",
                    "--run-dir", str(tmp_path / "sim"), log=tmp_path / "sim.out")
    seen: dict[int, int] = {}  # pid of a Ray worker process -> its niceness
    try:
        parent = psutil.Process(sim.pid)
        while sim.poll() is None:
            try:
                for child in parent.children(recursive=True):
                    try:
                        if child.cmdline()[:1] and child.cmdline()[0].startswith("ray::"):
                            seen[child.pid] = child.nice()
                    except psutil.Error:
                        pass  # ended between listing and reading
            except psutil.Error:
                break
            time.sleep(0.2)
        assert sim.wait(timeout=600) == 0, (tmp_path / "sim.out").read_text()[-3000:]
    finally:
        stop_processes(sim)
    assert seen, "no Ray worker process was seen"
    assert set(seen.values()) == {os.nice(0)}, seen
