"""Classification metrics computed once, in one place, for evaluators, the study runner and reports."""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence

import numpy as np
import torch
from ignite.metrics import EpochMetric
from sklearn.metrics import accuracy_score, balanced_accuracy_score, f1_score, roc_auc_score

from pipeline import CLASS_NAMES

METRICS = ("accuracy", "balanced_accuracy", "macro_f1", "auc_ovr")


def classification_metrics(labels: Sequence[int], probabilities: np.ndarray, num_classes: int = 3) -> dict[str, float]:
    """Accuracy, balanced accuracy, macro-F1 and macro one-vs-rest ROC AUC.

    AUC is NaN when fewer than two classes are present in ``labels`` (it is undefined, not zero); classes absent
    from ``labels`` are left out of the one-vs-rest average.

    Args:
        labels: true class indices.
        probabilities: ``[N, num_classes]`` class probabilities.
        num_classes: number of classes.
    """
    labels = np.asarray(labels, dtype=np.int64)
    probabilities = np.asarray(probabilities, dtype=np.float64)
    predicted = probabilities.argmax(axis=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # sklearn warns on classes absent from a small test fold
        result = {
            "accuracy": float(accuracy_score(labels, predicted)),
            "balanced_accuracy": float(balanced_accuracy_score(labels, predicted)),
            "macro_f1": float(f1_score(labels, predicted, average="macro", labels=range(num_classes), zero_division=0)),
        }
    result["auc_ovr"] = _auc_ovr(labels, probabilities)
    return result


def _auc_ovr(labels: np.ndarray, probabilities: np.ndarray) -> float:
    present = np.unique(labels)
    if len(present) < 2:
        return math.nan
    scores = [roc_auc_score(labels == c, probabilities[:, c]) for c in present]
    return float(np.mean(scores))


def stack_pred_label(output) -> tuple[torch.Tensor, torch.Tensor]:
    """Engine output (decollated list of dicts, or a batch dict) -> ``(probabilities [N, C], labels [N])``."""
    if isinstance(output, dict):
        return output["pred"].detach(), output["label"].detach().reshape(-1)
    pred = torch.stack([torch.as_tensor(item["pred"]).detach() for item in output])
    label = torch.stack([torch.as_tensor(item["label"]).detach().reshape(()) for item in output])
    return pred, label


class ClassificationMetric(EpochMetric):
    """Ignite metric over a whole epoch: one of :data:`METRICS` from :func:`classification_metrics`.

    Expects the engine's ``pred`` to be class probabilities (apply softmax in post-processing).

    Args:
        name: one of :data:`METRICS`.
        num_classes: number of classes.
    """

    def __init__(self, name: str = "balanced_accuracy", num_classes: int = len(CLASS_NAMES)) -> None:
        if name not in METRICS:
            raise ValueError(f"unknown metric {name!r}; known: {', '.join(METRICS)}")

        def compute(pred: torch.Tensor, label: torch.Tensor) -> float:
            return classification_metrics(label.cpu().numpy(), pred.cpu().numpy(), num_classes)[name]

        super().__init__(compute, output_transform=stack_pred_label, check_compute_fn=False)
