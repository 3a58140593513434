"""Reports of a simulated run: PNG plots and a one-page ``summary.md`` next to ``results.json``.

``fl-sim run`` writes them when the run ends and ``fl-sim report <run>`` redraws them from the files
the run left (``results.json``, ``predictions.npz``, ``partition.npz``), without rerunning anything.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from fedshield.common.atomic_io import atomic_write_text, read_json
from fedshield.common.errors import RunFolderError
from fedshield.common.run_files import PREDICTIONS_FILE, RESULTS_FILE, RESULTS_FORMAT
from fedshield.simulations.run_setup import PARTITION_FILE

PLOTS_DIR = "plots"
SUMMARY_FILE = "summary.md"


def load_results(run_dir: Path) -> dict[str, Any]:
    """The run's results document; ``RunFolderError`` naming the folder when it is not a run."""
    path = Path(run_dir) / RESULTS_FILE
    try:
        doc = read_json(path)
    except FileNotFoundError:
        raise RunFolderError(f"{run_dir}: no {RESULTS_FILE}; pass a run folder written by fl-sim run or fl-server "
                             "start") from None
    except ValueError as exc:
        raise RunFolderError(f"{path}: not valid JSON ({exc}); the run folder is damaged") from None
    if doc.get("format") != RESULTS_FORMAT:
        raise RunFolderError(f"{path}: not a FedShield results file")
    return doc


def final_central(doc: dict[str, Any]) -> dict[str, Any]:
    """Central test-set metrics after the last round that has them (empty when none)."""
    return next((r["centralized"] for r in reversed(doc.get("rounds", [])) if r.get("centralized")), {})


def report_run(run_dir: Path) -> list[Path]:
    """Draw every plot the run's files allow and write ``summary.md``; return the files written."""
    run_dir = Path(run_dir)
    doc = load_results(run_dir)
    out = run_dir / PLOTS_DIR
    from fedshield.simulations import plots  # matplotlib: only when drawing

    written = [plots.plot_metrics_per_round(doc, out / "metrics.png"),
               plots.plot_epsilon_per_site(doc, out / "epsilon.png")]
    predictions = run_dir / PREDICTIONS_FILE
    if predictions.is_file():
        with np.load(predictions) as npz:
            y, scores, kind = npz["y_true"], npz["scores"], str(npz["kind"])
        if kind == "classification":
            names = [str(i) for i in range(scores.shape[1])]
            written.append(plots.plot_confusion_matrix(y, scores.argmax(axis=1), names, out / "confusion.png"))
            written.append(plots.plot_roc(y, scores, out / "roc.png"))
        else:
            written.append(plots.plot_regression_fit(y, scores, out / "fit.png"))
    partition = run_dir / PARTITION_FILE
    if partition.is_file():
        with np.load(partition) as npz:
            counts, classes = npz["counts"], [str(c) for c in npz["class_names"]]
        written.append(plots.plot_partition_heatmap(counts, classes, out / "partition.png",
                                                    title=f"{len(counts)} sites: examples per label"))
    summary = run_dir / SUMMARY_FILE
    atomic_write_text(summary, run_summary_markdown(doc, [p.relative_to(run_dir) for p in written]))
    return [*written, summary]


def _fmt(value: Any, digits: int = 4) -> str:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return "∞" if isinstance(value, float) and math.isinf(value) else f"{value:.{digits}f}"
    return "–" if value is None else str(value)


def run_summary_markdown(doc: dict[str, Any], images: list[Path]) -> str:
    """One page: what ran, how it ended, metrics per round, privacy spent, the plots."""
    cfg = doc.get("config", {})
    final = doc.get("final", {})
    central = final_central(doc)
    dp = doc.get("privacy", {}).get("sample_level_dp", cfg.get("dp", True))
    lines = [f"# {doc.get('task')} — {doc.get('status')}", ""]
    total = doc.get("total_sites") or len(doc.get("sites", {}))
    per_round = cfg.get("per-round") or total
    lines += [
        f"- sites: {total} ({per_round} per round), rounds: {cfg.get('rounds')}, strategy: {cfg.get('strategy')}",
        f"- local training: {cfg.get('local-epochs')} epoch(s), batch {cfg.get('batch-size')}, lr {cfg.get('lr')}",
        "- privacy: " + (f"DP-SGD at every site, target ε {cfg.get('epsilon')} per site, accountant "
                          f"{cfg.get('accountant')}; worst ε spent {_fmt(final.get('epsilon_max'), 3)}"
                          if dp else "**no differential privacy (--no-dp)**"),
    ]
    if cfg.get("central-dp", "off") != "off":
        lines.append(f"- central DP: {cfg.get('central-dp')} clipping, client-level ε "
                     f"{_fmt(final.get('client_level_epsilon'), 3)}")
    if doc.get("error"):
        lines.append(f"- error: {doc['error']}")
    lines += ["", "| round | train loss | federated val " + _headline(doc) + " | central test " + _headline(doc)
              + " | worst ε |", "|---:|---:|---:|---:|---:|"]
    head = _headline(doc)
    for entry in doc.get("rounds", []):
        train = entry.get("train", {})
        lines.append(f"| {entry['round']} | {_fmt(train.get('loss'))} | "
                     f"{_fmt(entry.get('evaluate', {}).get('aggregate', {}).get(head))} | "
                     f"{_fmt(entry.get('centralized', {}).get(head))} | {_fmt(train.get('epsilon_max'), 3)} |")
    if central:
        lines += ["", "Final model on the central test set (examples no site holds): "
                  + ", ".join(f"{k} {_fmt(v)}" for k, v in central.items()), ""]
    lines += [""] + [f"![{p.stem}]({p.as_posix()})" for p in images] + [""]
    return "\n".join(lines)


def _headline(doc: dict[str, Any]) -> str:
    from fedshield.common.results_view import headline_metric_name

    return headline_metric_name(doc)
