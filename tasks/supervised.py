"""Shared training and evaluation loop for supervised tasks (classification and regression)."""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from fedshield.common.metrics import classification_metrics, regression_metrics
from fedshield.tasks.base import DataSchema, RecordStatistics, TrainResult


class FlatMSELoss(nn.MSELoss):
    """MSE between ``(N, 1)`` predictions and ``(N,)`` targets (``reduction="none"`` gives ``(N,)``)."""

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:  # nn.MSELoss's names
        return super().forward(input.reshape(-1), target.reshape(-1))


#: a record's squared error counted at most this (trained target units) in a DP release of the loss
REGRESSION_LOSS_BOUND = 4.0
#: what :func:`fedshield.common.metrics.classification_metrics` reports, plus the loss
CLASSIFICATION_METRICS = ("loss", "accuracy", "precision", "recall", "f1", "roc_auc")


class SupervisedTask:
    """Cross-entropy for classification, MSE for regression; metrics from :mod:`fedshield.common.metrics`.

    Subclasses set ``name``, ``summary``, ``data_format``, ``metrics`` and implement ``load_site`` and
    ``build_model``. The model's output is ``(N, K)`` logits or ``(N, 1)`` predictions; which loss
    applies follows the target dtype (int64 = class labels, float = regression targets).
    """

    dp_mode = "hooks"
    #: the --model variants a run may name (None: the task parses them itself, ``resolve_model``)
    models: tuple[str, ...] | None
    metrics: tuple[str, ...]

    def criterion(self, schema: DataSchema) -> nn.Module:
        return nn.CrossEntropyLoss() if schema.kind == "classification" else FlatMSELoss()

    def loss(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        if targets.dtype == torch.long:
            return nn.functional.cross_entropy(outputs, targets)
        return nn.functional.mse_loss(outputs.reshape(-1), targets.reshape(-1))

    def step_loss(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                  criterion: nn.Module | None) -> torch.Tensor:
        """The loss of one batch; ``criterion`` is Opacus' ghost-clipping wrapper when given."""
        return criterion(model(x), y) if criterion is not None else self.loss(model(x), y)

    def train(self, model: nn.Module, loader: DataLoader, optimizer: torch.optim.Optimizer, *, epochs: int,
              device: torch.device, criterion: nn.Module | None = None) -> TrainResult:
        model.train()
        total, steps, examples = 0.0, 0, 0
        for _ in range(epochs):
            for x, y in loader:
                if len(x) == 0:  # Poisson sampling can draw an empty batch; nothing to learn from
                    continue
                x, y = x.to(device), y.to(device)
                optimizer.zero_grad(set_to_none=True)
                loss = self.step_loss(model, x, y, criterion)
                loss.backward()
                optimizer.step()
                total += float(loss.detach())
                steps += 1
                examples += len(x)
        optimizer.zero_grad(set_to_none=True)
        return TrainResult(loss=total / steps if steps else float("nan"), steps=steps, examples=examples)

    @torch.no_grad()
    def evaluate(self, model: nn.Module, data: TensorDataset, *, device: torch.device,
                 batch_size: int = 256) -> dict[str, float]:
        model.eval()
        outputs, targets = [], []
        for x, y in DataLoader(data, batch_size=batch_size):
            outputs.append(model(x.to(device)).float().cpu())
            targets.append(y)
        out = torch.cat(outputs)
        y = torch.cat(targets)
        loss = float(self.loss(out, y))
        if y.dtype == torch.long:
            metrics = classification_metrics(y.numpy(), torch.softmax(out, dim=1).numpy())
        else:
            metrics = regression_metrics(y.numpy(), out.reshape(-1).numpy())
        return {"loss": loss, **metrics}


    @torch.no_grad()
    def per_example_statistics(self, model: nn.Module, data: TensorDataset, *, device: torch.device,
                               batch_size: int = 256, loss_only: bool = False) -> RecordStatistics:
        """Each record's loss and 0/1 correctness (classification) or squared and absolute error
        (regression), with the bounds a DP release clips them to (:class:`RecordStatistics`).

        Bounds: cross-entropy at 2·ln K (twice an uninformed model's loss), correctness at 1; squared
        error at 4 and absolute error at 2, in the trained target's units (targets are standardised
        or scaled by the federation's ``target_scale``). ``mse`` repeats the regression loss.
        """
        model.eval()
        outputs, targets = [], []
        for x, y in DataLoader(data, batch_size=batch_size):
            outputs.append(model(x.to(device)).float().cpu())
            targets.append(y)
        out, y = torch.cat(outputs), torch.cat(targets)
        if y.dtype == torch.long:
            loss = nn.functional.cross_entropy(out, y, reduction="none").numpy()
            values = {"loss": loss}
            bounds = {"loss": 2.0 * math.log(max(out.shape[1], 2))}
            if not loss_only:
                finite = torch.isfinite(out).all(dim=1)
                values["accuracy"] = ((out.argmax(dim=1) == y) & finite).double().numpy()
                bounds["accuracy"] = 1.0
            return RecordStatistics(values, bounds)
        error = out.reshape(-1).double() - y.reshape(-1).double()
        values, bounds = {"loss": (error ** 2).numpy()}, {"loss": REGRESSION_LOSS_BOUND}
        if loss_only:
            return RecordStatistics(values, bounds)
        values["mae"], bounds["mae"] = error.abs().numpy(), REGRESSION_LOSS_BOUND ** 0.5
        return RecordStatistics(values, bounds, derived={"mse": "loss"})


def as_float_tensor(array: np.ndarray) -> torch.Tensor:
    """``array`` as a contiguous float32 tensor."""
    return torch.as_tensor(np.ascontiguousarray(array), dtype=torch.float32)
