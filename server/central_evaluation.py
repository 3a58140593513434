"""Centralized-equivalent evaluation, possible only in simulation where all sites' data is local.

The global model is evaluated on the union of every site's validation split: the figure a single
data holder with all the data would see, which federated evaluation (a weighted mean of per-site
metrics) only approximates for non-decomposable metrics such as F1 and ROC-AUC.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch.utils.data import TensorDataset

from fedshield.common.run_config import RunConfig
from fedshield.common.site_config import site_options
from fedshield.common.torch_arrays import ndarrays_to_model
from fedshield.tasks.base import DataSchema
from fedshield.tasks.model_factory import build_model
from fedshield.tasks.registry import get_task

EvaluateFn = Callable[[int, list[np.ndarray], dict], tuple[float, dict] | None]


def pooled_validation_fn(cfg: RunConfig, schema: DataSchema) -> EvaluateFn | None:
    """An ``evaluate_fn`` for Flower strategies over all simulated sites' validation data."""
    root = Path(cfg.sim_data_dir) if cfg.sim_data_dir else None
    if root is None or not root.is_dir():
        return None
    task = get_task(cfg.task)
    xs, ys = [], []
    options = None
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        _, options = site_options(folder, {"seed": cfg.seed})
        options.model = cfg.model
        data = task.load_site(folder, options)
        x, y = data.val.tensors
        xs.append(x)
        ys.append(y)
    if not xs or options is None:
        return None
    pooled = TensorDataset(torch.cat(xs), torch.cat(ys))
    model = build_model(task, schema, options, seed=cfg.seed)

    def evaluate(server_round: int, parameters: list[np.ndarray], _config: dict):
        ndarrays_to_model(model, parameters)
        metrics = task.evaluate(model, pooled, device=torch.device("cpu"))
        loss = float(metrics.pop("loss"))
        return loss, metrics

    return evaluate
