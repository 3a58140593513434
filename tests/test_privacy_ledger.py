"""The site's privacy ledger: ε is Opacus' RDP accountant's over the whole history, across runs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from opacus.accountants import PRVAccountant, RDPAccountant

from fedshield.client.privacy_ledger import (
    LEDGER_FILE,
    BudgetExhaustedError,
    PrivacyLedger,
    ReplayRefusedError,
    epsilon_of,
)
from fedshield.common.errors import ConfigError


def _accountant_eps(history: list[tuple[float, float, int]], delta: float) -> float:
    acc = RDPAccountant()
    for sigma, q, steps in history:
        for _ in range(steps):
            acc.step(noise_multiplier=sigma, sample_rate=q)
    return acc.get_epsilon(delta)


def _plan(ledger: PrivacyLedger, run: str, *, q: float = 0.05, steps: int = 20, rounds: int = 3, evaluations: int = 0,
          stats: bool = False):
    return ledger.plan_run(run, sample_rate=q, steps_per_round=steps, rounds=rounds, evaluations=evaluations,
                           private_statistics=stats, metrics_cost=0.05)


def _train(ledger: PrivacyLedger, run: str, rnd: int, plan, **kw) -> None:
    ledger.release(ledger.begin(run, rnd, "train", plan=plan, steps=plan.steps_per_round, allow_repeat=False, **kw))


@pytest.mark.parametrize("sigma,q,steps,delta", [(1.0, 0.01, 100, 1e-5), (0.8, 0.05, 60, 1e-5), (2.0, 0.1, 300, 1e-6)])
def test_epsilon_equals_opacus_accountant_stepped_one_by_one(sigma, q, steps, delta) -> None:
    expected = _accountant_eps([(sigma, q, steps)], delta)
    assert epsilon_of([(sigma, q, steps)], delta) == pytest.approx(expected, rel=1e-9)


def test_a_gaussian_release_is_the_accountants_step_at_q_1() -> None:
    """Statistics and counts are recorded as (σ, 1.0, 1): Opacus' accountants compose them with DP-SGD."""
    history = [(1.1, 0.05, 60), (6.0, 1.0, 1), (20.0, 1.0, 1)]
    assert epsilon_of(history, 1e-5) == pytest.approx(_accountant_eps(history, 1e-5), rel=1e-9)
    prv = PRVAccountant()
    prv.history = list(history)
    assert epsilon_of(history, 1e-5, "prv") == pytest.approx(prv.get_epsilon(1e-5), rel=1e-9)
    # α/(2σ²) at every order: one Gaussian release with σ = 6 is ~ε 0.8 at δ = 1e-5 on its own
    assert 0.6 < epsilon_of([(6.0, 1.0, 1)], 1e-5) < 1.0


def test_plan_fits_budget_and_composes_across_runs(tmp_path: Path) -> None:
    ledger = PrivacyLedger.open(tmp_path, epsilon_budget=4.0, delta=1e-5)
    plan_a = _plan(ledger, "run-a")
    for rnd in (1, 2, 3):
        _train(ledger, "run-a", rnd, plan_a)
    ledger.close_run("run-a")
    spent_a = ledger.epsilon_spent()
    assert 3.8 < spent_a <= 4.0 + 1e-6  # the plan uses (almost) the whole budget, never more

    # a new process, a new run, a bigger budget: the earlier rounds still count
    again = PrivacyLedger.open(tmp_path, epsilon_budget=6.0, delta=1e-5)
    assert again.epsilon_spent() == pytest.approx(spent_a)
    plan_b = _plan(again, "run-b")
    for rnd in (1, 2, 3):
        _train(again, "run-b", rnd, plan_b)
    total = again.epsilon_spent()
    assert spent_a < total <= 6.0 + 1e-6
    history = [(plan_a.noise_multiplier, 0.05, 20)] * 3 + [(plan_b.noise_multiplier, 0.05, 20)] * 3
    assert total == pytest.approx(_accountant_eps(history, 1e-5), rel=1e-6)


