"""A run as one MLflow run (``--track mlflow:URI``), through MLflow's client: no server needed for a local store.

Metrics are logged per round (step = round, timestamp = when results.json recorded it), the configuration
as parameters, and the final model, results.json, summary.md, plots and samples as artifacts
(``model/model-final.pt``, ``plots/*.png``, ...). MLflow 3 refuses its old file store (``./mlruns``), so a
local store is SQLite (:mod:`fedshield.common.track_spec`). MLflow's own usage telemetry is turned off
(``MLFLOW_DISABLE_TELEMETRY``, with FedShield's other no-phone-home settings).
"""

from __future__ import annotations

import logging
import time
import warnings
from pathlib import Path

from fedshield.common.errors import ConfigError
from fedshield.common.flower_env import silence_flower
from fedshield.common.track_spec import TrackSpec

MAX_PARAM_LENGTH = 6000  # MLflow's limit on a parameter's value
BATCH = 500  # metrics per request; MLflow accepts 1,000
_STATUS = {"finished": "FINISHED", "failed": "FAILED"}


class MlflowTracker:
    """One run named ``run_name`` in ``experiment`` (created when missing) of the store ``spec`` names."""

    def __init__(self, spec: TrackSpec, experiment: str, run_name: str, tags: dict[str, str]) -> None:
        silence_flower()  # MLflow's usage telemetry too, before MLflow is imported: nothing phones home
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # SQLAlchemy deprecation warnings from MLflow's own store
            from mlflow.exceptions import MlflowException
            from mlflow.tracking import MlflowClient
        for logger in ("mlflow", "alembic"):  # after the import, which sets MLflow's: INFO lines (creating tables)
            logging.getLogger(logger).setLevel(logging.WARNING)

        try:
            if spec.is_folder:
                Path(spec.target).mkdir(parents=True, exist_ok=True)
            self._client = MlflowClient(tracking_uri=spec.mlflow_uri)
            found = self._client.get_experiment_by_name(experiment)
            experiment_id = found.experiment_id if found is not None else self._client.create_experiment(
                experiment, artifact_location=spec.mlflow_artifact_root)
            self.run_id: str = self._client.create_run(experiment_id, run_name=run_name, tags=tags).info.run_id
        except (MlflowException, OSError) as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ConfigError(f"--track {spec}: MLflow cannot open the store ({first[:300]}); check the URI or "
                              "pass a local folder (--track mlflow:DIR)") from None

    def log_params(self, params: dict[str, str]) -> None:
        from mlflow.entities import Param

        items = [Param(k, v[:MAX_PARAM_LENGTH]) for k, v in sorted(params.items())]
        for start in range(0, len(items), 100):
            self._client.log_batch(self.run_id, params=items[start:start + 100])

    def log_round(self, step: int, metrics: dict[str, float], walltime: float | None) -> None:
        from mlflow.entities import Metric

        stamp = int((walltime if walltime is not None else time.time()) * 1000)
        items = [Metric(name, value, stamp, step) for name, value in metrics.items()]
        for start in range(0, len(items), BATCH):
            self._client.log_batch(self.run_id, metrics=items[start:start + BATCH])

    def log_artifacts(self, files: list[tuple[Path, str]]) -> None:
        for path, folder in files:
            self._client.log_artifact(self.run_id, str(path), folder or None)

    def close(self, status: str) -> None:
        self._client.set_tag(self.run_id, "fedshield.status", status)
        self._client.set_terminated(self.run_id, _STATUS.get(status, "KILLED"))
