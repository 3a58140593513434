"""`--track tensorboard:DIR` and `--track mlflow:DIR` on `fl-sim run`, `fl-sim sweep` and `fl-server start`, end to end.

Every run is read back with the back ends' own readers (TensorBoard's event accumulator, MLflow's client on
the local SQLite store, no server): each round's metrics equal results.json's, the configuration is there as
parameters, and the final model and plots as artifacts.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from tracking_readers import mlflow_history, mlflow_runs, tensorboard_run

from conftest import run_cli, start_cli, stop_processes, wait_or_kill
from fedshield.common.net import free_port
from fedshield.common.track_spec import TrackSpec
from fedshield.common.tracked_metrics import round_metrics, run_params

pytestmark = pytest.mark.slow


def _expected(doc: dict[str, Any]) -> dict[str, dict[int, float]]:
    """metric -> {round: value}, straight from results.json's fields (the names of docs/simulation.md)."""
    out: dict[str, dict[int, float]] = {}

    def put(name: str, rnd: int, value: Any) -> None:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            out.setdefault(name, {})[rnd] = float(value)

    for entry in doc["rounds"]:
        rnd = entry["round"]
        for key, value in entry.get("evaluate", {}).get("aggregate", {}).items():
            put(f"global/evaluate/{key}", rnd, value)
        for key, value in (entry.get("centralized") or {}).items():
            put(f"global/centralized/{key}", rnd, value)
        train = entry.get("train", {})
        put("global/train/loss", rnd, train.get("loss"))
        put("privacy/epsilon_max", rnd, train.get("epsilon_max"))
        for part in ("train", "evaluate"):
            for site, values in entry.get(part, {}).get("sites", {}).items():
                for key, value in values.items():
                    put(f"site/{site}/{part}/{key}", rnd, value)
        put("time/round_s", rnd, entry["finished_at"] - entry["started_at"])
    return out


def _assert_same(logged: dict[str, dict[int, float]], doc: dict[str, Any]) -> None:
    expected = _expected(doc)
    all_names = {name for entry in doc["rounds"] for name in round_metrics(entry)}
    assert set(logged) == all_names
    for name, per_round in expected.items():
        assert logged[name] == pytest.approx(per_round, rel=1e-6, abs=1e-6), name
    assert sorted(logged["global/evaluate/accuracy"]) == [e["round"] for e in doc["rounds"]]


def _assert_private(logged: dict[str, dict[int, float]]) -> None:
    """A DP run's ε is logged per round trained (round 0 only evaluates) and per site."""
    assert sorted(logged["privacy/epsilon_max"]) == [1, 2]
    assert sum(name.startswith("site/") and name.endswith("/train/epsilon") for name in logged) == 3


def _mlflow_logged(uri: str, run: Any) -> dict[str, dict[int, float]]:
    return mlflow_history(uri, run.info.run_id, list(run.data.metrics))


