"""``tabular``: logistic regression, linear regression or a small MLP on a CSV table.

Site format: one CSV with a header row; a target column (``target = "..."`` in ``fedshield.toml`` or
``--target``); every other column a numeric feature.

Features are scaled by the ranges the site declares in ``fedshield.toml`` (``feature_ranges = { col =
[low, high], ... }``): ``2·(x - low)/(high - low) - 1``, so a declared range maps to [-1, 1]. The map
depends on each record alone, so DP-SGD's per-example bound holds: standardising with the site's own
mean and standard deviation (this task's former default) let one record change every other record's
features, hence every clipped gradient (‖Δ‖ 0.39 at C = 1). Under DP the ranges, ``kind`` and (for
classification) ``classes`` must be declared: nothing that shapes what a site releases is inferred
from its data. With ``--no-dp`` and no declared ranges, features are standardised per site as before.
Regression targets are trained as ``(y - target_shift) / target_scale`` — a federation-wide constant
from ``fedshield.toml`` (default 0 and 1) so every site optimises the same objective — and metrics are
reported in the target's own units.

This is DP-SGD on the model's gradients; the seed document's idea of adding noise to the labels is
not differential privacy of the training data and is deliberately not reproduced.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import NamedTuple, cast

import numpy as np
import torch
from torch import nn
from torch.utils.data import TensorDataset

from fedshield.common.errors import ConfigError, DataError
from fedshield.tasks.base import DataSchema, Kind, SiteData, TaskOptions
from fedshield.tasks.holdout import holdout_indices
from fedshield.tasks.supervised import SupervisedTask, as_float_tensor

MAX_CLASSES_INFERRED = 20
MODELS = ("auto", "logistic", "linear", "mlp")


def _find_csv(folder: Path, options: TaskOptions) -> Path:
    if "file" in options.extra:
        path = folder / str(options.extra["file"])
        if not path.is_file():
            raise DataError(f"{path}: file named in fedshield.toml does not exist")
        return path
    candidates = sorted(folder.glob("*.csv"))
    if not candidates:
        raise DataError(f"{folder}: no CSV file; put the site's table there as data.csv")
    if len(candidates) > 1:
        names = ", ".join(p.name for p in candidates)
        raise DataError(f"{folder}: several CSV files ({names}); name one with file = \"...\" in fedshield.toml")
    return candidates[0]


class Table(NamedTuple):
    """A parsed CSV: ``x`` (N, F) float64 features, ``y`` (N,) float64 target, ``lines`` (N,) 1-based line
    numbers of each row in the file (the header is line 1), for error messages."""

    features: list[str]
    x: np.ndarray
    y: np.ndarray
    lines: np.ndarray


def read_table(path: Path, target: str) -> Table:
    """Parse and check every cell of ``path``; errors name ``file:line``, the column and the value."""
    with open(path, newline="", encoding="utf-8-sig") as fh:
        reader = csv.reader(fh)
        try:
            header = [h.strip() for h in next(reader)]
        except StopIteration:
            raise DataError(f"{path}: file is empty; it needs a header row and data rows") from None
        except (csv.Error, UnicodeDecodeError) as exc:
            raise DataError(f"{path}:1: not a readable CSV header ({exc}); save it as UTF-8 CSV") from None
        if "" in header:
            raise DataError(f"{path}:1: header cell {header.index('') + 1} is empty; name every column")
        dupes = sorted({h for h in header if header.count(h) > 1})
        if dupes:
            raise DataError(f"{path}:1: column {dupes[0]!r} appears more than once; give columns unique names")
        if target not in header:
            raise DataError(f"{path}: no target column {target!r}; columns are: {', '.join(header)}")
        rows: list[list[float]] = []
        lines: list[int] = []
        last = reader.line_num  # physical lines read so far (a quoted cell may span several)
        try:
            for row in reader:
                line_no, last = last + 1, reader.line_num  # the record's first line
                if not row or all(not c.strip() for c in row):
                    continue
                if len(row) != len(header):
                    raise DataError(f"{path}:{line_no}: row has {len(row)} cells, the header has {len(header)}; "
                                    "fix the row")
                rows.append([_cell(path, line_no, col, cell) for col, cell in zip(header, row, strict=True)])
                lines.append(line_no)
        except (csv.Error, UnicodeDecodeError) as exc:
            raise DataError(f"{path}:{reader.line_num + 1}: not readable as CSV ({exc}); save it as UTF-8 "
                            "CSV") from None
    if not rows:
        raise DataError(f"{path}: header only, no data rows; add the site's examples")
    table = np.asarray(rows, dtype=np.float64)
    t = header.index(target)
    features = [h for i, h in enumerate(header) if i != t]
    if not features:
        raise DataError(f"{path}: only the target column; add feature columns")
    return Table(features, np.delete(table, t, axis=1), table[:, t], np.asarray(lines, dtype=np.int64))


def declared_ranges(ranges: object, features: list[str], config: Path) -> tuple[np.ndarray, np.ndarray]:
    """(low, high) arrays (F,) in ``features``' order from ``feature_ranges``; every feature once, low < high."""
    if not isinstance(ranges, dict):
        raise ConfigError(f"{config}: feature_ranges must be a table of column = [low, high]")
    missing = [f for f in features if f not in ranges]
    unknown = sorted(set(ranges) - set(features))
    if missing or unknown:
        parts = ([f"no range for {', '.join(missing[:5])}"] if missing else []) + \
                ([f"unknown column(s) {', '.join(unknown[:5])}"] if unknown else [])
        what = "; ".join(parts)
        raise ConfigError(f"{config}: feature_ranges must name every feature column exactly once ({what})")
    low, high = np.empty(len(features)), np.empty(len(features))
    for i, name in enumerate(features):
        pair = ranges[name]
        ok = (isinstance(pair, list) and len(pair) == 2
              and all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in pair))
        if not ok or not pair[0] < pair[1]:
            raise ConfigError(f"{config}: feature_ranges.{name} = {pair!r}; use [low, high] with finite "
                              "numbers, low < high")
        low[i], high[i] = float(pair[0]), float(pair[1])
    return low, high


