"""``--track KIND:TARGET``: where a run's metrics, parameters and artifacts are logged besides results.json.

``tensorboard:DIR`` writes TensorBoard event files under ``DIR/<run>``; ``mlflow:URI`` logs one MLflow run
to a tracking store: ``mlflow:DIR`` is a local SQLite store in ``DIR`` (``DIR/mlflow.db``, artifacts in
``DIR/mlartifacts``; no server), ``mlflow:sqlite:///PATH.db`` names the database, and
``mlflow:http(s)://HOST:PORT`` a tracking server. Both need the optional ``tracking`` extra; a spec that
cannot work is refused with one line naming the flag and the fix before anything starts.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

from fedshield.common.errors import ConfigError

KINDS = ("tensorboard", "mlflow")
INSTALL = "pip install 'fedshield[tracking]' (from a checkout: pip install -e '.[tracking]')"
#: the module each kind imports, and the package that provides it
_NEEDS = {"tensorboard": ("tensorboard", "tensorboard"), "mlflow": ("mlflow", "mlflow-skinny")}
_MLFLOW_SCHEMES = ("sqlite:", "http:", "https:", "databricks", "postgresql", "mysql", "mssql")
LOCAL_DB = "mlflow.db"
LOCAL_ARTIFACTS = "mlartifacts"


@dataclass(frozen=True)
class TrackSpec:
    """One ``--track`` value: ``kind`` (tensorboard or mlflow) and its ``target`` as given."""

    kind: str
    target: str

    def __str__(self) -> str:
        return f"{self.kind}:{self.target}"

    @property
    def is_folder(self) -> bool:
        """Whether the target is a local folder (TensorBoard's, or an MLflow target without a scheme)."""
        return self.kind == "tensorboard" or not (self.target.startswith(_MLFLOW_SCHEMES) or ":" in self.target)

    @property
    def mlflow_uri(self) -> str:
        """The MLflow tracking URI: a folder becomes ``sqlite:///<folder>/mlflow.db``."""
        if not self.is_folder:
            return self.target
        return f"sqlite:///{(Path(self.target).expanduser().resolve() / LOCAL_DB).as_posix()}"

    @property
    def mlflow_artifact_root(self) -> str | None:
        """Where a local (SQLite) store keeps new experiments' artifacts: next to its database; None for a server,
        which decides itself."""
        uri = self.mlflow_uri
        if not uri.startswith("sqlite:///"):
            return None
        return (Path(uri.removeprefix("sqlite:///")).parent / LOCAL_ARTIFACTS).as_uri()


def parse_track_specs(values: list[str] | None) -> list[TrackSpec]:
    """The ``--track`` values as specs; ``ConfigError`` naming the value and the fix for a malformed one, a
    TensorBoard folder that is a file, a file-store MLflow URI, or a missing optional package."""
    specs = []
    for value in values or []:
        kind, sep, target = value.partition(":")
        kind = kind.strip().lower()
        if not sep or kind not in KINDS or not target.strip():
            raise ConfigError(f"--track {value!r}: give tensorboard:DIR or mlflow:URI (a folder, "
                              "sqlite:///PATH.db or http://HOST:PORT), e.g. --track tensorboard:./tb")
        spec = TrackSpec(kind, target.strip())
        if kind == "mlflow" and spec.target.startswith("file:"):
            raise ConfigError(f"--track {spec}: MLflow 3 refuses its file store; pass a folder (--track mlflow:DIR, "
                              "an SQLite store in DIR) or mlflow:sqlite:///PATH.db")
        if spec.is_folder and Path(spec.target).exists() and not Path(spec.target).is_dir():
            raise ConfigError(f"--track {spec}: {spec.target} is a file; pass a folder (it is created if missing)")
        module, package = _NEEDS[kind]
        if importlib.util.find_spec(module) is None:
            raise ConfigError(f"--track {spec}: {package} is not installed; {INSTALL}")
        specs.append(spec)
    return specs
