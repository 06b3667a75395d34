"""Figures of a study report, one cohort at a time, each returned as PNG bytes.

Drawn with matplotlib's object API (no pyplot state, no display needed). Panels follow the order of the models in
the data, augmentation off before on.
"""

from __future__ import annotations

import io

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from sklearn.metrics import confusion_matrix, roc_curve

from pipeline import CLASS_NAMES
from pipeline.engine.metrics import METRICS
from pipeline.study.stats import labels_and_probabilities

METRIC_LABELS = {
    "accuracy": "Accuracy",
    "balanced_accuracy": "Balanced accuracy",
    "macro_f1": "Macro-F1",
    "auc_ovr": "AUC (one-vs-rest)",
}
AUG_STYLE = {False: "-", True: "--"}
LEARNING_PANELS = (("train_loss", "training loss"), ("val_balanced_accuracy", "validation balanced accuracy"))


def label(model: str, augment: bool, sep: str = "\n") -> str:
    """Display name of a model x augmentation group."""
    return f"{model}{sep}aug {'on' if augment else 'off'}"


def _groups(frame: pd.DataFrame) -> list[tuple[tuple[str, bool], pd.DataFrame]]:
    order = {model: i for i, model in enumerate(dict.fromkeys(frame["model"]))}
    groups = frame.assign(augment=frame["augment"].astype(bool)).groupby(["model", "augment"], sort=False)
    return sorted(groups, key=lambda item: (order[item[0][0]], item[0][1]))


def _grid(panels: int, width: float, height: float, columns: int = 3) -> tuple[Figure, list]:
    """A figure with ``panels`` axes in rows of ``columns``; spare axes are hidden."""
    rows, columns = -(-panels // columns), min(panels, columns)
    figure = Figure(figsize=(width * columns, height * rows))
    axes = list(figure.subplots(rows, columns, squeeze=False).ravel())
    for spare in axes[panels:]:
        spare.set_visible(False)
    return figure, axes[:panels]


def _png(figure: Figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    return buffer.getvalue()


def fold_metrics(results: pd.DataFrame, chance: dict[str, float]) -> bytes:
    """Box plots of the per-job metrics with every job drawn on top, one panel per metric, chance as a line.

    Args:
        results: finished jobs of one cohort.
        chance: metric -> chance level of the cohort.
    """
    groups = _groups(results)
    figure, axes = _grid(len(METRICS), max(4.0, 0.9 * len(groups) + 1), 3.8, columns=2)
    rng = np.random.default_rng(0)
    for axis, metric in zip(axes, METRICS):
        values = [g[metric].astype(float).dropna().to_numpy() for _, g in groups]
        axis.boxplot(values, showfliers=False)
        for position, v in enumerate(values, start=1):
            axis.scatter(position + rng.uniform(-0.12, 0.12, len(v)), v, s=12, alpha=0.7, color="black", zorder=3)
        axis.axhline(chance[metric], ls=":", color="grey", lw=1, label="chance")
        axis.set_xticks(
            range(1, len(groups) + 1), [label(*key) for key, _ in groups], fontsize=7, rotation=30, ha="right"
        )
        axis.set_ylim(0, 1.02)
        axis.set_title(METRIC_LABELS[metric], fontsize=10)
    axis.legend(loc="lower right", fontsize=8)
    figure.tight_layout()
    return _png(figure)


def confusion_matrices(predictions: pd.DataFrame) -> bytes:
    """Confusion matrices (counts) of the pooled out-of-fold predictions, one panel per model x augmentation."""
    groups = _groups(predictions)
    figure, axes = _grid(len(groups), 2.8, 2.9)
    for axis, ((model, augment), group) in zip(axes, groups):
        matrix = confusion_matrix(group["diagnosis"], group["predicted"], labels=list(CLASS_NAMES))
        axis.imshow(matrix, cmap="Blues", vmin=0)
        for (i, j), count in np.ndenumerate(matrix):
            colour = "white" if count > matrix.max() / 2 else "black"
            axis.text(j, i, str(count), ha="center", va="center", fontsize=9, color=colour)
        axis.set_xticks(range(len(CLASS_NAMES)), CLASS_NAMES, fontsize=8)
        axis.set_yticks(range(len(CLASS_NAMES)), CLASS_NAMES, fontsize=8)
        axis.set_xlabel("predicted", fontsize=8)
        axis.set_ylabel("true", fontsize=8)
        axis.set_title(label(model, augment, ", "), fontsize=8)
    figure.tight_layout()
    return _png(figure)


def roc_curves(predictions: pd.DataFrame, pooled_auc: dict[tuple[str, bool], float]) -> bytes:
    """One-vs-rest ROC curves of the pooled out-of-fold predictions, one panel per model x augmentation.

    Args:
        predictions: pooled predictions of one cohort.
        pooled_auc: (model, augment) -> macro OvR AUC of those predictions (shown in the panel title).
    """
    groups = _groups(predictions)
    figure, axes = _grid(len(groups), 3.0, 3.1)
    for axis, ((model, augment), group) in zip(axes, groups):
        labels, probabilities = labels_and_probabilities(group)
        for index, name in enumerate(CLASS_NAMES):
            if 0 < (labels == index).sum() < len(labels):
                fpr, tpr, _ = roc_curve(labels == index, probabilities[:, index])
                axis.plot(fpr, tpr, lw=1.3, label=f"{name} vs rest")
        axis.plot([0, 1], [0, 1], ls=":", color="grey", lw=1)
        axis.set_aspect("equal")
        axis.set_xlabel("false positive rate", fontsize=8)
        axis.set_ylabel("true positive rate", fontsize=8)
        axis.set_title(f"{label(model, augment, ', ')}\nAUC {pooled_auc[(model, augment)]:.2f}", fontsize=8)
        axis.legend(loc="lower right", fontsize=6)
    figure.tight_layout()
    return _png(figure)


def learning_curves(logs: pd.DataFrame) -> bytes:
    """Mean training loss and validation balanced accuracy per epoch (band: ± sd over jobs), one line per model x
    augmentation (dashed: augmentation on). Validation subjects come from the training partition."""
    panels = [(c, t) for c, t in LEARNING_PANELS if c in logs.columns]
    figure, axes = _grid(len(panels), 5.0, 3.4)
    colours = {model: f"C{i}" for i, model in enumerate(dict.fromkeys(logs["model"]))}
    for axis, (column, title) in zip(axes, panels):
        for (model, augment), group in _groups(logs):
            curve = group.groupby("epoch")[column].agg(["mean", "std"]).fillna({"std": 0.0})
            axis.plot(
                curve.index, curve["mean"], AUG_STYLE[augment], color=colours[model], label=label(model, augment, ", ")
            )
            axis.fill_between(
                curve.index,
                curve["mean"] - curve["std"],
                curve["mean"] + curve["std"],
                color=colours[model],
                alpha=0.12,
            )
        axis.set_xlabel("epoch", fontsize=8)
        axis.xaxis.set_major_locator(MaxNLocator(integer=True))
        axis.set_title(title, fontsize=10)
    axis.legend(fontsize=7, loc="best")
    return _png(figure)
