"""Classification metrics computed once, in one place, for evaluators, the study runner and reports."""

from __future__ import annotations

import math
from collections.abc import Sequence

import ignite.distributed as idist
import numpy as np
import torch
from ignite.exceptions import NotComputableError
from ignite.metrics import EpochMetric
from monai.utils import evenly_divisible_all_gather
from scipy.stats import rankdata

METRICS = ("accuracy", "balanced_accuracy", "macro_f1", "auc_ovr")


def classification_metrics(labels: Sequence[int], probabilities: np.ndarray, num_classes: int = 3) -> dict[str, float]:
    """Accuracy, balanced accuracy, macro-F1 and macro one-vs-rest ROC AUC.

    Computed from the confusion matrix and ranks with numpy (the study's bootstrap calls this thousands of
    times); the definitions are scikit-learn's, and the tests check equality with it. Balanced accuracy averages
    the recall of the classes present in ``labels``; macro-F1 averages over all ``num_classes`` (a class never
    seen nor predicted scores 0); AUC is NaN when fewer than two classes are present (undefined, not zero) and
    averages one-vs-rest AUCs of the classes present.

    Args:
        labels: true class indices.
        probabilities: ``[N, num_classes]`` class probabilities.
        num_classes: number of classes.
    """
    labels = np.asarray(labels, dtype=np.int64)
    probabilities = np.asarray(probabilities, dtype=np.float64)
    predicted = probabilities.argmax(axis=1)
    matrix = np.bincount(labels * num_classes + predicted, minlength=num_classes**2).reshape(num_classes, num_classes)
    hits, support, claimed = np.diag(matrix), matrix.sum(axis=1), matrix.sum(axis=0)
    present = support > 0
    f1_denominator = support + claimed
    f1 = np.divide(2 * hits, f1_denominator, out=np.zeros(num_classes), where=f1_denominator > 0)
    return {
        "accuracy": float(hits.sum() / len(labels)),
        "balanced_accuracy": float(np.mean(hits[present] / support[present])),
        "macro_f1": float(f1.mean()),
        "auc_ovr": _auc_ovr(labels, probabilities, np.flatnonzero(present)),
    }


def _auc_ovr(labels: np.ndarray, probabilities: np.ndarray, present: np.ndarray) -> float:
    """Mean one-vs-rest ROC AUC (Mann-Whitney U from average ranks, ties counted half)."""
    if len(present) < 2:
        return math.nan
    positive = labels[:, None] == present[None, :]  # [N, classes present]
    ranks = rankdata(probabilities[:, present], axis=0)  # one call for every class: the bootstrap's hot spot
    n_pos = positive.sum(axis=0)
    n_neg = len(labels) - n_pos
    scores = ((ranks * positive).sum(axis=0) - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)
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

    Expects the engine's ``pred`` to be class probabilities (apply softmax in post-processing). In a distributed
    run it is computed over the items of every process, which may hold unequal shares (a validation
    ``DistributedSampler`` that does not pad with duplicates); ignite's ``EpochMetric`` needs equal shares.

    Args:
        name: one of :data:`METRICS`.
        num_classes: number of classes (None: the width of ``pred``, so a two-class bundle needs no setting).
    """

    def __init__(self, name: str = "balanced_accuracy", num_classes: int | None = None) -> None:
        if name not in METRICS:
            raise ValueError(f"unknown metric {name!r}; known: {', '.join(METRICS)}")

        def compute(pred: torch.Tensor, label: torch.Tensor) -> float:
            classes = num_classes or pred.shape[1]
            return classification_metrics(label.cpu().numpy(), pred.cpu().numpy(), classes)[name]

        super().__init__(compute, output_transform=stack_pred_label, check_compute_fn=False)

    def compute(self) -> float:
        if not self._predictions:
            raise NotComputableError(f"{type(self).__name__} must have at least one example before it can be computed.")
        pred, label = torch.cat(self._predictions), torch.cat(self._targets)
        if idist.get_world_size() > 1:
            device = idist.device()  # NCCL gathers CUDA tensors only
            pred = evenly_divisible_all_gather(pred.to(device)).cpu()
            label = evenly_divisible_all_gather(label.to(device)).cpu()
        return self.compute_fn(pred, label)