def test_statistics_cost_at_most_the_declared_share_of_the_training_noise(tmp_path: Path) -> None:
    ledger = PrivacyLedger.open(tmp_path, epsilon_budget=8.0, delta=1e-5)
    without = _plan(ledger, "a", rounds=5, evaluations=6, stats=False)
    fresh = PrivacyLedger.open(tmp_path / "fresh", epsilon_budget=8.0, delta=1e-5)  # "a" reserves its budget here
    with_stats = _plan(fresh, "b", rounds=5, evaluations=6, stats=True)
    assert without.statistics_noise == 0 and with_stats.statistics_noise > 1
    assert without.noise_multiplier < with_stats.noise_multiplier <= without.noise_multiplier * 1.05 * 1.002
    full = [(with_stats.noise_multiplier, 0.05, 20 * 5), (with_stats.statistics_noise, 1.0, 5 + 6)]
    assert epsilon_of(full, 1e-5) <= 8.0 + 1e-6


def test_retried_pending_round_replaces_itself_and_killed_round_stays_counted(tmp_path: Path) -> None:
    ledger = PrivacyLedger.open(tmp_path, epsilon_budget=5.0, delta=1e-5)
    plan = _plan(ledger, "r", q=0.1, steps=10, rounds=2)
    ledger.begin("r", 1, "train", plan=plan, steps=10, allow_repeat=False)  # process killed here: "pending"
    reopened = PrivacyLedger.open(tmp_path, epsilon_budget=5.0, delta=1e-5)
    assert [e.status for e in reopened.entries] == ["pending"]
    pending_eps = reopened.epsilon_spent()
    assert pending_eps > 0  # conservatively counted
    _train(reopened, "r", 1, _plan(reopened, "r", q=0.1, steps=10, rounds=2))
    assert len(reopened.entries) == 1 and reopened.epsilon_spent() == pytest.approx(pending_eps)


def test_round_past_budget_is_refused_and_ledger_untouched(tmp_path: Path) -> None:
    ledger = PrivacyLedger.open(tmp_path, epsilon_budget=1.0, delta=1e-5)
    plan = _plan(ledger, "r", q=0.1, steps=10, rounds=1)
    _train(ledger, "r", 1, plan)
    before = (tmp_path / LEDGER_FILE).read_bytes()
    with pytest.raises(BudgetExhaustedError, match="budget"):
        ledger.begin("r", 2, "train", plan=plan, steps=10, allow_repeat=False)  # a round the plan did not include
    with pytest.raises(BudgetExhaustedError, match="budget"):
        _plan(PrivacyLedger.open(tmp_path, epsilon_budget=1.0, delta=1e-5), "s", q=0.1, steps=10, rounds=1)
    assert (tmp_path / LEDGER_FILE).read_bytes() == before


def test_replay_refused_unless_allowed_then_counted(tmp_path: Path) -> None:
    ledger = PrivacyLedger.open(tmp_path, epsilon_budget=8.0, delta=1e-5)
    plan = _plan(ledger, "r", rounds=3)
    _train(ledger, "r", 1, plan)
    once = ledger.epsilon_spent()
    with pytest.raises(ReplayRefusedError, match="already released"):
        ledger.begin("r", 1, "train", plan=plan, steps=20, allow_repeat=False)
    assert ledger.epsilon_spent() == once
    entry = ledger.begin("r", 1, "train", plan=plan, steps=20, allow_repeat=True)
    ledger.release(entry)
    assert entry.release == 2 and ledger.epsilon_spent() > once
    assert ledger.epsilon_spent() == pytest.approx(_accountant_eps([(plan.noise_multiplier, 0.05, 20)] * 2, 1e-5))


def test_counts_are_released_once_per_size_and_accounted(tmp_path: Path) -> None:
    ledger = PrivacyLedger.open(tmp_path, epsilon_budget=8.0, delta=1e-5)
    rng = np.random.default_rng(0)
    counts = ledger.draw_counts(480, 120, noise_multiplier=20.0, rng=rng)
    ledger.record_counts(counts)
    assert ledger.counts_for(480, 120) == counts and ledger.counts_for(481, 120) is None
    assert abs(counts.released_train - 480) < 100 and counts.released_val >= 1
    assert ledger.epsilon_spent() == pytest.approx(_accountant_eps([(20.0, 1.0, 1)], 1e-5))
    reopened = PrivacyLedger.open(tmp_path, epsilon_budget=8.0, delta=None)
    assert reopened.counts_for(480, 120) == counts and [e.kind for e in reopened.entries] == ["count"]


