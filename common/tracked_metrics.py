"""What a tracker logs of a run, read from its results.json: per-round metrics, parameters, artifacts.

The metric names are stable (docs/simulation.md, "Experiment tracking"); the step is the round (0 = the
initial model). Every value is a number results.json holds for that round; nothing is recomputed
except a round's wall time:

    global/train/loss, global/train/<metric>         weighted training loss; the strategy's aggregated fit metrics
    global/evaluate/<metric>                         federated evaluation, weighted over sites
    global/centralized/<metric>                      the central test set (simulation)
    site/<site>/train/<metric>                       a site's training reply (examples, train-loss, epsilon, ...)
    site/<site>/evaluate/<metric>                    a site's evaluation reply (examples, loss, accuracy, epsilon, ...)
    privacy/epsilon_max, privacy/client_level_epsilon  the round's worst site ε; central DP's client-level ε
    sites/sampled, sites/trained, sites/train_failures, sites/evaluate_failures
    time/round_s, time/secagg/<stage>_s              round wall time (start to evaluation); SecAgg+ stages
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

from fedshield.common.run_files import RESULTS_FILE

FINAL_MODEL = "model-final.pt"
SUMMARY_FILE = "summary.md"
#: artifact folder -> the run folder's files logged there ("" = the artifact root)
ARTIFACT_GLOBS = {"model": (FINAL_MODEL,), "": (RESULTS_FILE, SUMMARY_FILE), "plots": ("plots/*.png",),
                  "samples": ("samples/*.png",)}
_UNSAFE = re.compile(r"[^A-Za-z0-9_\-. /]")


def metric_key(*parts: str) -> str:
    """``parts`` joined by ``/``, each with characters MLflow refuses in a name replaced by ``_``."""
    return "/".join(_UNSAFE.sub("_", str(p)).strip("/") or "_" for p in parts)


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def _numbers(prefix: tuple[str, ...], values: dict[str, Any], skip: tuple[str, ...] = ()) -> dict[str, float]:
    out = {}
    for name, value in values.items():
        number = _number(value)
        if number is not None and name not in skip:
            out[metric_key(*prefix, name)] = number
    return out


def round_metrics(entry: dict[str, Any]) -> dict[str, float]:
    """One round's entry of results.json as {metric name: value} (names in the module docstring)."""
    out: dict[str, float] = {}
    train = entry.get("train")
    if train:
        out.update(_numbers(("global", "train"), train.get("aggregate", {}), skip=("loss",)))
        if _number(train.get("loss")) is not None:
            out["global/train/loss"] = float(train["loss"])
        for site, values in train.get("sites", {}).items():
            out.update(_numbers(("site", site, "train"), values))
        for key in ("epsilon_max", "client_level_epsilon"):
            if _number(train.get(key)) is not None:
                out[f"privacy/{key}"] = float(train[key])
        out["sites/sampled"] = float(train.get("sampled", len(train.get("sites", {}))))
        out["sites/trained"] = float(len(train.get("sites", {})))
        out["sites/train_failures"] = float(len(train.get("failures", [])))
    evaluation = entry.get("evaluate")
    if evaluation:
        out.update(_numbers(("global", "evaluate"), evaluation.get("aggregate", {})))
        for site, values in evaluation.get("sites", {}).items():
            out.update(_numbers(("site", site, "evaluate"), values))
        out["sites/evaluate_failures"] = float(len(evaluation.get("failures", [])))
    out.update(_numbers(("global", "centralized"), entry.get("centralized") or {}))
    out.update(_numbers(("time", "secagg"), {f"{k}_s": v for k, v in entry.get("secagg_stages_s", {}).items()}))
    started, finished = _number(entry.get("started_at")), _number(entry.get("finished_at"))
    if started is not None and finished is not None:
        out["time/round_s"] = finished - started
    return out


def round_walltime(entry: dict[str, Any]) -> float | None:
    """When the round was recorded (Unix seconds), for the trackers' timestamps."""
    return _number(entry.get("finished_at")) or _number(entry.get("started_at"))


def run_params(doc: dict[str, Any]) -> dict[str, str]:
    """The run's configuration as parameters: results.json's ``config`` (its keys), and ``task``, ``mode``,
    ``total-sites`` and ``model-parameters`` where known; values as text."""
    params = {str(k): _text(v) for k, v in doc.get("config", {}).items()}
    params.update({"task": _text(doc.get("task")), "mode": _text(doc.get("mode"))})
    if doc.get("total_sites") is not None:
        params["total-sites"] = _text(doc["total_sites"])
    if doc.get("parameters") is not None:
        params["model-parameters"] = _text(doc["parameters"])
    return params


def _text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return "" if value is None else str(value)


def run_artifacts(folder: Path) -> list[tuple[Path, str]]:
    """The run folder's files worth keeping with the tracked run, as (file, artifact folder): the final model,
    results.json, summary.md, the plots and a generative task's samples, those that exist."""
    found = []
    for artifact_dir, patterns in ARTIFACT_GLOBS.items():
        for pattern in patterns:
            found += [(path, artifact_dir) for path in sorted(Path(folder).glob(pattern)) if path.is_file()]
    return found
