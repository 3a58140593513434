"""kill -9 in the middle of a DP round: the restarted site continues its ledger, nothing lost or doubled."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import torch

from fedshield.client.local_training import PrivacySettings, train_round
from fedshield.client.privacy_ledger import LEDGER_FILE, PrivacyLedger, epsilon_of
from fedshield.common.run_config import RunConfig
from fedshield.simulations.datasets import load_dataset
from fedshield.tasks.base import DataSchema, SiteData, TaskOptions
from fedshield.tasks.registry import get_task

SCRIPT = textwrap.dedent("""
    import sys, torch
    from pathlib import Path
    from torch.utils.data import TensorDataset
    from fedshield.client.local_training import PrivacySettings, train_round
    from fedshield.common.run_config import RunConfig
    from fedshield.simulations.datasets import load_dataset
    from fedshield.tasks.base import DataSchema, SiteData, TaskOptions
    from fedshield.tasks.registry import get_task
    d = load_dataset("digits")
    x = torch.as_tensor(d.x[:300], dtype=torch.float32).unsqueeze(1) / 255
    y = torch.as_tensor(d.y[:300])
    site = SiteData(TensorDataset(x, y), TensorDataset(x, y), DataSchema("classification", (1, 28, 28), 10), Path("."))
    task = get_task("digits-cnn")
    if sys.argv[3] == "slow":  # stand-in for a long local round: the process is killed inside it
        import time
        original = task.train
        task.train = lambda *a, **k: (time.sleep(600), original(*a, **k))[1]
    cfg = RunConfig(rounds=3, local_epochs=1, batch_size=32, lr=0.5)
    privacy = PrivacySettings(True, 8.0, 1e-5, 1.0, Path(sys.argv[1]))
    for rnd in range(1, int(sys.argv[2]) + 1):
        train_round(task, site, task.build_model(site.schema, TaskOptions()), cfg, run_id="run-1", rnd=rnd,
                    privacy=privacy, device=torch.device("cpu"))
""")


def _site() -> SiteData:
    d = load_dataset("digits")
    x = torch.as_tensor(d.x[:300], dtype=torch.float32).unsqueeze(1) / 255
    y = torch.as_tensor(d.y[:300])
    from torch.utils.data import TensorDataset

    return SiteData(TensorDataset(x, y), TensorDataset(x, y), DataSchema("classification", (1, 28, 28), 10), Path("."))


def test_kill_9_mid_round_then_restart(tmp_path: Path) -> None:
    state = tmp_path / "state"
    # round 1 completes; round 2 is a long one, killed with SIGKILL while it trains
    subprocess.run([sys.executable, "-c", SCRIPT, str(state), "1", "fast"], check=True, timeout=300)
    after_round_1 = json.loads((state / LEDGER_FILE).read_text())
    assert [(e["kind"], e["status"]) for e in after_round_1["entries"]] == [("count", "released"),
                                                                            ("train", "released")]
    proc = subprocess.Popen([sys.executable, "-c", SCRIPT.replace('range(1, int(sys.argv[2]) + 1)', 'range(2, 3)'),
                             str(state), "2", "slow"])
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        entries = [e for e in json.loads((state / LEDGER_FILE).read_text())["entries"] if e["kind"] == "train"]
        if len(entries) == 2:
            break
        time.sleep(0.05)
    assert [e["status"] for e in entries] == ["released", "pending"]  # recorded before training
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    # the ledger file is whole (atomic writes) and still counts the killed round
    killed = PrivacyLedger.open(state, epsilon_budget=8.0, delta=None)
    assert [e.status for e in killed.entries if e.kind == "train"] == ["released", "pending"]
    eps_killed = killed.epsilon_spent()
    released_only = [m for e in killed.entries if e.status == "released" for m in e.mechanisms()]
    assert eps_killed > epsilon_of(released_only, killed.delta)  # the killed round still counts

    # restart: round 2 again (same run), then round 3; each round counted exactly once
    task = get_task("digits-cnn")
    site = _site()
    cfg = RunConfig(rounds=3, local_epochs=1, batch_size=32, lr=0.5)
    privacy = PrivacySettings(True, 8.0, 1e-5, 1.0, state)
    for rnd in (2, 3):
        train_round(task, site, task.build_model(site.schema, TaskOptions()), cfg, run_id="run-1", rnd=rnd,
                    privacy=privacy, device=torch.device("cpu"))
    final = PrivacyLedger.open(state, epsilon_budget=8.0, delta=None)
    assert [(e.round, e.status) for e in final.entries if e.kind == "train"] == [(1, "released"), (2, "released"),
                                                                                (3, "released")]
    assert final.plans["run-1"].noise_multiplier == after_round_1["plans"]["run-1"]["noise_multiplier"]
    assert final.epsilon_spent() <= 8.0 + 1e-6
