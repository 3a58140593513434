"""Evaluation metrics (scikit-learn) and their weighted aggregation across sites.

Classification: accuracy, macro precision/recall/F1, ROC-AUC (binary: score of class 1; multiclass:
one-vs-rest macro over the classes present). Regression: MSE, MAE, R². A metric that is undefined on
the given data (AUC with one class present, R² on one example) or not finite (a diverged model's
NaN/inf outputs) is omitted rather than reported as NaN, because Flower metrics must be finite
numbers. A classification row whose probabilities are not finite counts as a wrong prediction.
"""

from __future__ import annotations

import numpy as np
from sklearn import metrics as skm


def classification_metrics(y_true: np.ndarray, probs: np.ndarray) -> dict[str, float]:
    """``y_true`` (N,) int labels, ``probs`` (N, K) class probabilities."""
    y_true = np.asarray(y_true).astype(int)
    probs = np.asarray(probs, dtype=np.float64)
    finite = np.isfinite(probs).all(axis=1)
    y_pred = np.where(finite, np.nan_to_num(probs).argmax(axis=1), -1)  # -1: no valid prediction
    labels = np.union1d(y_true, y_pred[finite])
    out = {
        "accuracy": float(np.mean(y_true == y_pred)),
        "precision": float(skm.precision_score(y_true, y_pred, labels=labels, average="macro", zero_division=0)),
        "recall": float(skm.recall_score(y_true, y_pred, labels=labels, average="macro", zero_division=0)),
        "f1": float(skm.f1_score(y_true, y_pred, labels=labels, average="macro", zero_division=0)),
    }
    present = np.unique(y_true)
    if len(present) >= 2 and finite.all():
        if probs.shape[1] == 2:
            out["roc_auc"] = float(skm.roc_auc_score(y_true, probs[:, 1]))
        else:
            aucs = [skm.roc_auc_score(y_true == c, probs[:, c]) for c in present]
            out["roc_auc"] = float(np.mean(aucs))
    return out


def regression_metrics(y_true: np.ndarray, y_pred: np.ndarray) -> dict[str, float]:
    """``y_true``/``y_pred`` (N,) real values."""
    y_true = np.asarray(y_true, dtype=np.float64).reshape(-1)
    y_pred = np.asarray(y_pred, dtype=np.float64).reshape(-1)
    if not np.isfinite(y_pred).all():
        return {}
    with np.errstate(over="ignore"):
        out = {
            "mse": float(skm.mean_squared_error(y_true, y_pred)),
            "mae": float(skm.mean_absolute_error(y_true, y_pred)),
        }
        if len(y_true) >= 2 and np.var(y_true) > 0:
            out["r2"] = float(skm.r2_score(y_true, y_pred))
    return {k: v for k, v in out.items() if np.isfinite(v)}


def weighted_mean(results: list[tuple[int, dict[str, float]]]) -> dict[str, float]:
    """Per-key mean weighted by example counts, over the results that report the key."""
    totals: dict[str, float] = {}
    weights: dict[str, int] = {}
    for n, values in results:
        for key, value in values.items():
            totals[key] = totals.get(key, 0.0) + n * float(value)
            weights[key] = weights.get(key, 0) + n
    return {k: totals[k] / weights[k] for k in totals if weights[k] > 0}
