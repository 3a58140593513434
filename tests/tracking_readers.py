"""Read a tracked run back with the back ends' own readers: TensorBoard's event accumulator, MLflow's client."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tensorboard.backend.event_processing import event_accumulator
from tensorboard.plugins.hparams import plugin_data_pb2


def tensorboard_run(log_dir: Path) -> tuple[dict[str, dict[int, float]], dict[str, str], list[str]]:
    """(metric -> {step: value}, hparams, image tags) of the event files in ``log_dir``."""
    acc = event_accumulator.EventAccumulator(str(log_dir), size_guidance={event_accumulator.SCALARS: 0,
                                                                          event_accumulator.IMAGES: 0,
                                                                          event_accumulator.TENSORS: 0})
    acc.Reload()
    scalars = {tag: {e.step: e.value for e in acc.Scalars(tag)} for tag in acc.Tags()["scalars"]}
    content = acc.PluginTagToContent("hparams")["_hparams_/session_start_info"]
    start = plugin_data_pb2.HParamsPluginData.FromString(content).session_start_info
    hparams = {k: v.string_value for k, v in start.hparams.items()}
    return scalars, hparams, list(acc.Tags()["images"])


def mlflow_runs(uri: str, experiment: str) -> list[Any]:
    """The MLflow runs of ``experiment`` in the store at ``uri``."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    found = client.get_experiment_by_name(experiment)
    assert found is not None, f"no experiment {experiment!r} in {uri}"
    return list(client.search_runs([found.experiment_id]))


def mlflow_history(uri: str, run_id: str, keys: list[str]) -> dict[str, dict[int, float]]:
    """metric -> {step: value} of one MLflow run."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    return {key: {m.step: m.value for m in client.get_metric_history(run_id, key)} for key in keys}


def assert_same_series(logged: dict[str, dict[int, float]], expected: dict[str, dict[int, float]],
                       rel: float = 1e-6) -> None:
    """The same metrics at the same steps, values within ``rel`` (TensorBoard stores float32)."""
    import pytest

    assert set(logged) == set(expected)
    for name, series in expected.items():
        assert logged[name] == pytest.approx(series, rel=rel, abs=rel), name
