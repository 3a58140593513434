"""Hostile enrolled sites against a real federation: the run completes, the model stays honest, the attacker is named.

Four real `fl-client join` processes on loopback; two of them run a modified ClientApp
(tests/hostile_site/sitecustomize.py, test-only) that trains and then sends a poisoned update. Before the
coordinator checked updates, one NaN update made every parameter NaN, a ×1e6 update took the model over,
a wrong-shaped array aborted the run, and a claim of 10⁹ examples took FedAvg's weight.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

from conftest import BIN, cli_env, digits_checkpoint_quality, run_cli, start_cli
from fedshield.common.net import free_port

pytestmark = pytest.mark.slow

HOSTILE = Path(__file__).parent / "hostile_site"


def _join(data: Path, port: int, tmp_path: Path, attack: str | None) -> subprocess.Popen[bytes]:
    args = ["join", "--data", str(data), "--server", f"127.0.0.1:{port}", "--insecure", "--epsilon", "8",
            "--threads", "1", "--state-dir", str(tmp_path / f"state-{data.name}"), "--connect-timeout", "120"]
    if attack is None:
        return start_cli("fl-client", *args, log=tmp_path / f"{data.name}.out")
    env = {**cli_env(), "PYTHONPATH": str(HOSTILE), "FEDSHIELD_TEST_ATTACK": attack}
    with open(tmp_path / f"{data.name}.out", "wb") as log:
        return subprocess.Popen([str(BIN / "fl-client"), *args], env=env, stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL)


def _federate(tmp_path: Path, digits_sites: Path, attacks: tuple[str, str], *server_flags: str) -> Path:
    """A 3-round digits-cnn run of four sites, hospital_c and hospital_d attacking with ``attacks``; its run folder."""
    shutil.copytree(digits_sites / "hospital_c", digits_sites / "hospital_d")
    port = free_port()
    run_dir = tmp_path / "run"
    server = start_cli("fl-server", "start", "--task", "digits-cnn", "--rounds", "3", "--min-clients", "4",
                       "--run-dir", str(run_dir), "--insecure", "--port", str(port), "--join-timeout", "300",
                       "--max-rejections", "2", *server_flags, log=tmp_path / "server.out")
    roles = {"hospital_a": None, "hospital_b": None, "hospital_c": attacks[0], "hospital_d": attacks[1]}
    sites = [_join(digits_sites / name, port, tmp_path, attack) for name, attack in roles.items()]
    try:
        assert server.wait(timeout=600) == 0, (tmp_path / "server.out").read_text()[-3000:]
    finally:
        for proc in [server, *sites]:
            if proc.poll() is None:
                proc.kill()
        for proc in sites:
            proc.wait(timeout=30)
    return run_dir


@pytest.mark.parametrize("attacks", [("nan", "count"), ("scale", "shape")], ids=["nan+count", "scale+shape"])
def test_a_federation_survives_two_hostile_sites_and_names_them(tmp_path: Path, digits_sites: Path,
                                                                attacks: tuple[str, str]) -> None:
    run_dir = _federate(tmp_path, digits_sites, attacks)
    doc = json.loads((run_dir / "results.json").read_text())
    assert doc["status"] == "finished"
    rounds = {r["round"]: r["train"] for r in doc["rounds"] if r["round"] > 0}
    for rnd, train in rounds.items():
        assert set(train["sites"]) == {"hospital_a", "hospital_b"}, (rnd, train)  # only honest updates aggregated
        reasons = {f["site"]: f["reason"] for f in train["failures"]}
        if rnd <= 2:  # rejected twice, then excluded: round 3 no longer samples them
            assert set(reasons) == {"hospital_c", "hospital_d"}, reasons
            assert all(r.startswith("update rejected: ") for r in reasons.values()), reasons
        else:
            assert reasons == {}, reasons
    first = {f["site"]: f["reason"] for f in rounds[1]["failures"]}
    expected = {"nan": "NaN or infinite", "count": "claims 1000000000 train examples",
                "scale": "above 100x the bound", "shape": "where the model has"}
    for site, attack in (("hospital_c", attacks[0]), ("hospital_d", attacks[1])):
        assert expected[attack] in first[site], first
    assert "excluded from the rest of the run" in {f["site"]: f["reason"] for f in rounds[2]["failures"]}["hospital_c"]
    # the global model: finite, and learning from the honest sites
    final = torch.load(run_dir / "model-final.pt", weights_only=True)["state_dict"]
    assert all(torch.isfinite(t).all() for t in final.values() if t.is_floating_point())
    norm = math.sqrt(sum(float((t.double() ** 2).sum()) for t in final.values() if t.is_floating_point()))
    assert norm < 1e3, norm
    start, end = digits_checkpoint_quality(run_dir, 0), digits_checkpoint_quality(run_dir, 3)
    assert end["roc_auc"] >= start["roc_auc"] + 0.15 and end["loss"] < start["loss"], (start, end)
    assert os.environ.get("FEDSHIELD_TEST_ATTACK") is None  # the attack stayed in the hostile processes
    # without trusted examples the coordinator says, before round 1, what its checks cannot see
    assert "no --trusted-data: updates are checked for shape, values, counts and norm, but a sign-flipped update " \
        "looks like an honest one" in (tmp_path / "server.out").read_text()


def test_trusted_data_refuses_two_sign_flippers_of_four(tmp_path: Path, digits_sites: Path) -> None:
    """Two of four enrolled sites negate their updates. No rule on the other sites' median can refuse half the
    federation; the coordinator's own update on examples it trusts (`--trusted-data`, a digits folder of its
    own) can: both flippers are refused from round 1 and excluded, both honest sites count in every round,
    and the model learns."""
    split = run_cli("fl-sim", "split", "--dataset", "digits", "--sites", "8", "--seed", "5", "--out",
                    str(tmp_path / "coordinator"))
    assert split.returncode == 0, split.stderr
    trusted = sorted((tmp_path / "coordinator").iterdir())[0]
    run_dir = _federate(tmp_path, digits_sites, ("sign-flip", "sign-flip"), "--trusted-data", str(trusted))
    doc = json.loads((run_dir / "results.json").read_text())
    assert doc["status"] == "finished"
    rounds = {r["round"]: r["train"] for r in doc["rounds"] if r["round"] > 0}
    for rnd, train in rounds.items():
        assert set(train["sites"]) == {"hospital_a", "hospital_b"}, (rnd, train)
        reasons = {f["site"]: f["reason"] for f in train["failures"]}
        assert set(reasons) == ({"hospital_c", "hospital_d"} if rnd <= 2 else set()), (rnd, reasons)
        assert all("away from the coordinator's update on its trusted examples" in r for r in reasons.values())
    start, end = digits_checkpoint_quality(run_dir, 0), digits_checkpoint_quality(run_dir, 3)
    assert end["roc_auc"] >= start["roc_auc"] + 0.15 and end["loss"] < start["loss"], (start, end)
    assert "no --trusted-data" not in (tmp_path / "server.out").read_text()
