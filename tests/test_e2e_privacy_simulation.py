"""Privacy end to end in simulation: a spent site refuses, central DP is accounted, evaluate survives."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import run_cli
from fedshield.client.privacy_ledger import PrivacyLedger, epsilon_of

pytestmark = pytest.mark.slow


def test_site_with_spent_budget_refuses_and_federation_finishes(tmp_path: Path) -> None:
    run_dir, states = tmp_path / "sim", tmp_path / "ledgers"
    spent = PrivacyLedger.open(states / "site_0001", epsilon_budget=1.0, delta=1e-5)
    plan = spent.plan_run("earlier-run", sample_rate=0.1, steps_per_round=50, rounds=1, evaluations=0,
                          private_statistics=False, metrics_cost=0.05)
    spent.release(spent.begin("earlier-run", 1, "train", plan=plan, steps=50, allow_repeat=False))
    proc = run_cli("fl-sim", "run", "--task", "tabular", "--clients", "3", "--rounds", "2", "--run-dir", str(run_dir),
                   "--epsilon", "1", "--state-dir", str(states), timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    doc = json.loads((run_dir / "results.json").read_text())
    assert doc["status"] == "finished" and not (run_dir / "site-state").exists()
    for rnd in (r for r in doc["rounds"] if "train" in r):
        assert set(rnd["train"]["sites"]) == {"site_0000", "site_0002"}
        (failure,) = rnd["train"]["failures"]
        assert failure["site"] == "site_0001" and "budget" in failure["reason"]
        assert "\n" not in failure["reason"] and len(failure["reason"]) < 400
        for site in rnd["train"]["sites"].values():
            assert site["epsilon"] <= 1.0 + 1e-6
    # the refusing site's ledger is unchanged: it spent nothing more
    assert PrivacyLedger.open(states / "site_0001", epsilon_budget=1.0, delta=1e-5).entries == spent.entries
    # the sites that trained recorded this run in the shared state folder, so a next run composes on it
    assert [e.run_id for e in PrivacyLedger.open(states / "site_0000", epsilon_budget=1.0, delta=1e-5).entries]
    # at ε = 1 and ~30 held-out records per site the sites' released metrics are mostly noise; the central
    # test set (real records no site holds) shows the model learned
    assert doc["final"]["centralized"]["accuracy"] > 0.8


@pytest.mark.parametrize("side", ["server", "client"])
def test_central_dp_reports_client_level_epsilon_and_evaluate_works(tmp_path: Path, side: str) -> None:
    run_dir = tmp_path / "sim"
    proc = run_cli("fl-sim", "run", "--task", "tabular", "--clients", "3", "--rounds", "2", "--run-dir", str(run_dir),
                   "--central-dp", "fixed", "--central-dp-side", side, "--noise-multiplier", "0.3", "--clip", "5.0",
                   timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    doc = json.loads((run_dir / "results.json").read_text())
    assert doc["privacy"]["central_dp"] == "fixed" and doc["privacy"]["central_dp_side"] == side
    rounds = {r["round"]: r for r in doc["rounds"]}
    for rnd in (1, 2):
        assert rounds[rnd]["train"]["failures"] == [] and len(rounds[rnd]["evaluate"]["sites"]) == 3
        assert rounds[rnd]["evaluate"]["failures"] == []
        # every site sampled every round: q = 1, the Gaussian mechanism composed rnd times
        assert rounds[rnd]["train"]["client_level_epsilon"] == pytest.approx(epsilon_of([(0.3, 1.0, rnd)], 1e-5))
    assert doc["final"]["client_level_epsilon"] == pytest.approx(epsilon_of([(0.3, 1.0, 2)], 1e-5))