def test_ledger_file_is_private(tmp_path: Path) -> None:
    ledger = PrivacyLedger.open(tmp_path, epsilon_budget=3.0, delta=1e-5)
    plan = _plan(ledger, "r", q=0.1, steps=5, rounds=1)
    ledger.begin("r", 1, "train", plan=plan, steps=5, allow_repeat=False)
    assert (tmp_path / LEDGER_FILE).stat().st_mode & 0o777 == 0o600


def test_version_1_ledger_reads_as_rounds_with_exact_metrics(tmp_path: Path) -> None:
    """A ledger from before version 2 recorded DP-SGD only; its rounds' replies carried exact metrics."""
    v1 = {"format": "fedshield-privacy-ledger", "version": 1, "accountant": "rdp", "epsilon_budget": 8.0,
          "delta": 1e-5, "entries": [{"run_id": "r", "round": 1, "steps": 20, "sample_rate": 0.05,
                                      "noise_multiplier": 1.0, "status": "released", "recorded_at": 0.0}],
          "plans": {}}
    (tmp_path / LEDGER_FILE).write_text(json.dumps(v1))
    ledger = PrivacyLedger.open(tmp_path, epsilon_budget=None, delta=None, accountant=None)
    assert ledger.entries[0].kind == "train" and ledger.exact_releases() == 1
    assert ledger.epsilon_spent() == pytest.approx(_accountant_eps([(1.0, 0.05, 20)], 1e-5))


@pytest.mark.parametrize("content,match", [
    ("not json", "unreadable"),
    (json.dumps({"format": "something-else"}), "not a FedShield privacy ledger"),
    (json.dumps({"format": "fedshield-privacy-ledger", "version": 99, "entries": [], "delta": 1e-5}),
     "newer FedShield"),
    (json.dumps({"format": "fedshield-privacy-ledger", "version": 1, "entries": [{"bogus": 1}], "delta": 1e-5}),
     "corrupt"),
    (json.dumps({"format": "fedshield-privacy-ledger", "version": 2, "epsilon_budget": 8, "delta": 1e-5, "entries": [
        {"run_id": "r", "round": 1, "steps": -11, "sample_rate": 0.05, "noise_multiplier": 1.0}]}), "corrupt"),
])
def test_bad_ledger_files_are_refused_untouched(tmp_path: Path, content: str, match: str) -> None:
    (tmp_path / LEDGER_FILE).write_text(content)
    with pytest.raises(ConfigError, match=match):
        PrivacyLedger.open(tmp_path, epsilon_budget=3.0, delta=1e-5)
    assert (tmp_path / LEDGER_FILE).read_text() == content


def test_a_round_that_ran_more_steps_than_planned_is_recorded_as_it_ran_and_withheld_past_the_budget(
        tmp_path: Path) -> None:
    ledger = PrivacyLedger.open(tmp_path, epsilon_budget=2.0, delta=1e-5)
    plan = _plan(ledger, "r", q=0.1, steps=10, rounds=1)
    entry = ledger.begin("r", 1, "train", plan=plan, steps=10, allow_repeat=False)
    with pytest.raises(BudgetExhaustedError, match="withheld"):
        ledger.settle(entry, ran=[(plan.noise_multiplier, 0.1, 10)] * 5)  # five times the planned steps ran
    (recorded,) = PrivacyLedger.open(tmp_path, epsilon_budget=2.0, delta=1e-5).entries
    assert (recorded.steps, recorded.status) == (50, "pending")  # counted as it ran; nothing was released
    fits = PrivacyLedger.open(tmp_path / "b", epsilon_budget=2.0, delta=1e-5)
    plan = _plan(fits, "r", q=0.1, steps=10, rounds=1)
    entry = fits.begin("r", 1, "train", plan=plan, steps=10, allow_repeat=False)
    fits.settle(entry, ran=[(plan.noise_multiplier, 0.1, 9)])  # Opacus' int(1/q) steps: one fewer
    (recorded,) = PrivacyLedger.open(tmp_path / "b", epsilon_budget=2.0, delta=1e-5).entries
    assert (recorded.steps, recorded.status) == (9, "released")
