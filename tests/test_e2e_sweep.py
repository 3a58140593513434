"""`fl-sim sweep`: a small grid end to end, resumed without re-running finished cells, and its report."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from conftest import run_cli

pytestmark = pytest.mark.slow


def _rows(folder: Path) -> dict[str, dict[str, str]]:
    with open(folder / "sweep.csv") as fh:
        return {row["key"]: row for row in csv.DictReader(fh)}


def test_sweep_runs_every_cell_once_and_reports(tmp_path: Path) -> None:
    out = tmp_path / "sweep"
    common = ["sweep", "--task", "tabular", "--clients", "3", "--rounds", "2", "--local-epochs", "2", "--out", str(out)]
    first = run_cli("fl-sim", *common, "--epsilon", "8", timeout=600)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    assert sorted(_rows(out)) == ["eps-8_iid_per-all_fedavg_seed-0"]
    finished = (out / "cells" / "eps-8_iid_per-all_fedavg_seed-0" / "results.json").stat().st_mtime_ns

    # extend the grid; a half-written cell (a crash) is started over, finished cells are not re-run
    partial = out / "cells" / "eps-inf_iid_per-all_fedavg_seed-0"
    partial.mkdir(parents=True)
    (partial / "results.json").write_text('{"status": "running"}')
    second = run_cli("fl-sim", *common, "--epsilon", "8,inf", timeout=600)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    assert "2 cells, 1 already finished, 1 to run" in second.stdout
    assert (out / "cells" / "eps-8_iid_per-all_fedavg_seed-0" / "results.json").stat().st_mtime_ns == finished
    rows = _rows(out)
    assert sorted(rows) == ["eps-8_iid_per-all_fedavg_seed-0", "eps-inf_iid_per-all_fedavg_seed-0"]
    for row in rows.values():
        assert row["status"] == "finished" and float(row["central"]) > 0.8
        assert float(row["central"]) > float(row["initial_federated"])
    assert 0 < float(rows["eps-8_iid_per-all_fedavg_seed-0"]["epsilon_spent"]) <= 8 + 1e-6
    assert rows["eps-inf_iid_per-all_fedavg_seed-0"]["epsilon_spent"] == ""
    assert (out / "plots" / "privacy_utility.png").read_bytes()[:4] == b"\x89PNG"
    assert "| 8 |" in (out / "summary.md").read_text() and "∞ (no DP)" in (out / "summary.md").read_text()
    assert json.loads((out / "sweep-results.json").read_text())["sweep"]["epsilons"] == [8.0, "inf"]

    # the report redraws from files; a cell is a run folder with its own report
    report = run_cli("fl-sim", "report", str(out))
    assert report.returncode == 0 and "privacy_utility.png" in report.stdout
    cell_report = run_cli("fl-sim", "report", str(out / "cells" / "eps-inf_iid_per-all_fedavg_seed-0"))
    assert cell_report.returncode == 0 and (partial / "plots" / "roc.png").is_file()

    # a sweep folder of another task is refused before anything runs
    other = run_cli("fl-sim", "sweep", "--task", "digits-cnn", "--clients", "3", "--rounds", "2", "--out", str(out))
    assert other.returncode == 2 and "holds a sweep of task 'tabular'" in other.stderr
    assert len(other.stderr.strip().splitlines()) == 1
