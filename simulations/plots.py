"""PNG plots of FedShield simulation reports: metrics, privacy spent, test-set diagnostics, partitions, sweeps.

Every function draws one figure off-screen (Agg), writes it atomically and returns the path written.
"""

from __future__ import annotations

import io
import math
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator, NullFormatter, NullLocator
from sklearn.metrics import auc, roc_curve

from fedshield.common.atomic_io import atomic_write_bytes
from fedshield.common.results_view import HEADLINE

DPI = 110
_METRIC_LABELS = {"accuracy": "accuracy", "r2": "R²", "mse": "mean squared error", "mae": "mean absolute error",
                  "loss": "loss", "frechet_digits": "Fréchet distance (digits features)",
                  "bleu": "BLEU", "exact_match": "exact match"}


def _save(fig: Figure, path: Path) -> Path:
    """Render ``fig`` to PNG in memory, then replace ``path`` atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    try:
        fig.savefig(buf, format="png", dpi=DPI, bbox_inches="tight")
    finally:
        fig.clear()
    atomic_write_bytes(path, buf.getvalue())
    return path


def _number(value: Any) -> float | None:
    """``value`` as a finite float, or None when missing / not a number."""
    if value is None or isinstance(value, bool):
        return None
    try:
        out = float(value)
    except (TypeError, ValueError):
        return None
    return out if math.isfinite(out) else None


def _note(ax: Axes, text: str) -> None:
    ax.text(0.5, 0.5, text, transform=ax.transAxes, ha="center", va="center", fontsize=12, color="dimgray",
            wrap=True)


def _label(metric: str) -> str:
    return _METRIC_LABELS.get(metric, metric)


# --------------------------------------------------------------------------------------------- run reports
def _main_metric(rounds: list[dict[str, Any]]) -> str:
    keys: set[str] = set()
    for entry in rounds:
        keys.update((entry.get("evaluate") or {}).get("aggregate") or {})
        keys.update(entry.get("centralized") or {})
    return next((m for m in HEADLINE if m in keys), "accuracy")


def _series(rounds: list[dict[str, Any]], getter: Any) -> tuple[list[int], list[float]]:
    xs: list[int] = []
    ys: list[float] = []
    for entry in rounds:
        value = _number(getter(entry))
        if value is not None:
            xs.append(int(entry.get("round", len(xs))))
            ys.append(value)
    return xs, ys


def plot_metrics_per_round(doc: dict[str, Any], path: Path) -> Path:
    """Main metric (accuracy, else R², else MSE) and loss per federated round, two panels.

    ``doc``: a results.json document; ``doc["rounds"][i]`` may hold ``train["loss"]``,
    ``evaluate["aggregate"]`` (sites' weighted validation mean) and ``centralized`` (central test set).
    """
    rounds = sorted(doc.get("rounds") or [], key=lambda r: r.get("round", 0))
    metric = _main_metric(rounds)
    fig = Figure(figsize=(11, 4.2))
    ax_m, ax_l = fig.subplots(1, 2)
    def fed(key: str) -> Callable[[dict[str, Any]], Any]:  # the sites' weighted evaluation
        return lambda r: ((r.get("evaluate") or {}).get("aggregate") or {}).get(key)

    def cen(key: str) -> Callable[[dict[str, Any]], Any]:  # the central test set
        return lambda r: (r.get("centralized") or {}).get(key)
    drawn = {ax_m: 0, ax_l: 0}
    for ax, key in ((ax_m, metric), (ax_l, "loss")):
        for label, getter, style in (("federated (mean of sites' validation)", fed(key), "o-"),
                                     ("central test set", cen(key), "s-")):
            xs, ys = _series(rounds, getter)
            if xs:
                ax.plot(xs, ys, style, markersize=4, label=label)
                drawn[ax] += 1
    xs, ys = _series(rounds, lambda r: (r.get("train") or {}).get("loss"))
    if xs:
        ax_l.plot(xs, ys, "^--", markersize=4, label="train loss")
        drawn[ax_l] += 1
    for ax, key in ((ax_m, metric), (ax_l, "loss")):
        ax.set_xlabel("round")
        ax.set_ylabel(_label(key))
        ax.set_title(f"{_label(key)} per round")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(True, alpha=0.3)
        if drawn[ax]:
            ax.legend(fontsize=8)
        else:
            _note(ax, "no values recorded")
    fig.suptitle(f"{doc.get('task', 'run')}: {_label(metric)} and loss per round")
    return _save(fig, path)


def plot_epsilon_per_site(doc: dict[str, Any], path: Path) -> Path:
    """Sample-level ε spent per site after each round it trained, plus the worst case over sites.

    ``doc["rounds"][i]["train"]["sites"][name]["epsilon"]``: float ε of that site after round i.
    """
    per_site: dict[str, list[tuple[int, float]]] = defaultdict(list)
    worst_rounds: list[int] = []
    worst: list[float] = []
    running = -math.inf
    for entry in sorted(doc.get("rounds") or [], key=lambda r: r.get("round", 0)):
        sites = (entry.get("train") or {}).get("sites") or {}
        rnd = int(entry.get("round", 0))
        eps_now = []
        for name, info in sites.items():
            eps = _number((info or {}).get("epsilon")) if isinstance(info, dict) else None
            if eps is not None:
                per_site[str(name)].append((rnd, eps))
                eps_now.append(eps)
        if eps_now:
            running = max(running, *eps_now)
            worst_rounds.append(rnd)
            worst.append(running)
    fig = Figure(figsize=(8, 4.8))
    ax = fig.subplots()
    ax.set_xlabel("round")
    ax.set_ylabel("ε spent (sample-level, δ per site)")
    ax.set_title(f"{doc.get('task', 'run')}: privacy spent per site")
    if not per_site:
        _note(ax, "differential privacy off (--no-dp)")
        ax.set_xticks([])
        ax.set_yticks([])
        return _save(fig, path)
    names = sorted(per_site)
    few = len(names) <= 10
    for name in names:
        xs, ys = zip(*per_site[name], strict=True)
        if few:
            ax.plot(xs, ys, "o-", drawstyle="steps-post", linewidth=1, markersize=3, label=name)
        else:
            ax.plot(xs, ys, "o-", drawstyle="steps-post", linewidth=0.7, markersize=2, alpha=0.35, color="tab:blue")
    ax.plot(worst_rounds, worst, "-", drawstyle="steps-post", linewidth=2.6, color="black",
            label="worst case (max over sites)")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylim(bottom=0)
    ax.grid(True, alpha=0.3)
    if few:
        ax.legend(fontsize=7, ncol=2 if len(names) > 5 else 1)
    else:
        ax.legend(fontsize=8, title=f"{len(names)} sites (thin lines)", title_fontsize=8)
    return _save(fig, path)


# --------------------------------------------------------------------------------------------- test set
def plot_confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, class_names: list[str], path: Path) -> Path:
    """Row-normalised confusion matrix; ``y_true``, ``y_pred``: (N,) int labels; counts shown for ≤ 12 classes."""
    y_true = np.asarray(y_true).astype(int).ravel()
    y_pred = np.asarray(y_pred).astype(int).ravel()
    k = max(len(class_names), int(y_true.max(initial=0)) + 1, int(y_pred.max(initial=0)) + 1)
    names = [str(c) for c in class_names] + [str(i) for i in range(len(class_names), k)]
    counts = np.zeros((k, k), dtype=np.int64)
    np.add.at(counts, (y_true, y_pred), 1)
    rows = counts.sum(axis=1, keepdims=True)
    norm = np.divide(counts, rows, out=np.zeros(counts.shape, dtype=float), where=rows > 0)
    side = min(3.5 + 0.45 * k, 14)
    fig = Figure(figsize=(side + 1.2, side))
    ax = fig.subplots()
    image = ax.imshow(norm, cmap="Blues", vmin=0.0, vmax=1.0)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="fraction of the true class")
    if k <= 12:
        for i in range(k):
            for j in range(k):
                ax.text(j, i, str(counts[i, j]), ha="center", va="center", fontsize=8,
                        color="white" if norm[i, j] > 0.5 else "black")
    if k <= 40:
        ax.set_xticks(range(k), names, rotation=45 if max(len(n) for n in names) > 3 else 0, ha="right"
                      if max(len(n) for n in names) > 3 else "center")
        ax.set_yticks(range(k), names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    accuracy = float((y_true == y_pred).mean()) if y_true.size else float("nan")
    ax.set_title(f"Confusion matrix (rows normalised), accuracy {accuracy:.3f}, N={y_true.size}")
    return _save(fig, path)


def plot_roc(y_true: np.ndarray, scores: np.ndarray, path: Path) -> Path:
    """ROC curves; ``y_true``: (N,) int labels, ``scores``: (N, K) class probabilities.

    K == 2: the curve of class 1; K > 2: one-vs-rest per class present in ``y_true`` plus the micro-average.
    """
    y_true = np.asarray(y_true).astype(int).ravel()
    scores = np.asarray(scores, dtype=float)
    if scores.ndim == 1:
        scores = np.stack([1.0 - scores, scores], axis=1)
    k = scores.shape[1]
    present = sorted(int(c) for c in np.unique(y_true) if 0 <= c < k)
    fig = Figure(figsize=(6.4, 5.6))
    ax = fig.subplots()
    ax.plot([0, 1], [0, 1], "--", color="gray", linewidth=1, label="chance")
    ax.set_xlim(-0.01, 1.01)
    ax.set_ylim(-0.01, 1.01)
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    ax.grid(True, alpha=0.3)
    if len(present) < 2 or k < 2:
        ax.set_title("ROC curve")
        _note(ax, "ROC undefined: only one class in the test set")
        return _save(fig, path)
    if k == 2:
        fpr, tpr, _ = roc_curve(y_true == 1, scores[:, 1])
        ax.plot(fpr, tpr, linewidth=2, label=f"class 1 (AUC {auc(fpr, tpr):.3f})")
        ax.set_title("ROC curve (class 1 vs 0)")
    else:
        many = len(present) > 15
        for c in present:
            fpr, tpr, _ = roc_curve(y_true == c, scores[:, c])
            ax.plot(fpr, tpr, linewidth=0.9, alpha=0.5 if many else 0.8,
                    label=None if many else f"class {c} (AUC {auc(fpr, tpr):.3f})")
        onehot = (y_true[:, None] == np.asarray(present)[None, :]).ravel()
        fpr, tpr, _ = roc_curve(onehot, scores[:, present].ravel())
        ax.plot(fpr, tpr, linewidth=2.6, color="black", label=f"micro-average (AUC {auc(fpr, tpr):.3f})")
        ax.set_title(f"ROC curves, one-vs-rest ({len(present)} classes)")
    ax.legend(fontsize=7, loc="lower right")
    return _save(fig, path)


def plot_regression_fit(y_true: np.ndarray, y_pred: np.ndarray, path: Path) -> Path:
    """Predicted vs true scatter with the y = x line; ``y_true``, ``y_pred``: (N,) or (N, 1) targets, R² in
    the title."""
    y_true = np.asarray(y_true, dtype=float).ravel()
    y_pred = np.asarray(y_pred, dtype=float).ravel()
    n = min(y_true.size, y_pred.size)
    y_true, y_pred = y_true[:n], y_pred[:n]
    ok = np.isfinite(y_true) & np.isfinite(y_pred)
    y_true, y_pred = y_true[ok], y_pred[ok]
    fig = Figure(figsize=(5.8, 5.6))
    ax = fig.subplots()
    if y_true.size:
        ss_tot = float(((y_true - y_true.mean()) ** 2).sum())
        r2 = 1.0 - float(((y_true - y_pred) ** 2).sum()) / ss_tot if ss_tot > 0 else float("nan")
        ax.scatter(y_true, y_pred, s=8, alpha=0.5 if y_true.size > 500 else 0.8, edgecolors="none")
        lo = float(min(y_true.min(), y_pred.min()))
        hi = float(max(y_true.max(), y_pred.max()))
        pad = 0.03 * (hi - lo or 1.0)
        ax.plot([lo - pad, hi + pad], [lo - pad, hi + pad], "--", color="gray", linewidth=1, label="y = x (perfect)")
        ax.legend(fontsize=8, loc="upper left")
        ax.set_title(f"Predicted vs true on the test set, R² = {r2:.3f} (N={y_true.size})")
    else:
        ax.set_title("Predicted vs true on the test set")
        _note(ax, "no predictions")
    ax.set_xlabel("true value")
    ax.set_ylabel("predicted value")
    ax.grid(True, alpha=0.3)
    return _save(fig, path)


# --------------------------------------------------------------------------------------------- partitions
def plot_partition_heatmap(counts: np.ndarray, class_names: list[str], path: Path, title: str = "") -> Path:
    """Examples per (site, class) as a heat map plus total examples per site; ``counts``: (sites, classes) ints."""
    counts = np.atleast_2d(np.asarray(counts))
    n_sites, n_classes = counts.shape
    names = [str(c) for c in class_names] + [str(i) for i in range(len(class_names), n_classes)]
    height = min(3 + 0.25 * n_sites, 12)
    width = min(4.5 + 0.4 * n_classes, 14) + 2.5
    fig = Figure(figsize=(width, height), layout="constrained")
    ax, ax_bar, cax = fig.subplots(1, 3, gridspec_kw={"width_ratios": [4, 1, 0.12]})
    image = ax.imshow(counts, aspect="auto", cmap="viridis", interpolation="nearest")
    fig.colorbar(image, cax=cax, label="examples")
    ax_bar.barh(np.arange(n_sites), counts.sum(axis=1), height=0.8, color="tab:gray")
    ax_bar.set_ylim(n_sites - 0.5, -0.5)
    ax_bar.set_yticks([])
    ax_bar.set_xlabel("total examples")
    ax_bar.set_title("per site", fontsize=9)
    ax_bar.grid(True, axis="x", alpha=0.3)
    if n_sites <= 40:
        ax.set_yticks(range(n_sites), [f"site_{i:04d}" for i in range(n_sites)], fontsize=7)
    else:
        ax.yaxis.set_major_locator(MaxNLocator(nbins=8, integer=True))
    if n_classes <= 40:
        rotate = max((len(n) for n in names), default=0) > 3
        ax.set_xticks(range(n_classes), names, rotation=45 if rotate else 0, ha="right" if rotate else "center")
    else:
        ax.xaxis.set_major_locator(MaxNLocator(nbins=10, integer=True))
    ax.set_xlabel("class")
    ax.set_ylabel("site")
    fig.suptitle(title or f"Examples per class at each of {n_sites} sites")
    return _save(fig, path)


# --------------------------------------------------------------------------------------------- sweeps
def plot_privacy_utility(rows: list[dict[str, Any]], path: Path, metric: str = "accuracy",
                         group_keys: tuple[str, ...] = ()) -> Path:
    """Metric vs ε (log axis), mean ± std over seeds per group; ε = inf (no DP) drawn right of the largest ε.

    ``rows``: one dict per finished run with ``"epsilon"`` (float, ``math.inf`` for no DP), ``metric``,
    ``"seed"`` and the ``group_keys``; rows whose metric is missing are skipped.
    """
    groups: dict[tuple[str, ...], dict[float, list[float]]] = defaultdict(lambda: defaultdict(list))
    for row in rows:
        value = _number(row.get(metric))
        try:
            eps = float(row.get("epsilon", math.inf))
        except (TypeError, ValueError):
            continue
        if value is None or math.isnan(eps) or eps <= 0:
            continue
        key = tuple(f"{k}={row.get(k)}" for k in group_keys)
        groups[key][eps].append(value)
    finite = sorted({e for g in groups.values() for e in g if math.isfinite(e)})
    inf_x = 2.0 * finite[-1] if finite else 10.0
    fig = Figure(figsize=(8, 5))
    ax = fig.subplots()
    ax.set_xscale("log")
    ax.set_xlabel("ε (per site, sample-level DP)")
    ax.set_ylabel(_label(metric))
    ax.set_title(f"Privacy–utility trade-off: {_label(metric)} vs ε (mean ± std over seeds)")
    ax.grid(True, alpha=0.3)
    if not groups:
        _note(ax, "no finished runs with a value to plot")
        ax.xaxis.set_major_locator(NullLocator())
        ax.xaxis.set_minor_locator(NullLocator())
        return _save(fig, path)
    colors = matplotlib.colormaps["tab10"]
    for i, key in enumerate(sorted(groups)):
        color = colors(i % 10)
        label = ", ".join(key) if key else "all runs"
        by_eps = groups[key]
        xs = sorted(by_eps, key=lambda e: (math.isinf(e), e))
        means = [float(np.mean(by_eps[e])) for e in xs]
        stds = [float(np.std(by_eps[e], ddof=1)) if len(by_eps[e]) > 1 else 0.0 for e in xs]
        fin = [j for j, e in enumerate(xs) if math.isfinite(e)]
        if fin:
            ax.errorbar([xs[j] for j in fin], [means[j] for j in fin], yerr=[stds[j] for j in fin], fmt="o-",
                        capsize=4, color=color, label=label)
        if math.isinf(xs[-1]):
            ax.errorbar([inf_x], [means[-1]], yerr=[stds[-1]], fmt="D", capsize=4, color=color,
                        label=None if fin else label)
            ax.axhline(means[-1], linestyle=":", linewidth=1.2, color=color)
    ticks = [*finite, inf_x]
    ax.xaxis.set_minor_locator(NullLocator())
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xticks(ticks, [f"{e:g}" for e in finite] + ["∞ (no DP)"])
    ax.set_xlim(min(ticks) / 1.6, inf_x * 1.6)
    ax.legend(fontsize=8, title="dotted: no-DP mean" if any(math.isinf(e) for g in groups.values() for e in g)
              else None, title_fontsize=8)
    return _save(fig, path)
