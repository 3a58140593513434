"""The Task protocol: what a model family must provide to run in a FedShield federation.

A task has five duties (docs/writing-a-task.md): describe its data format, load and validate a
site folder, build the model, train one round with an optimizer the platform hands in (already made
private by Opacus when DP is on), and evaluate. The platform, not the task, creates the data loader's
sampling, the optimizer and the privacy engine, so every task is private the same way.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol, runtime_checkable

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

Kind = Literal["classification", "regression", "generation", "sequence"]


@dataclass(frozen=True)
class DataSchema:
    """What every site of one federation must agree on, and what the server builds the model from.

    Attributes:
        kind: ``classification``, ``regression``, ``generation`` (a generative model; no targets) or
            ``sequence`` (a target sequence per example, e.g. a translation).
        input_shape: shape of one example's features, e.g. ``(1, 28, 28)`` or ``(30,)``.
        num_outputs: number of classes (classification) or 1 (regression).
        feature_names: column names of tabular features, in order; empty for images.
        target: name of the target column (tabular); empty for images.
        labels: class names in index order, where a task names its classes (e.g. image label
            folders); empty otherwise. Sites must agree on them, not only on their number.
    """

    kind: Kind
    input_shape: tuple[int, ...]
    num_outputs: int
    feature_names: tuple[str, ...] = ()
    target: str = ""
    labels: tuple[str, ...] = ()

    def to_config(self) -> dict[str, str | int]:
        """Flatten into scalar values that fit a Flower ``ConfigRecord``."""
        return {
            "schema-kind": self.kind,
            "schema-input-shape": ",".join(str(d) for d in self.input_shape),
            "schema-num-outputs": self.num_outputs,
            "schema-feature-names": "\x1f".join(self.feature_names),
            "schema-target": self.target,
            "schema-labels": "\x1f".join(self.labels),
        }

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any]) -> DataSchema:
        """Inverse of :meth:`to_config`."""
        names = str(cfg.get("schema-feature-names", ""))
        labels = str(cfg.get("schema-labels", ""))
        return cls(
            kind=str(cfg["schema-kind"]),  # type: ignore[arg-type]  # a Kind, as to_config wrote it
            input_shape=tuple(int(d) for d in str(cfg["schema-input-shape"]).split(",") if d),
            num_outputs=int(cfg["schema-num-outputs"]),
            feature_names=tuple(names.split("\x1f")) if names else (),
            target=str(cfg.get("schema-target", "")),
            labels=tuple(labels.split("\x1f")) if labels else (),
        )

    def mismatch(self, other: DataSchema) -> str | None:
        """Return a one-phrase description of how ``other`` differs from this schema, or None."""
        for name in ("kind", "input_shape", "num_outputs", "feature_names", "target", "labels"):
            mine, theirs = getattr(self, name), getattr(other, name)
            if mine != theirs:
                return f"{name.replace('_', ' ')} {theirs!r} != federation's {mine!r}"
        return None


@dataclass
class TaskOptions:
    """Options a site or a run gives a task.

    Attributes:
        target: tabular target column (from ``fedshield.toml`` or ``--target``).
        model: task-specific model variant (tabular: ``auto``, ``logistic``, ``linear``, ``mlp``).
        kind: force ``classification``/``regression`` (tabular); ``None`` infers it from the data.
        val_fraction: share of the site's examples held out for validation, in (0, 1).
        seed: seed of the held-out split.
        extra: any other task-specific key from ``fedshield.toml``.
        private: the site trains under DP: whatever the task derives from the data and the platform
            releases (features, schema) must not depend on dataset-wide statistics of the site's data,
            only on each record and on declared settings (tabular: ``feature_ranges``, ``kind``, ``classes``).
    """

    target: str | None = None
    model: str = "auto"
    kind: Kind | None = None
    val_fraction: float = 0.2
    seed: int = 0
    extra: dict[str, Any] = field(default_factory=dict)  # each key's type is checked by tasks/site_config.py
    private: bool = False


@dataclass
class SiteData:
    """A site's validated data: train and validation tensors plus the schema they follow.

    ``train``/``val`` hold ``(x, y)``: x float32 of shape ``(N, *schema.input_shape)``; y int64 class
    indices of shape ``(N,)`` for classification, float32 of shape ``(N,)`` for regression.
    """

    train: TensorDataset
    val: TensorDataset
    schema: DataSchema
    source: Path

    def all_examples(self) -> TensorDataset:
        """Train and validation examples as one data set (a folder the server uses whole: a test or trusted set)."""
        return TensorDataset(torch.cat([self.train.tensors[0], self.val.tensors[0]]),
                             torch.cat([self.train.tensors[1], self.val.tensors[1]]))


@dataclass(frozen=True)
class RecordStatistics:
    """Per-record values of what a site may report about a model on its data, for a DP release.

    Attributes:
        values: statistic name -> (N,) float values, one per record (e.g. ``loss``, ``accuracy`` as 0/1).
        bounds: statistic name -> the largest value one record may contribute; values are clipped to
            ``[0, bound]`` before they are summed (:mod:`fedshield.client.private_statistics`), so a
            bound is a sensitivity: larger bounds mean more noise.
        derived: reported name -> statistic name it repeats (regression: ``mse`` is the ``loss``).
    """

    values: dict[str, np.ndarray]
    bounds: dict[str, float]
    derived: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class TrainResult:
    """Outcome of one local training round: mean loss over the optimizer steps taken."""

    loss: float
    steps: int
    examples: int


@runtime_checkable
class Task(Protocol):
    """A model family that FedShield can train privately at every site."""

    name: str
    summary: str
    data_format: str
    metrics: tuple[str, ...]
    #: how DP-SGD clips per-sample gradients: ``bk`` (FedShield's one-pass book-keeping clipping,
    #: client/book_keeping.py; models of Linear (also called once per time step, as in Opacus' DPLSTM),
    #: Conv2d (grouped and depthwise too), Embedding, LayerNorm and GroupNorm layers, falls back to ghost
    #: otherwise), or an
    #: Opacus ``grad_sample_mode``: ``ghost`` (fast gradient clipping; conv/linear/attention models),
    #: ``hooks`` or ``ew`` (expanded weights). What each costs: docs/performance.md.
    dp_mode: str
    # Optional: ``private_part(model) -> nn.Module`` (only that submodule sees private data and is made
    # private; ``train`` then also gets ``private_module=`` Opacus' wrapper of it, see tasks/dcgan.py);
    # ``default_lr(dp) -> float`` (the task's --lr default); ``sample_grid(model) -> bytes`` (a PNG
    # written next to each checkpoint); ``reads_sites_of`` (tuple of task names whose site folders this
    # task also reads, so a site whose fedshield.toml names one of them may join this task's runs);
    # ``resolve_model(model,
    # *, pretrained, dp) -> str`` and ``head_prefixes() -> tuple[str, ...]`` (see ``--init-weights``);
    # ``per_example_statistics(model, data, *, device, loss_only=False) -> RecordStatistics`` (what a site
    # under DP reports: each record's loss and metrics with their bounds; without it a DP site reports
    # no training loss and refuses evaluation unless it runs with --site-metrics exact).

    def criterion(self, schema: DataSchema) -> nn.Module:
        """The loss as a module with a ``reduction`` attribute (Opacus' ghost clipping wraps it)."""
        ...

    def load_site(self, path: Path, options: TaskOptions) -> SiteData:
        """Load and fully validate a site folder; raise ``DataError`` naming file, row and fix."""
        ...

    def build_model(self, schema: DataSchema, options: TaskOptions) -> nn.Module:
        """Build a fresh model for ``schema`` (Opacus-compatible: no BatchNorm)."""
        ...

    def train(
        self,
        model: nn.Module,
        loader: DataLoader,
        optimizer: torch.optim.Optimizer,
        *,
        epochs: int,
        device: torch.device,
        criterion: nn.Module | None = None,
    ) -> TrainResult:
        """Train ``epochs`` passes of ``loader`` with ``optimizer`` (possibly an Opacus DPOptimizer).

        ``criterion``, when given, is the loss to call (Opacus' ghost-clipping wrapper around
        :meth:`criterion`); otherwise the task's own loss.
        """
        ...

    def evaluate(
        self, model: nn.Module, data: TensorDataset, *, device: torch.device, batch_size: int = 256
    ) -> dict[str, float]:
        """Return ``loss`` and the task's metrics on ``data``."""
        ...
