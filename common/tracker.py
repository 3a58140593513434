"""The interface every experiment tracker (TensorBoard, MLflow) offers to :mod:`fedshield.common.run_tracking`."""

from __future__ import annotations

from pathlib import Path
from typing import Protocol


class Tracker(Protocol):
    """One tracked run in one tracking back end; calls come from one thread at a time."""

    def log_params(self, params: dict[str, str]) -> None:
        """The run's configuration (name -> value as text), once."""

    def log_round(self, step: int, metrics: dict[str, float], walltime: float | None) -> None:
        """One round's metrics; ``walltime`` (Unix seconds) when results.json recorded the round."""

    def log_artifacts(self, files: list[tuple[Path, str]]) -> None:
        """Files of the run folder, each with the artifact folder it goes to ("" = the root)."""

    def close(self, status: str) -> None:
        """End the tracked run; ``status`` is results.json's (finished, failed, ...)."""