def _cell(path: Path, line_no: int, col: str, cell: str) -> float:
    text = cell.strip()
    try:
        value = float(text)
    except ValueError:
        what = "empty cell" if not text else f"non-numeric value {text!r}"
        raise DataError(f"{path}:{line_no}: {what} in column {col!r}; every cell must be a number") from None
    if not math.isfinite(value):
        raise DataError(f"{path}:{line_no}: value {text!r} in column {col!r} is not finite; use a real number")
    return value


class TabularTask(SupervisedTask):
    """Logistic/linear regression or an MLP on a numeric CSV."""

    name = "tabular"
    models = MODELS  # checked by `fl-server start` / `fl-sim run` before anything starts
    summary = "logistic regression, linear regression or MLP (64 hidden) on a numeric CSV table"
    data_format = ("one CSV with a header; target column from fedshield.toml `target` or --target; other "
                   "columns numeric features, scaled by `feature_ranges` from fedshield.toml; under DP declare "
                   "`kind` and `classes` too (without DP: standardised per site, and classification when the "
                   f"target holds ≤{MAX_CLASSES_INFERRED} integer values 0..K-1)")
    metrics = ("loss", "accuracy", "precision", "recall", "f1", "roc_auc", "mse", "mae", "r2")
    # Linear layers only: one-pass book-keeping clipping (client/book_keeping.py); on a 0.45 ms step
    # fixed per-operation costs dominate, and it still beats Opacus' fastest mode here by 3x (docs/performance.md).
    dp_mode = "bk"

    def load_site(self, path: Path, options: TaskOptions) -> SiteData:
        folder = Path(path)
        if not folder.is_dir():
            raise DataError(f"{folder}: site folder does not exist; pass the folder that holds the CSV")
        csv_path = _find_csv(folder, options)
        if not options.target:
            raise DataError(f"{csv_path}: no target column named; add target = \"column\" to "
                            f"{folder / 'fedshield.toml'} or pass --target")
        names, x, y, lines = read_table(csv_path, options.target)
        config = folder / "fedshield.toml"
        if options.private:
            self._check_declared(options, config)
        kind = options.kind or self._infer_kind(y)
        if kind == "classification":
            if np.any(np.mod(y, 1) != 0) or np.any(y < 0):
                bad = int(np.flatnonzero((np.mod(y, 1) != 0) | (y < 0))[0])
                raise DataError(f"{csv_path}:{lines[bad]}: target {y[bad]:g} is not a class index 0..K-1; "
                                "relabel the classes or set kind = \"regression\"")
            classes = int(options.extra.get("classes", max(2, int(y.max()) + 1)))
            if classes < 2:
                raise ConfigError(f"classes = {classes}: a classifier needs at least 2; fix fedshield.toml")
            if y.max() >= classes:
                bad = int(np.argmax(y))
                raise DataError(f"{csv_path}:{lines[bad]}: label {int(y[bad])} is outside 0..{classes - 1} "
                                "(fedshield.toml classes); fix the label or raise classes")
            labels = y.astype(np.int64)
        else:
            classes, labels = 1, None
        train, val = holdout_indices(x, y, val_fraction=options.val_fraction, seed=options.seed, where=str(csv_path))
        ranges = options.extra.get("feature_ranges")
        if ranges is not None:
            low, high = declared_ranges(ranges, names, config)
            xs = as_float_tensor(2.0 * (x - low) / (high - low) - 1.0)
        else:  # --no-dp: nothing is promised, so the site's own statistics may shape its features
            mean = x[train].mean(axis=0)
            std = x[train].std(axis=0)
            std[std == 0] = 1.0
            xs = as_float_tensor((x - mean) / std)
        if kind == "classification":
            yt = torch.as_tensor(labels)
        else:
            shift, scale = self._target_transform(options)
            yt = as_float_tensor((y - shift) / scale)
        schema = DataSchema(kind=cast(Kind, kind), input_shape=(len(names),), num_outputs=classes,
                            feature_names=tuple(names), target=options.target)
        return SiteData(TensorDataset(xs[train], yt[train]), TensorDataset(xs[val], yt[val]), schema, folder)

    @staticmethod
    def _check_declared(options: TaskOptions, config: Path) -> None:
        """Under DP, refuse (one line, every missing key at once) what would otherwise come from the data:
        the kind and class count (which values the target holds would shape the schema that leaves the
        site) and the feature scaling (the site's own mean and standard deviation would let one record
        shift every other record's features, and so every clipped gradient)."""
        missing = []
        if options.kind is None:
            missing.append('kind = "classification" or "regression"')
        if options.kind != "regression" and "classes" not in options.extra:
            missing.append("classes = K (classification)")
        if "feature_ranges" not in options.extra:
            missing.append("feature_ranges = { column = [low, high], ... } for every feature (the range that maps to "
                           "[-1, 1])")
        if missing:
            raise ConfigError(f"{config}: under DP, tabular takes nothing about the data from the data itself; declare "
                              f"{'; '.join(missing)} (or train with --no-dp)")

    @staticmethod
    def _infer_kind(y: np.ndarray) -> str:  # --no-dp only: what values the target holds is data
        integral = bool(np.all(np.mod(y, 1) == 0))
        return "classification" if integral and len(np.unique(y)) <= MAX_CLASSES_INFERRED else "regression"

    @staticmethod
    def _target_transform(options: TaskOptions) -> tuple[float, float]:
        shift = float(options.extra.get("target_shift", 0.0))
        scale = float(options.extra.get("target_scale", 1.0))
        if scale <= 0:
            raise ConfigError(f"target_scale = {scale}: must be positive")
        return shift, scale

    def build_model(self, schema: DataSchema, options: TaskOptions) -> nn.Module:
        if options.model not in MODELS:
            raise ConfigError(f"--model {options.model!r}: tabular models are {', '.join(MODELS)}")
        n_in = schema.input_shape[0]
        if options.model == "mlp":
            return nn.Sequential(nn.Linear(n_in, 64), nn.ReLU(), nn.Linear(64, schema.num_outputs))
        if options.model == "logistic" and schema.kind != "classification":
            raise ConfigError("--model logistic needs a classification target; use linear or mlp")
        if options.model == "linear" and schema.kind != "regression":
            raise ConfigError("--model linear needs a regression target; use logistic or mlp")
        return nn.Sequential(nn.Linear(n_in, schema.num_outputs))
