"""The site's privacy ledger: ε is Opacus' RDP accountant's over the whole history, across runs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from opacus.accountants import RDPAccountant

from fedshield.client.privacy_ledger import LEDGER_FILE, BudgetExhaustedError, PrivacyLedger, epsilon_of
from fedshield.common.errors import ConfigError


def _accountant_eps(history: list[tuple[float, float, int]], delta: float) -> float:
    acc = RDPAccountant()
    for sigma, q, steps in history:
        for _ in range(steps):
            acc.step(noise_multiplier=sigma, sample_rate=q)
    return acc.get_epsilon(delta)


@pytest.mark.parametrize("sigma,q,steps,delta", [(1.0, 0.01, 100, 1e-5), (0.8, 0.05, 60, 1e-5), (2.0, 0.1, 300, 1e-6)])
def test_epsilon_equals_opacus_accountant_stepped_one_by_one(sigma, q, steps, delta) -> None:
    assert epsilon_of([(sigma, q, steps)], delta) == pytest.approx(_accountant_eps([(sigma, q, steps)], delta), rel=1e-9)


def test_plan_fits_budget_and_composes_across_runs(tmp_path: Path) -> None:
    ledger = PrivacyLedger.open(tmp_path, epsilon_budget=4.0, delta=1e-5)
    plan_a = ledger.plan_run("run-a", sample_rate=0.05, steps_per_round=20, rounds=3)
    for rnd in (1, 2, 3):
        ledger.release_round(ledger.begin_round("run-a", rnd, steps=20, plan=plan_a))
    spent_a = ledger.epsilon_spent()
    assert 3.8 < spent_a <= 4.0 + 1e-6  # the plan uses (almost) the whole budget, never more

    # a new process, a new run, a bigger budget: the earlier rounds still count
    again = PrivacyLedger.open(tmp_path, epsilon_budget=6.0, delta=1e-5)
    assert again.epsilon_spent() == pytest.approx(spent_a)
    plan_b = again.plan_run("run-b", sample_rate=0.05, steps_per_round=20, rounds=3)
    for rnd in (1, 2, 3):
        again.release_round(again.begin_round("run-b", rnd, steps=20, plan=plan_b))
    total = again.epsilon_spent()
    assert spent_a < total <= 6.0 + 1e-6
    history = [(plan_a.noise_multiplier, 0.05, 20)] * 3 + [(plan_b.noise_multiplier, 0.05, 20)] * 3
    assert total == pytest.approx(_accountant_eps(history, 1e-5), rel=1e-6)


def test_retried_round_is_not_counted_twice_and_killed_round_stays_counted(tmp_path: Path) -> None:
    ledger = PrivacyLedger.open(tmp_path, epsilon_budget=5.0, delta=1e-5)
    plan = ledger.plan_run("r", sample_rate=0.1, steps_per_round=10, rounds=2)
    ledger.begin_round("r", 1, steps=10, plan=plan)  # process killed here: entry stays "pending"
    reopened = PrivacyLedger.open(tmp_path, epsilon_budget=5.0, delta=1e-5)
    assert [e.status for e in reopened.entries] == ["pending"]
    pending_eps = reopened.epsilon_spent()
    assert pending_eps > 0  # conservatively counted
    reopened.release_round(reopened.begin_round("r", 1, steps=10, plan=reopened.plan_run("r", sample_rate=0.1, steps_per_round=10, rounds=2)))
    assert len(reopened.entries) == 1 and reopened.epsilon_spent() == pytest.approx(pending_eps)


def test_round_past_budget_is_refused_and_ledger_untouched(tmp_path: Path) -> None:
    ledger = PrivacyLedger.open(tmp_path, epsilon_budget=1.0, delta=1e-5)
    plan = ledger.plan_run("r", sample_rate=0.1, steps_per_round=10, rounds=1)
    ledger.release_round(ledger.begin_round("r", 1, steps=10, plan=plan))
    before = (tmp_path / LEDGER_FILE).read_bytes()
    with pytest.raises(BudgetExhaustedError, match="budget"):
        ledger.begin_round("r", 2, steps=10, plan=plan)  # a round the plan did not include
    with pytest.raises(BudgetExhaustedError, match="budget"):
        PrivacyLedger.open(tmp_path, epsilon_budget=1.0, delta=1e-5).plan_run("s", sample_rate=0.1, steps_per_round=10, rounds=1)
    assert (tmp_path / LEDGER_FILE).read_bytes() == before


def test_ledger_file_is_private(tmp_path: Path) -> None:
    ledger = PrivacyLedger.open(tmp_path, epsilon_budget=3.0, delta=1e-5)
    plan = ledger.plan_run("r", sample_rate=0.1, steps_per_round=5, rounds=1)
    ledger.begin_round("r", 1, steps=5, plan=plan)
    assert (tmp_path / LEDGER_FILE).stat().st_mode & 0o777 == 0o600


@pytest.mark.parametrize("content,match", [
    ("not json", "unreadable"),
    (json.dumps({"format": "something-else"}), "not a FedShield privacy ledger"),
    (json.dumps({"format": "fedshield-privacy-ledger", "version": 99, "entries": [], "delta": 1e-5}), "newer FedShield"),
    (json.dumps({"format": "fedshield-privacy-ledger", "version": 1, "entries": [{"bogus": 1}], "delta": 1e-5}), "corrupt"),
])
def test_bad_ledger_files_are_refused_untouched(tmp_path: Path, content: str, match: str) -> None:
    (tmp_path / LEDGER_FILE).write_text(content)
    with pytest.raises(ConfigError, match=match):
        PrivacyLedger.open(tmp_path, epsilon_budget=3.0, delta=1e-5)
    assert (tmp_path / LEDGER_FILE).read_text() == content
