"""SecAgg+ end to end on Flower's simulation engine: the same aggregate as plain FedAvg, masked on the way."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from conftest import run_cli

pytestmark = pytest.mark.slow


def test_secagg_round_equals_plaintext_fedavg_within_quantisation(tmp_path: Path) -> None:
    common = ["--clients", "3", "--rounds", "1", "--dirichlet", "0.5", "--no-dp", "--seed", "3"]
    plain = run_cli("fl-sim", "run", *common, "--run-dir", str(tmp_path / "plain"), timeout=600)
    assert plain.returncode == 0, plain.stderr[-3000:]
    secure = run_cli("fl-sim", "run", *common, "--secagg", "--secagg-shares", "2", "--run-dir",
                     str(tmp_path / "secagg"), timeout=600)
    assert secure.returncode == 0, secure.stderr[-3000:]

    doc = json.loads((tmp_path / "secagg" / "results.json").read_text())
    assert doc["status"] == "finished" and doc["config"]["secagg"] is True
    assert set(doc["rounds"][1]["train"]["sites"]) == {"site_0000", "site_0001", "site_0002"}
    stages = doc["rounds"][1]["secagg_stages_s"]  # the protocol's four exchanges, timed for the operator
    assert list(stages) == ["setup", "key shares", "masked updates", "unmasking"]
    assert all(v > 0 for v in stages.values())
    a = torch.load(tmp_path / "plain" / "checkpoints" / "round-001.pt", weights_only=True)["state_dict"]
    b = torch.load(tmp_path / "secagg" / "checkpoints" / "round-001.pt", weights_only=True)["state_dict"]
    worst = max(float((a[k].float() - b[k].float()).abs().max()) for k in a)
    moved = max(float((a[k].float() - b[k].float()).abs().max()) for k in a if a[k].is_floating_point())
    # equal up to SecAgg+'s quantisation (step 16 / 2**22 per site) and nothing else
    assert worst < 1e-4, worst
    assert moved > 0  # and it really went through quantisation and masking
