"""A corrupt, deleted or rolled-back privacy ledger is refused with one line, never read as a smaller ε.

Each case is what an attack or an accident leaves on disk: an edited value (negative steps gave ε −1,250,
a NaN noise multiplier hung `fl-client privacy` for over a minute), a δ that guarantees nothing, a
deleted ledger (a site silently started again at ε 0), an older backup restored, a fresh --state-dir
on the same data.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest

from conftest import run_cli
from fedshield.client.ledger_anchor import DATA_ANCHOR, STATE_ANCHOR
from fedshield.client.privacy_ledger import LEDGER_FILE, PrivacyLedger
from fedshield.common.errors import ConfigError


def _site_ledger(state: Path, data: Path | None = None, rounds: int = 2, released: int | None = None) -> float:
    """A real ledger: counts released, a run planned for ``rounds`` rounds, ``released`` of them (all) released;
    its ε."""
    ledger = PrivacyLedger.open(state, epsilon_budget=8.0, delta=None, data_dir=data)
    counts = ledger.draw_counts(500, 100, noise_multiplier=20.0, rng=np.random.default_rng(0))
    ledger.fix_delta(1e-5)
    ledger.record_counts(counts)
    plan = ledger.plan_run("run", sample_rate=0.05, steps_per_round=20, rounds=rounds, evaluations=0,
                           private_statistics=False, metrics_cost=0.05)
    for rnd in range(1, (rounds if released is None else released) + 1):
        ledger.release(ledger.begin("run", rnd, "train", plan=plan, steps=20, allow_repeat=False))
    return ledger.epsilon_spent()


def _edit(state: Path, change) -> None:
    path = state / LEDGER_FILE
    doc = json.loads(path.read_text())
    change(doc)
    path.write_text(json.dumps(doc))


@pytest.mark.parametrize("change,problem", [
    (lambda d: d["entries"][1].update(steps=-11), "steps"),
    (lambda d: d["entries"][1].update(steps=20.5), "wrong type"),
    (lambda d: d["entries"][1].update(noise_multiplier=math.nan), "not finite"),
    (lambda d: d["entries"][1].update(noise_multiplier=0.0), "without a sample rate or noise"),
    (lambda d: d["entries"][1].update(sample_rate=1.5), "out of range"),
    (lambda d: d["entries"][0].update(statistics_noise=-1.0), "out of range"),
    (lambda d: d["plans"]["run"].update(noise_multiplier=math.nan), "plan of run"),
    (lambda d: d["plans"]["run"].update(steps_per_round=-5), "plan of run"),
    (lambda d: d["counts"][0].update(released_train=0), "counts"),
    (lambda d: d.update(delta=0.5), "delta"),
    (lambda d: d.update(delta=0.005), "not below 1/N"),  # 1/500 = 0.002: δ allows publishing a record
    (lambda d: d.update(delta=math.nan), "delta"),
    (lambda d: d.update(epsilon_budget=math.inf), "epsilon_budget"),
    (lambda d: d.update(accountant="none"), "accountant"),
])
def test_an_edited_ledger_is_refused_untouched(tmp_path: Path, change, problem: str) -> None:
    _site_ledger(tmp_path)
    _edit(tmp_path, change)
    before = (tmp_path / LEDGER_FILE).read_text()
    with pytest.raises(ConfigError, match=f"corrupt.*{problem}"):
        PrivacyLedger.open(tmp_path, epsilon_budget=None, delta=None, accountant=None)
    assert (tmp_path / LEDGER_FILE).read_text() == before


def test_fl_client_privacy_refuses_a_nan_ledger_at_once_with_one_line(tmp_path: Path) -> None:
    """The hang: a NaN σ in a run's plan reached the accountant's search. Now one line, exit 2 (bad input)."""
    data, state = tmp_path / "site", tmp_path / "site" / ".fedshield"
    data.mkdir()
    _site_ledger(state, data)
    _edit(state, lambda d: d["plans"]["run"].update(noise_multiplier=math.nan))
    proc = run_cli("fl-client", "privacy", "--data", str(data), timeout=60)
    assert proc.returncode == 2
    assert len(proc.stderr.strip().splitlines()) == 1 and "corrupt" in proc.stderr and "restore" in proc.stderr


def test_a_deleted_ledger_is_noticed_by_the_anchor_beside_it(tmp_path: Path) -> None:
    spent = _site_ledger(tmp_path)
    (tmp_path / LEDGER_FILE).unlink()
    with pytest.raises(ConfigError, match=rf"is missing, but .*{STATE_ANCHOR} records 3 release\(s\) spending ε "
                                          rf"{spent:.3g}"):
        PrivacyLedger.open(tmp_path, epsilon_budget=8.0, delta=None)
    assert not (tmp_path / LEDGER_FILE).exists()


def test_an_older_backup_restored_over_the_ledger_is_refused(tmp_path: Path) -> None:
    _site_ledger(tmp_path, released=1)
    backup = (tmp_path / LEDGER_FILE).read_text()
    ledger = PrivacyLedger.open(tmp_path, epsilon_budget=8.0, delta=None)
    plan = ledger.plans["run"]
    ledger.release(ledger.begin("run", 2, "train", plan=plan, steps=20, allow_repeat=False))
    (tmp_path / LEDGER_FILE).write_text(backup)  # the round just released vanishes from the record
    with pytest.raises(ConfigError, match=r"holds 2 release\(s\), but .* records 3"):
        PrivacyLedger.open(tmp_path, epsilon_budget=8.0, delta=None)


def test_a_deleted_state_folder_or_a_fresh_state_dir_is_noticed_by_the_data_folders_anchor(tmp_path: Path) -> None:
    data = tmp_path / "hospital_a"
    data.mkdir()
    _site_ledger(data / ".fedshield", data)
    assert (data / DATA_ANCHOR).stat().st_mode & 0o777 == 0o600
    shutil.rmtree(data / ".fedshield")
    for state in (data / ".fedshield", tmp_path / "elsewhere"):
        with pytest.raises(ConfigError, match=f"is missing, but {data / DATA_ANCHOR}"):
            PrivacyLedger.open(state, epsilon_budget=8.0, delta=None, data_dir=data)
    proc = run_cli("fl-client", "privacy", "--data", str(data))  # not "no privacy ledger yet"
    assert proc.returncode == 2 and "is missing" in proc.stderr and "no privacy ledger yet" not in proc.stdout


def test_a_moved_ledger_is_accepted_and_only_deleting_the_anchor_starts_again(tmp_path: Path) -> None:
    data = tmp_path / "hospital_a"
    data.mkdir()
    spent = _site_ledger(data / ".fedshield", data)
    shutil.move(data / ".fedshield", tmp_path / "moved")  # an administrator moved the state folder
    moved = PrivacyLedger.open(tmp_path / "moved", epsilon_budget=8.0, delta=None, data_dir=data)
    assert moved.epsilon_spent() == pytest.approx(spent)
    (data / DATA_ANCHOR).unlink()  # the one deliberate way back to ε 0, which the refusal names
    fresh = PrivacyLedger.open(data / ".fedshield", epsilon_budget=8.0, delta=None, data_dir=data)
    assert fresh.entries == []


def test_a_crash_between_the_ledger_and_its_anchor_loses_nothing(tmp_path: Path) -> None:
    """The ledger is written first: a ledger ahead of its anchor is accepted and the anchor catches up."""
    _site_ledger(tmp_path, released=1)
    anchor = (tmp_path / STATE_ANCHOR).read_text()
    ledger = PrivacyLedger.open(tmp_path, epsilon_budget=8.0, delta=None)
    ledger.release(ledger.begin("run", 2, "train", plan=ledger.plans["run"], steps=20, allow_repeat=False))
    (tmp_path / STATE_ANCHOR).write_text(anchor)  # as if killed before the anchor's write
    reopened = PrivacyLedger.open(tmp_path, epsilon_budget=8.0, delta=None)
    assert len(reopened.entries) == 3
    reopened.close_run("run")
    assert json.loads((tmp_path / STATE_ANCHOR).read_text())["entries"] == 3


def test_a_damaged_anchor_is_refused(tmp_path: Path) -> None:
    _site_ledger(tmp_path)
    (tmp_path / STATE_ANCHOR).write_text('{"format": "fedshield-ledger-anchor", "entries": -1}')
    with pytest.raises(ConfigError, match="anchor is damaged"):
        PrivacyLedger.open(tmp_path, epsilon_budget=8.0, delta=None)
