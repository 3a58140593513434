"""Metrics against values computed by hand."""

from __future__ import annotations

import numpy as np
import pytest

from fedshield.common.metrics import classification_metrics, regression_metrics, weighted_mean


def test_binary_classification_metrics_by_hand() -> None:
    y = np.array([0, 0, 1, 1])
    probs = np.array([[0.9, 0.1], [0.4, 0.6], [0.3, 0.7], [0.8, 0.2]])  # predictions 0, 1, 1, 0
    m = classification_metrics(y, probs)
    assert m["accuracy"] == pytest.approx(0.5)
    assert m["precision"] == pytest.approx(0.5) and m["recall"] == pytest.approx(0.5)
    assert m["f1"] == pytest.approx(0.5)
    # positives' scores 0.7, 0.2 vs negatives' 0.1, 0.6: pairs won 0.7>0.1, 0.7>0.6, 0.2>0.1 -> 3/4
    assert m["roc_auc"] == pytest.approx(0.75)


def test_auc_omitted_when_one_class_present() -> None:
    m = classification_metrics(np.array([1, 1]), np.array([[0.2, 0.8], [0.6, 0.4]]))
    assert "roc_auc" not in m and m["accuracy"] == pytest.approx(0.5)


def test_regression_metrics_by_hand() -> None:
    m = regression_metrics(np.array([1.0, 2.0, 3.0]), np.array([1.0, 2.0, 5.0]))
    assert m["mse"] == pytest.approx(4 / 3) and m["mae"] == pytest.approx(2 / 3)
    assert m["r2"] == pytest.approx(1 - 4 / 2)  # SS_res 4, SS_tot 2


def test_weighted_mean_weights_by_examples_and_skips_missing_keys() -> None:
    out = weighted_mean([(10, {"accuracy": 1.0, "roc_auc": 0.5}), (30, {"accuracy": 0.5})])
    assert out["accuracy"] == pytest.approx(0.625)
    assert out["roc_auc"] == pytest.approx(0.5)


def test_diverged_outputs_give_only_finite_metrics() -> None:
    y = np.array([0, 1, 2, 2])
    probs = np.array([[0.8, 0.1, 0.1], [np.nan, 0, 0], [0.1, 0.1, 0.8], [0.1, 0.8, 0.1]])
    m = classification_metrics(y, probs)  # predictions 0, (none), 2, 1
    assert "roc_auc" not in m and m["accuracy"] == pytest.approx(0.5)
    assert m["precision"] == pytest.approx((1 + 0 + 1) / 3) and m["recall"] == pytest.approx((1 + 0 + 0.5) / 3)
    assert regression_metrics(np.array([1.0, 2.0]), np.array([np.nan, 1.0])) == {}
    assert set(regression_metrics(np.array([0.0, 1.0]), np.array([1e200, 1e200]))) == {"mae"}
