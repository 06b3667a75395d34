"""Classification metrics equal scikit-learn's definitions, including small folds with missing classes."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
from sklearn.metrics import accuracy_score, balanced_accuracy_score, f1_score, roc_auc_score

from pipeline.engine.metrics import classification_metrics


def sklearn_metrics(labels, probabilities):
    predicted = probabilities.argmax(axis=1)
    present = np.unique(labels)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return {
            "accuracy": accuracy_score(labels, predicted),
            "balanced_accuracy": balanced_accuracy_score(labels, predicted),
            "macro_f1": f1_score(labels, predicted, average="macro", labels=range(3), zero_division=0),
            "auc_ovr": np.mean([roc_auc_score(labels == c, probabilities[:, c]) for c in present])
            if len(present) > 1
            else math.nan,
        }


@pytest.mark.parametrize("n, classes, seed", [(6, 3, 0), (7, 2, 1), (40, 3, 2), (12, 3, 3), (5, 1, 4)])
def test_metrics_equal_scikit_learn(n, classes, seed):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, classes, n)
    probabilities = rng.dirichlet(np.ones(3), n)
    probabilities[: n // 2] = np.round(probabilities[: n // 2], 1)  # ties in the scores
    ours = classification_metrics(labels, probabilities)
    reference = sklearn_metrics(labels, probabilities)
    for name, value in reference.items():
        assert (math.isnan(value) and math.isnan(ours[name])) or ours[name] == pytest.approx(value, abs=1e-12), name


def test_perfect_predictions_score_one():
    labels = np.array([0, 1, 2, 2])
    assert classification_metrics(labels, np.eye(3)[labels]) == {
        "accuracy": 1.0,
        "balanced_accuracy": 1.0,
        "macro_f1": 1.0,
        "auc_ovr": 1.0,
    }
