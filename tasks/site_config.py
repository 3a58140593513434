"""A site folder's optional ``fedshield.toml``: which task its data is for and how to read it.

Example::

    task = "tabular"
    target = "diagnosis"     # tabular: the target column
    model = "mlp"            # run-level in practice; kept for single-site tools
    kind = "classification"  # tabular: force classification/regression
    val_fraction = 0.2       # held-out share
    seed = 0                 # held-out split seed
    file = "patients.csv"    # tabular: which CSV, when the folder has several
    classes = 2              # tabular: number of classes (needed under DP: never inferred from the data)
    feature_ranges = { age = [20, 90], bmi = [18, 40] }  # tabular, needed under DP: each feature's
                             # range, mapped to [-1, 1]
    target_shift = 150.0     # tabular regression: train on (y - shift) / scale, federation-wide
    target_scale = 75.0
    labels = ["cat", "dog"]  # image tasks: the class names, in index order (images/<name>/ folders)
    max_length = 128         # text tasks: tokens per example (longer texts are an error)
    max_target_length = 16   # seq2seq-attention: bytes of a target text (max_length: of a source text)
    allowed-tasks = ["my-plugin-task"]   # third-party tasks this site runs (built-ins always)
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

from fedshield.common.errors import ConfigError
from fedshield.tasks.base import TaskOptions

CONFIG_FILE = "fedshield.toml"
_TYPES: dict[str, tuple[type, ...]] = {
    "task": (str,), "target": (str,), "model": (str,), "kind": (str,), "val_fraction": (float, int),
    "seed": (int,), "file": (str,), "classes": (int,), "target_shift": (float, int),
    "target_scale": (float, int), "labels": (list,), "max_length": (int,), "max_target_length": (int,),
    "allowed-tasks": (list,), "feature_ranges": (dict,),
}


def read_site_config(folder: Path) -> dict[str, Any]:
    """The folder's ``fedshield.toml`` as a dict (empty when absent), type-checked."""
    path = Path(folder) / CONFIG_FILE
    if not path.is_file():
        return {}
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: not valid TOML ({exc}); fix the file") from None
    for key, value in raw.items():
        if key not in _TYPES:
            raise ConfigError(f"{path}: unknown key {key!r}; allowed keys: {', '.join(sorted(_TYPES))}")
        if not isinstance(value, _TYPES[key]) or isinstance(value, bool):
            raise ConfigError(f"{path}: {key} = {value!r} has the wrong type; expected {_TYPES[key][0].__name__}")
    if "kind" in raw and raw["kind"] not in ("classification", "regression"):
        raise ConfigError(f"{path}: kind = {raw['kind']!r}; use \"classification\" or \"regression\"")
    labels = raw.get("labels", [])
    if not all(isinstance(n, str) and n for n in labels) or len(set(labels)) != len(labels) or len(labels) == 1:
        raise ConfigError(f"{path}: labels must list two or more distinct class names (strings), in index order")
    if "val_fraction" in raw and not 0 < float(raw["val_fraction"]) < 1:
        raise ConfigError(f"{path}: val_fraction = {raw['val_fraction']!r}; use a number in (0, 1)")
    return raw


def site_options(folder: Path, overrides: dict[str, Any]) -> tuple[str | None, TaskOptions]:
    """Merge ``fedshield.toml`` with CLI ``overrides`` (which win; None values are ignored)."""
    raw = {**read_site_config(folder), **{k: v for k, v in overrides.items() if v is not None}}
    options = TaskOptions(
        target=raw.get("target"),
        model=str(raw.get("model", "auto")),
        kind=raw.get("kind"),
        val_fraction=float(raw.get("val_fraction", 0.2)),
        seed=int(raw.get("seed", 0)),
        extra={k: raw[k] for k in ("file", "classes", "target_shift", "target_scale", "labels", "max_length",
                                 "max_target_length", "feature_ranges")
               if k in raw},
    )
    return raw.get("task"), options


def site_allowed_tasks(folder: Path) -> list[str]:
    """Third-party task names the site's ``fedshield.toml`` allows (``allowed-tasks``)."""
    names = read_site_config(folder).get("allowed-tasks", [])
    if not all(isinstance(n, str) for n in names):
        raise ConfigError(f"{Path(folder) / CONFIG_FILE}: allowed-tasks must be a list of task names (strings)")
    return list(names)
