"""The audit log's chain: every edit, removal, reordering or truncation of one line is found, with its entry number.

Each case is what someone who can write the folder but does not hold the audit key can do: edit a value
(and recompute the hash, which needs no key), delete a line, swap two lines, cut the end off, replay an
old head, sign with a key of their own.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import stat
from pathlib import Path

import pytest

from conftest import run_cli
from fedshield.common.audit_key import ensure_key
from fedshield.common.audit_log import HEAD_FILE, LOG_FILE, AuditLog, entry_hash
from fedshield.common.audit_verify import verify_log

ENTRIES = 6


def _log(folder: Path, entries: int = ENTRIES) -> Path:
    key = folder / "key" / "audit.key"
    ensure_key(key)
    log = AuditLog(folder, key)
    for i in range(1, entries + 1):
        log.append("round", round=i, participants=["a", "b"], spent={"a": 0.1 * i})
    return folder


def _lines(folder: Path) -> list[bytes]:
    return (folder / LOG_FILE).read_bytes().splitlines(keepends=True)


def _write(folder: Path, lines: list[bytes]) -> None:
    (folder / LOG_FILE).write_bytes(b"".join(lines))


def test_an_intact_log_verifies_and_the_key_is_private(tmp_path: Path) -> None:
    folder = _log(tmp_path)
    report = verify_log(folder)
    assert report.intact, report.problem
    assert report.entries == ENTRIES and report.events == ("round",) * ENTRIES
    assert stat.S_IMODE(os.stat(folder / "key" / "audit.key").st_mode) == 0o600
    assert stat.S_IMODE(os.stat(folder / LOG_FILE).st_mode) == 0o600


@pytest.mark.parametrize("n", range(1, ENTRIES + 1))
def test_an_edited_entry_is_named(tmp_path: Path, n: int) -> None:
    folder = _log(tmp_path)
    lines = _lines(folder)
    entry = json.loads(lines[n - 1])
    entry["spent"] = {"a": 0.0}  # understate what a site spent, and recompute the hash (no key needed)
    entry["hash"] = entry_hash(entry)
    lines[n - 1] = json.dumps(entry).encode() + b"\n"
    _write(folder, lines)
    report = verify_log(folder)
    assert report.bad_entry == n and report.problem.startswith(f"entry {n}: altered"), report.problem


@pytest.mark.parametrize("n", range(1, ENTRIES + 1))
def test_a_removed_entry_is_named(tmp_path: Path, n: int) -> None:
    folder = _log(tmp_path)
    lines = _lines(folder)
    del lines[n - 1]
    _write(folder, lines)
    report = verify_log(folder)
    assert report.bad_entry == n and report.problem.startswith(f"entry {n}: removed"), report.problem


@pytest.mark.parametrize("n", range(1, ENTRIES))
def test_swapped_entries_are_named(tmp_path: Path, n: int) -> None:
    folder = _log(tmp_path)
    lines = _lines(folder)
    lines[n - 1], lines[n] = lines[n], lines[n - 1]
    _write(folder, lines)
    report = verify_log(folder)
    assert report.bad_entry == n and report.problem.startswith(f"entry {n}: reordered"), report.problem


def test_a_repeated_entry_is_named(tmp_path: Path) -> None:
    folder = _log(tmp_path)
    lines = _lines(folder)
    _write(folder, [*lines[:3], lines[2], *lines[3:]])
    report = verify_log(folder)
    assert report.bad_entry == 4 and report.problem.startswith("entry 4: reordered"), report.problem


@pytest.mark.parametrize("keep", range(0, ENTRIES))
def test_a_log_cut_short_is_caught_by_the_signed_head(tmp_path: Path, keep: int) -> None:
    folder = _log(tmp_path)
    _write(folder, _lines(folder)[:keep])
    report = verify_log(folder)
    assert report.bad_entry == keep + 1 and report.problem.startswith(f"entry {keep + 1}: removed"), report.problem


def test_an_old_head_with_a_forged_newer_one_is_refused(tmp_path: Path) -> None:
    folder = _log(tmp_path)
    head = json.loads((folder / HEAD_FILE).read_text())
    head["seq"] = ENTRIES - 1  # claim the log ends earlier, then cut it
    (folder / HEAD_FILE).write_text(json.dumps(head))
    _write(folder, _lines(folder)[:-1])
    report = verify_log(folder)
    assert not report.intact and "audit.head.json: altered" in report.problem
    (folder / HEAD_FILE).unlink()
    assert "missing" in verify_log(folder).problem


def test_a_log_rewritten_with_another_key_is_refused_against_the_pinned_key(tmp_path: Path) -> None:
    folder = _log(tmp_path / "real")
    pinned = tmp_path / "pinned.pub"
    pinned.write_bytes((folder / "audit.pub").read_bytes())
    forged = tmp_path / "forged"
    _log(forged, ENTRIES)  # the same events, signed with a key of the forger's own
    for name in (LOG_FILE, HEAD_FILE, "audit.pub"):
        (folder / name).write_bytes((forged / name).read_bytes())
    assert verify_log(folder).intact  # against the key in the folder: consistent...
    report = verify_log(folder, public_key=pinned)  # ...but not against the key the user pinned
    assert report.bad_entry == 1 and "signature" in report.problem


def test_a_torn_last_line_is_named_and_appending_goes_on(tmp_path: Path) -> None:
    folder = _log(tmp_path, 3)
    with open(folder / LOG_FILE, "ab") as fh:
        fh.write(b'{"seq":4,"ev')  # a crash in the middle of a write
    AuditLog(folder, tmp_path / "key" / "audit.key").append("run finished")
    report = verify_log(folder)
    assert report.bad_entry == 4 and report.problem.startswith("entry 4: altered"), report.problem


def _append_many(folder: str, key: str, worker: int) -> None:
    log = AuditLog(Path(folder), Path(key))
    for i in range(20):
        log.append("tick", worker=worker, i=i)


def test_processes_appending_at_once_keep_one_chain(tmp_path: Path) -> None:
    key = tmp_path / "audit.key"
    ensure_key(key)
    procs = [multiprocessing.get_context("spawn").Process(target=_append_many, args=(str(tmp_path), str(key), w))
             for w in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    report = verify_log(tmp_path)
    assert report.intact, report.problem
    assert report.entries == 80


def test_audit_verify_exit_codes_and_lines(tmp_path: Path) -> None:
    folder = _log(tmp_path)
    ok = run_cli("fl-server", "audit", "verify", str(folder))
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.strip().count("\n") == 0 and f"{ENTRIES} entries" in ok.stdout and "intact" in ok.stdout
    lines = _lines(folder)
    lines[1], lines[2] = lines[2], lines[1]
    _write(folder, lines)
    bad = run_cli("fl-server", "audit", "verify", str(folder))
    assert bad.returncode == 1
    assert "entry 2: reordered" in bad.stdout + bad.stderr
    missing = run_cli("fl-server", "audit", "verify", str(tmp_path / "nowhere"))
    assert missing.returncode == 2 and "no audit.jsonl" in missing.stderr


def test_a_sites_ledger_keeps_its_own_signed_log_of_what_it_released(tmp_path: Path) -> None:
    import numpy as np

    from fedshield.client.privacy_ledger import PrivacyLedger, ReplayRefusedError

    ledger = PrivacyLedger.open(tmp_path, epsilon_budget=8.0, delta=None)
    ledger.fix_delta(1e-5)
    ledger.record_counts(ledger.draw_counts(400, 100, noise_multiplier=20.0, rng=np.random.default_rng(1)))
    plan = ledger.plan_run("r1", sample_rate=0.1, steps_per_round=10, rounds=2, evaluations=0,
                           private_statistics=False, metrics_cost=0.05)
    ledger.release(ledger.begin("r1", 1, "train", plan=plan, steps=10, allow_repeat=False))
    with pytest.raises(ReplayRefusedError):  # a coordinator asking for round 1 again
        ledger.begin("r1", 1, "train", plan=plan, steps=10, allow_repeat=False)
    entries = [json.loads(line) for line in (tmp_path / LOG_FILE).read_text().splitlines()]
    assert [e["event"] for e in entries] == ["counts released", "released", "release refused"]
    assert entries[1]["epsilon_spent"] == pytest.approx(ledger.epsilon_spent())
    assert entries[1]["run"] == "r1" and entries[1]["round"] == 1 and entries[1]["steps"] == 10
    assert "replay" in entries[2]["reason"]
    assert stat.S_IMODE(os.stat(tmp_path / "audit.key").st_mode) == 0o600
    assert verify_log(tmp_path).intact


def test_a_flood_of_refusals_writes_a_bounded_number_of_entries_that_count_the_rest(tmp_path: Path) -> None:
    from fedshield.flower_ext.audit_refusals import RefusalLog

    key = tmp_path / "audit.key"
    ensure_key(key)
    refusals = RefusalLog(AuditLog(tmp_path, key), window_s=60.0, budget=3)
    admitted = [refusals.admit("run refused", f"10.0.0.{i % 5}", now=100.0 + i * 0.01) for i in range(1000)]
    assert [a for a in admitted if a is not None] == [0, 0, 0]  # 3 a window, whoever knocks
    assert refusals.admit("run refused", "10.0.0.0", now=161.0) == 199  # a window later: what was not written
    assert refusals.admit("run refused", "10.0.0.0", now=162.0) is None  # once a minute per peer
