"""A run as TensorBoard event files (``--track tensorboard:DIR``), written with torch's SummaryWriter.

Metrics are scalars (step = round, wall time = when results.json recorded the round); the configuration
is TensorBoard's hparams record plus a text table; the plots are images (``plots/<name>``); the final
model and results.json are copied into the run's log folder, which TensorBoard leaves alone.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np


class TensorBoardTracker:
    """Event files in ``log_dir`` (created; a folder that already holds a run gets a ``-2``, ``-3`` ... twin)."""

    def __init__(self, log_dir: Path) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.log_dir = _fresh(Path(log_dir))
        self._writer = SummaryWriter(log_dir=str(self.log_dir))

    def log_params(self, params: dict[str, str]) -> None:
        from torch.utils.tensorboard.summary import hparams

        file_writer = self._writer.file_writer
        assert file_writer is not None  # SummaryWriter opens it in __init__
        for summary in hparams(params, {}):
            file_writer.add_summary(summary)
        table = "\n".join(f"| {k} | {v} |" for k, v in sorted(params.items()))
        self._writer.add_text("config", "| parameter | value |\n|---|---|\n" + table)

    def log_round(self, step: int, metrics: dict[str, float], walltime: float | None) -> None:
        for name, value in metrics.items():
            self._writer.add_scalar(name, value, global_step=step, walltime=walltime)
        self._writer.flush()

    def log_artifacts(self, files: list[tuple[Path, str]]) -> None:
        from PIL import Image

        for path, folder in files:
            if path.suffix == ".png":
                with Image.open(path) as image:
                    pixels = np.asarray(image.convert("RGB"))
                self._writer.add_image(f"{folder or 'files'}/{path.stem}", pixels, dataformats="HWC")
            else:
                target = self.log_dir / folder / path.name
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(path, target)

    def close(self, status: str) -> None:
        self._writer.add_text("status", status)
        self._writer.close()


def _fresh(log_dir: Path) -> Path:
    """``log_dir``, or the first of ``log_dir-2``, ``log_dir-3``, ... that holds no run yet."""
    candidate, n = log_dir, 1
    while candidate.exists() and any(candidate.iterdir()):
        n += 1
        candidate = log_dir.with_name(f"{log_dir.name}-{n}")
    return candidate