@pytest.fixture(scope="module")
def tracked_sim(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One small tabular simulation (3 sites, 2 rounds) tracked by both back ends."""
    root = tmp_path_factory.mktemp("tracked")
    proc = run_cli("fl-sim", "run", "--task", "tabular", "--clients", "3", "--rounds", "2", "--run-dir",
                   str(root / "run"), "--track", f"tensorboard:{root / 'tb'}", "--track", f"mlflow:{root / 'ml'}",
                   timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "WARNING" not in proc.stderr, proc.stderr
    return root


def test_tensorboard_event_files_hold_results_json(tracked_sim: Path) -> None:
    doc = json.loads((tracked_sim / "run" / "results.json").read_text())
    scalars, hparams, images = tensorboard_run(tracked_sim / "tb" / "run")
    _assert_same(scalars, doc)
    _assert_private(scalars)
    assert sorted(scalars["global/centralized/accuracy"]) == [0, 1, 2]
    assert hparams == run_params(doc)
    assert hparams["task"] == "tabular" and hparams["rounds"] == "2"
    assert hparams["epsilon"] == str(doc["config"]["epsilon"])
    assert {"plots/metrics", "plots/epsilon", "plots/confusion"} <= set(images)
    model = tracked_sim / "tb" / "run" / "model" / "model-final.pt"
    assert model.read_bytes() == (tracked_sim / "run" / "model-final.pt").read_bytes()


def test_mlflow_local_store_holds_results_json(tracked_sim: Path) -> None:
    from mlflow.tracking import MlflowClient

    doc = json.loads((tracked_sim / "run" / "results.json").read_text())
    uri = TrackSpec("mlflow", str(tracked_sim / "ml")).mlflow_uri
    assert uri.startswith("sqlite:///") and (tracked_sim / "ml" / "mlflow.db").is_file()
    [run] = mlflow_runs(uri, "fedshield")
    assert run.info.run_name == "run"
    assert run.info.status == "FINISHED" and run.data.tags["fedshield.status"] == "finished"
    logged = _mlflow_logged(uri, run)
    _assert_same(logged, doc)
    _assert_private(logged)
    assert run.data.params == run_params(doc)
    assert run.data.params["strategy"] == "fedavg" and run.data.params["dp"] == "true"
    client = MlflowClient(tracking_uri=uri)
    assert [a.path for a in client.list_artifacts(run.info.run_id, "model")] == ["model/model-final.pt"]
    plots = {a.path for a in client.list_artifacts(run.info.run_id, "plots")}
    assert {"plots/metrics.png", "plots/epsilon.png"} <= plots
    local = Path(client.download_artifacts(run.info.run_id, "model/model-final.pt", str(tracked_sim / "dl")))
    assert local.read_bytes() == (tracked_sim / "run" / "model-final.pt").read_bytes()


def test_sweep_logs_one_run_per_cell(tmp_path: Path) -> None:
    out = tmp_path / "grid"
    proc = run_cli("fl-sim", "sweep", "--task", "tabular", "--clients", "3", "--rounds", "2", "--epsilon", "8,inf",
                   "--out", str(out), "--track", f"mlflow:{tmp_path / 'ml'}", "--track",
                   f"tensorboard:{tmp_path / 'tb'}", timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    keys = ["eps-8_iid_per-all_fedavg_seed-0", "eps-inf_iid_per-all_fedavg_seed-0"]
    uri = TrackSpec("mlflow", str(tmp_path / "ml")).mlflow_uri
    runs = {r.info.run_name: r for r in mlflow_runs(uri, "grid")}  # the experiment is named by the sweep folder
    assert sorted(runs) == keys
    for key in keys:
        doc = json.loads((out / "cells" / key / "results.json").read_text())
        run: Any = runs[key]
        assert run.info.status == "FINISHED" and run.data.params["seed"] == "0"
        _assert_same(_mlflow_logged(uri, run), doc)
        scalars, _, images = tensorboard_run(tmp_path / "tb" / "grid" / key)
        _assert_same(scalars, doc)
        assert "plots/metrics" in images
    _assert_private(_mlflow_logged(uri, runs[keys[0]]))
    assert "privacy/epsilon_max" not in _mlflow_logged(uri, runs[keys[1]])  # ε = inf: no DP, no ε


def test_server_start_tracks_a_deployed_run(tmp_path: Path, digits_sites: Path) -> None:
    port = free_port()
    run_dir = tmp_path / "run"
    server = start_cli("fl-server", "start", "--task", "digits-cnn", "--rounds", "1", "--min-clients", "2",
                       "--run-dir", str(run_dir), "--insecure", "--port", str(port), "--join-timeout", "300",
                       "--track", f"mlflow:{tmp_path / 'ml'}", "--track", f"tensorboard:{tmp_path / 'tb'}",
                       log=tmp_path / "server.out")
    sites = [start_cli("fl-client", "join", "--data", str(digits_sites / name), "--server", f"127.0.0.1:{port}",
                       "--insecure", "--epsilon", "8", "--threads", "1", "--state-dir", str(tmp_path / name),
                       "--connect-timeout", "120", log=tmp_path / f"{name}.out")
             for name in ("hospital_a", "hospital_b")]
    try:
        assert wait_or_kill(server, 600) == 0, (tmp_path / "server.out").read_text()[-3000:]
    finally:
        stop_processes(server, *sites)
    doc = json.loads((run_dir / "results.json").read_text())
    uri = TrackSpec("mlflow", str(tmp_path / "ml")).mlflow_uri
    [run] = mlflow_runs(uri, "fedshield")
    assert run.info.status == "FINISHED" and run.data.params["mode"] == "deployment"
    logged = _mlflow_logged(uri, run)
    _assert_same(logged, doc)
    assert sorted(logged["global/evaluate/accuracy"]) == [0, 1]
    assert {"site/hospital_a/train/epsilon", "site/hospital_b/evaluate/loss"} <= set(logged)
    scalars, hparams, _ = tensorboard_run(tmp_path / "tb" / "run")
    _assert_same(scalars, doc)
    assert hparams["task"] == "digits-cnn"
    assert (tmp_path / "tb" / "run" / "model" / "model-final.pt").read_bytes() == \
        (run_dir / "model-final.pt").read_bytes()
