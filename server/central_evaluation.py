"""Central evaluation on a held-out test set, possible only in simulation where the server has data.

``fl-sim run`` holds a stratified share of the real examples out of every site
(:mod:`fedshield.simulations.virtual_sites`, folder ``<data>/test``). After every round the global
model is evaluated on it, and its predictions are saved as ``predictions.npz`` in the run folder, so
``fl-sim report`` can draw the confusion matrix and ROC curve of the final model without rerunning it.
Federated evaluation (a weighted mean of per-site validation metrics) only approximates this for
non-decomposable metrics such as F1 and ROC-AUC.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, TensorDataset

from fedshield.common.atomic_io import atomic_write_bytes
from fedshield.common.run_config import RunConfig
from fedshield.common.run_files import PREDICTIONS_FILE
from fedshield.common.torch_arrays import ndarrays_to_model
from fedshield.tasks.base import DataSchema
from fedshield.tasks.model_factory import build_model
from fedshield.tasks.registry import get_task
from fedshield.tasks.site_config import site_options

EvaluateFn = Callable[[int, list[np.ndarray], dict], tuple[float, dict] | None]
TEST_FOLDER = "test"


def central_test_fn(cfg: RunConfig, schema: DataSchema) -> EvaluateFn | None:
    """An ``evaluate_fn`` for Flower strategies over the simulation's central test set (None without one)."""
    folder = Path(cfg.sim_data_dir) / TEST_FOLDER if cfg.sim_data_dir else None
    if folder is None or not folder.is_dir():
        return None
    task = get_task(cfg.task)
    _, options = site_options(folder, {"seed": cfg.seed})
    options.model = cfg.model
    data = task.load_site(folder, options)
    test = data.all_examples()  # the test folder is loaded like a site (same preprocessing); all of it is test data
    model = build_model(task, schema, options, seed=cfg.seed)
    out = Path(cfg.run_dir) / PREDICTIONS_FILE if cfg.run_dir else None

    def evaluate(server_round: int, parameters: list[np.ndarray], _config: dict):
        ndarrays_to_model(model, parameters)
        metrics = task.evaluate(model, test, device=torch.device("cpu"))
        loss = float(metrics.pop("loss"))
        if out is not None and schema.kind in ("classification", "regression"):  # labels or values to plot
            save_predictions(out, model, test, schema, server_round)
        return loss, metrics

    return evaluate


@torch.no_grad()
def save_predictions(path: Path, model: torch.nn.Module, data: TensorDataset, schema: DataSchema, rnd: int) -> None:
    """Write ``y_true`` (N,) and ``scores``: (N, K) class probabilities or (N,) regression predictions."""
    model.eval()
    outputs = torch.cat([model(x).float() for x, _ in DataLoader(data, batch_size=512)])
    y = data.tensors[1].numpy()
    scores = torch.softmax(outputs, dim=1).numpy() if schema.kind == "classification" else outputs.reshape(-1).numpy()
    buffer = io.BytesIO()
    np.savez(buffer, y_true=y, scores=scores, round=np.int64(rnd), kind=np.array(schema.kind))
    atomic_write_bytes(path, buffer.getvalue())
