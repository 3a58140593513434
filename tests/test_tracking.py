"""`--track`: bad specs refused in one line before anything starts; a run folder logged and read back by the back
ends' own readers (TensorBoard's event accumulator, MLflow's client on a local SQLite store)."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from tracking_readers import assert_same_series, mlflow_history, mlflow_runs, tensorboard_run

from conftest import cli_env, run_cli
from fedshield.common.errors import ConfigError
from fedshield.common.net import free_port
from fedshield.common.run_tracking import RunTracking, open_run_tracking
from fedshield.common.tensorboard_tracker import TensorBoardTracker
from fedshield.common.track_spec import TrackSpec, parse_track_specs
from fedshield.common.tracked_metrics import round_metrics, run_params


def _one_line_error(proc: Any, *needles: str) -> str:
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    lines = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and "Traceback" not in proc.stderr, proc.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


@pytest.mark.parametrize("value", ["wandb:x", "tensorboard", "mlflow:", "tensorboard:  "])
def test_malformed_specs_name_the_flag_and_the_forms(value: str) -> None:
    with pytest.raises(ConfigError, match=r"--track .*tensorboard:DIR or mlflow:URI"):
        parse_track_specs([value])


def test_file_store_and_file_targets_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="MLflow 3 refuses its file store; pass a folder"):
        parse_track_specs([f"mlflow:file://{tmp_path}"])
    (tmp_path / "f").write_text("x")
    for kind in ("tensorboard", "mlflow"):
        with pytest.raises(ConfigError, match=f"--track {kind}:.*is a file; pass a folder"):
            parse_track_specs([f"{kind}:{tmp_path / 'f'}"])


def test_a_missing_extra_names_the_pip_command(monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "mlflow" else real(name, *a))
    with pytest.raises(ConfigError, match=r"--track mlflow:x: mlflow-skinny is not installed; pip install "
                                          r"'fedshield\[tracking\]'"):
        parse_track_specs(["tensorboard:t", "mlflow:x"])


def test_mlflow_targets() -> None:
    folder = TrackSpec("mlflow", "ml")
    assert folder.mlflow_uri == f"sqlite:///{(Path('ml').resolve() / 'mlflow.db').as_posix()}"
    assert folder.mlflow_artifact_root == (Path("ml").resolve() / "mlartifacts").as_uri()
    assert TrackSpec("mlflow", "sqlite:////tmp/x.db").mlflow_uri == "sqlite:////tmp/x.db"
    server = TrackSpec("mlflow", "http://127.0.0.1:5000")
    assert server.mlflow_uri == "http://127.0.0.1:5000" and server.mlflow_artifact_root is None


@pytest.mark.parametrize("cmd", [["fl-sim", "run", "--task", "tabular"], ["fl-sim", "sweep", "--task", "tabular"],
                                 ["fl-server", "start", "--insecure"]])
def test_every_command_refuses_a_bad_spec_before_it_starts(cmd: list[str], tmp_path: Path) -> None:
    proc = run_cli(*cmd, "--track", "tensorbord:./tb", cwd=tmp_path, timeout=60)
    _one_line_error(proc, "--track 'tensorbord:./tb'", "tensorboard:DIR")
    assert list(tmp_path.iterdir()) == []  # no run folder, no server, nothing written


@pytest.mark.slow  # 30 s: the run is planned (torch, Flower) before the store is opened
def test_an_unreachable_mlflow_server_is_refused_before_the_run_starts(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    proc = run_cli("fl-sim", "run", "--task", "tabular", "--clients", "2", "--rounds", "1", "--run-dir",
                   str(tmp_path / "run"), "--track", f"mlflow:{url}", env={"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0"},
                   timeout=120)
    _one_line_error(proc, f"--track mlflow:{url}: MLflow cannot open the store")
    assert not (tmp_path / "run").exists()


def _results(folder: Path) -> dict[str, Any]:
    """A results.json as the server writes it: round 0 (initial evaluation), one trained round, finished."""
    now = time.time()
    site = {"examples": 40, "dp": True, "site-metrics": "dp", "train-loss": 0.61, "epsilon": 1.25, "delta": 1e-5}
    doc = {"format": "fedshield-results", "status": "finished", "mode": "simulation", "task": "tabular",
           "config": {"task": "tabular", "rounds": 1, "epsilon": 3.0, "dp": True, "lr": 0.5, "init-weights": ""},
           "total_sites": 2, "parameters": 31, "sites": {"hospital a": {}, "site/b": {}},
           "rounds": [
               {"round": 0, "started_at": now - 9, "finished_at": now - 8.5, "centralized": {"loss": 0.69},
                "evaluate": {"sites": {"hospital a": {"examples": 10, "loss": 0.7, "accuracy": 0.4}},
                             "failures": [], "aggregate": {"loss": 0.7, "accuracy": 0.4}}},
               {"round": 1, "started_at": now - 8, "finished_at": now - 1.25,
                "train": {"sampled": 2, "sites": {"hospital a": site, "site/b": {**site, "epsilon": 1.5}},
                          "failures": [{"site": "c", "reason": "x"}], "aggregate": {"train-loss": 0.6},
                          "loss": 0.6, "epsilon_max": 1.5},
                "centralized": {"loss": 0.4, "accuracy": 0.8125, "r2": None},
                "evaluate": {"sites": {"hospital a": {"examples": 10, "loss": 0.5, "accuracy": 0.7}},
                             "failures": [], "aggregate": {"loss": 0.5, "accuracy": 0.7}},
                "secagg_stages_s": {"setup": 0.25}}]}
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "results.json").write_text(json.dumps(doc))
    (folder / "model-final.pt").write_bytes(b"model bytes")
    return doc


def test_metric_names_are_stable(tmp_path: Path) -> None:
    doc = _results(tmp_path)
    assert round_metrics(doc["rounds"][1]) == {
        "global/train/train-loss": 0.6, "global/train/loss": 0.6, "privacy/epsilon_max": 1.5,
        "site/hospital a/train/examples": 40.0, "site/hospital a/train/train-loss": 0.61,
        "site/hospital a/train/epsilon": 1.25, "site/hospital a/train/delta": 1e-5,
        "site/site/b/train/examples": 40.0, "site/site/b/train/train-loss": 0.61, "site/site/b/train/epsilon": 1.5,
        "site/site/b/train/delta": 1e-5, "sites/sampled": 2.0, "sites/trained": 2.0, "sites/train_failures": 1.0,
        "global/evaluate/loss": 0.5, "global/evaluate/accuracy": 0.7, "site/hospital a/evaluate/examples": 10.0,
        "site/hospital a/evaluate/loss": 0.5, "site/hospital a/evaluate/accuracy": 0.7,
        "sites/evaluate_failures": 0.0, "global/centralized/loss": 0.4, "global/centralized/accuracy": 0.8125,
        "time/secagg/setup_s": 0.25, "time/round_s": pytest.approx(6.75)}


@pytest.mark.slow  # 20-50 s: MLflow creates its SQLite tables (Alembic migrations) in each new store
def test_a_run_folder_reads_back_from_both_back_ends(tmp_path: Path) -> None:
    doc = _results(tmp_path / "run-7")
    specs = parse_track_specs([f"tensorboard:{tmp_path / 'tb'}", f"mlflow:{tmp_path / 'ml'}"])
    open_run_tracking(specs, tmp_path / "run-7").close()
    expected = {}
    for entry in doc["rounds"]:
        for name, value in round_metrics(entry).items():
            expected.setdefault(name, {})[entry["round"]] = value
    scalars, hparams, _ = tensorboard_run(tmp_path / "tb" / "run-7")
    assert_same_series(scalars, expected)
    assert hparams == run_params(doc) and hparams["init-weights"] == "" and hparams["dp"] == "true"
    assert (tmp_path / "tb" / "run-7" / "model" / "model-final.pt").read_bytes() == b"model bytes"
    uri = TrackSpec("mlflow", str(tmp_path / "ml")).mlflow_uri
    [run] = mlflow_runs(uri, "fedshield")
    assert_same_series(mlflow_history(uri, run.info.run_id, list(run.data.metrics)), expected, rel=1e-12)
    assert run.data.params == run_params(doc) and run.info.status == "FINISHED"
    assert run.data.tags["fedshield.run_dir"] == str((tmp_path / "run-7").resolve())
    # a second run of the same name gets its own TensorBoard folder and its own MLflow run
    open_run_tracking(specs, tmp_path / "run-7").close("failed")
    assert_same_series(tensorboard_run(tmp_path / "tb" / "run-7-2")[0], expected)
    runs = mlflow_runs(uri, "fedshield")
    assert sorted((r.info.run_name, r.info.status) for r in runs) == [("run-7", "FAILED"), ("run-7", "FINISHED")]


class _BrokenBackEnd:
    """A back end whose every call fails, as a tracking server that went away would."""

    def __getattr__(self, name: str) -> Any:
        def fail(*_args: Any) -> None:
            raise ConnectionError("tracking server gone")

        return fail


def test_a_failing_back_end_is_reported_and_dropped_not_fatal(tmp_path: Path) -> None:
    _results(tmp_path / "run")
    (tmp_path / "run" / "results.json").write_text("{}")
    warnings: list[str] = []
    tracking = RunTracking([("mlflow:http://gone", _BrokenBackEnd()),  # type: ignore[list-item]
                            ("tensorboard:tb", TensorBoardTracker(tmp_path / "tb"))], tmp_path / "run", warnings.append)
    tracking.on_round({"config": {"rounds": 1}}, {"round": 0, "evaluate": {"aggregate": {"accuracy": 0.5}}})
    tracking.on_round({}, {"round": 1, "evaluate": {"aggregate": {"accuracy": 0.75}}})
    tracking.close()
    assert warnings == ["--track mlflow:http://gone: logging failed (ConnectionError: tracking server gone); the run "
                        "goes on without it"]
    scalars, hparams, _ = tensorboard_run(tmp_path / "tb")
    assert scalars == {"global/evaluate/accuracy": {0: 0.5, 1: 0.75}, "sites/evaluate_failures": {0: 0.0, 1: 0.0}}
    assert hparams["rounds"] == "1"


def test_mlflow_sends_no_usage_telemetry(tmp_path: Path) -> None:
    # MLflow turns its telemetry off by itself under pytest and CI, so the check runs in a clean environment,
    # as a user's `fl-sim run --track mlflow:...` would: the tracker opens (here: a server that is not there)
    script = f"""
from fedshield.common.errors import ConfigError
from fedshield.common.mlflow_tracker import MlflowTracker
from fedshield.common.track_spec import TrackSpec
try:
    MlflowTracker(TrackSpec("mlflow", "http://127.0.0.1:{free_port()}"), "fedshield", "run", {{}})
except ConfigError:
    pass
from mlflow.telemetry.client import get_telemetry_client
from mlflow.telemetry.utils import is_telemetry_disabled
print(get_telemetry_client() is None and is_telemetry_disabled())
"""
    quiet = {"PYTEST_CURRENT_TEST", "CI", "GITHUB_ACTIONS", "MLFLOW_DISABLE_TELEMETRY", "DO_NOT_TRACK"}
    env = {k: v for k, v in cli_env().items() if k not in quiet} | {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0"}
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120,
                          cwd=tmp_path, check=False)
    assert proc.stdout.strip() == "True", proc.stdout + proc.stderr
