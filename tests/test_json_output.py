"""``--json`` on `fl-server status`, `fl-client privacy` and `fl-sim tasks`: only JSON on stdout, the text's facts."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np

from conftest import run_cli
from fedshield.client.privacy_ledger import PrivacyLedger


def _both(*args: str) -> tuple[object, str]:
    """(the parsed ``--json`` output, the text output) of one command; stdout must be JSON and nothing else."""
    machine = run_cli(*args, "--json", timeout=120)
    assert machine.returncode == 0, machine.stderr
    text = run_cli(*args, timeout=120)
    assert text.returncode == 0, text.stderr
    return json.loads(machine.stdout), text.stdout


def test_sim_tasks_json_lists_the_tasks_the_text_lists() -> None:
    doc, text = _both("fl-sim", "tasks")
    assert isinstance(doc, list) and doc
    assert text.count("\n  data: ") == len(doc)
    for task in doc:
        marker = "" if task["builtin"] else " [plugin]"
        assert re.search(f"^{re.escape(task['name'] + marker)}: ", text, re.M), task
    assert {"digits-cnn", "tabular"} <= {t["name"] for t in doc}
    digits = next(t for t in doc if t["name"] == "digits-cnn")
    assert digits["builtin"] is True and "accuracy" in digits["metrics"] and digits["data"]
    assert f"  metrics: {', '.join(digits['metrics'])}" in text


def test_federation_status_json_says_what_the_text_says(tmp_path: Path) -> None:
    fed = tmp_path / "fed"
    assert run_cli("fl-server", "init", "--dir", str(fed), "--server-ip", "127.0.0.1", "--sites", "a",
                   "b").returncode == 0
    assert run_cli("fl-server", "revoke-site", "b", "--dir", str(fed)).returncode == 0
    doc, text = _both("fl-server", "status", "--dir", str(fed))
    assert isinstance(doc, dict)
    assert {name: s["status"] for name, s in doc["sites"].items()} == {"a": "enrolled", "b": "revoked"}
    for name, site in doc["sites"].items():
        assert f"site {name}: {site['status']} ({site['since']})" in text
    for label, cert in doc["certificates"].items():
        assert f"{label}: valid {cert['not_before']} .. {cert['not_after']} ({cert['days_left']} days left)" in text
    assert f"federation {doc['federation']} ({doc['id']}), server {doc['server']}" in text
    assert doc["warnings"] == []


def test_run_status_json_is_the_results_document(tmp_path: Path) -> None:
    results = {"status": "finished", "mode": "deployment", "task": "digits-cnn", "rounds": [], "final": {},
               "sites": {"a": {"examples": 10}}}
    (tmp_path / "results.json").write_text(json.dumps(results))
    doc, text = _both("fl-server", "status", "--run-dir", str(tmp_path))
    assert doc == results
    assert f"run {tmp_path}: finished (deployment, task digits-cnn)" in text


def test_privacy_json_carries_the_spent_and_left_the_text_prints(tmp_path: Path) -> None:
    data, state = tmp_path / "site", tmp_path / "site" / ".fedshield"
    data.mkdir()
    empty = run_cli("fl-client", "privacy", "--data", str(data), "--json")
    assert empty.returncode == 0 and json.loads(empty.stdout)["ledger"] is None, empty.stdout
    ledger = PrivacyLedger.open(state, epsilon_budget=8.0, delta=None, data_dir=data)
    ledger.fix_delta(1e-5)
    ledger.record_counts(ledger.draw_counts(400, 100, noise_multiplier=20.0, rng=np.random.default_rng(1)))
    plan = ledger.plan_run("r1", sample_rate=0.1, steps_per_round=10, rounds=1, evaluations=0,
                           private_statistics=False, metrics_cost=0.05)
    ledger.release(ledger.begin("r1", 1, "train", plan=plan, steps=10, allow_repeat=False))
    spent = ledger.epsilon_spent()
    doc, text = _both("fl-client", "privacy", "--data", str(data))
    assert isinstance(doc, dict)
    assert doc["epsilon_spent"] == spent and doc["epsilon_budget"] == 8.0
    assert f"ε spent {doc['epsilon_spent']:.4f} of budget {doc['epsilon_budget']:g}" in text
    assert f"ε left {doc['epsilon_left']:.4f}" in text
    assert [e["kind"] for e in doc["entries"]] == ["count", "train"]
    assert doc["exact_releases"] == 0
