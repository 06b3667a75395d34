"""Aggregate a study run and render it: ``summary.csv``, ``report.md`` and a self-contained ``report.html``."""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline import CLASS_NAMES
from pipeline.engine.metrics import METRICS
from pipeline.io import atomic_write_text
from pipeline.study.runner import collect, missing_jobs

GROUP = ["cohort", "model", "augment"]
METRIC_LABELS = {
    "accuracy": "Accuracy",
    "balanced_accuracy": "Balanced accuracy",
    "macro_f1": "Macro-F1",
    "auc_ovr": "AUC (one-vs-rest)",
}


def summarise(results: pd.DataFrame) -> pd.DataFrame:
    """Mean and standard deviation over folds x repeats, per cohort, model and augmentation."""
    rows = []
    for (cohort, model, augment), group in results.groupby(GROUP, sort=False):
        row = {"cohort": cohort, "model": model, "augment": bool(augment), "n_jobs": len(group)}
        for metric in METRICS:
            values = group[metric].astype(float)
            row[f"{metric}_mean"] = values.mean()
            row[f"{metric}_sd"] = values.std(ddof=1) if len(values) > 1 else np.nan
        rows.append(row)
    return pd.DataFrame(rows)


def chance_level(predictions: pd.DataFrame) -> dict[str, float]:
    """Accuracy of always predicting the majority class, and the chance level of balanced accuracy / AUC."""
    counts = predictions.drop_duplicates("subject_id")["diagnosis"].value_counts()
    return {"accuracy": counts.max() / counts.sum(), "balanced_accuracy": 1 / len(CLASS_NAMES), "auc_ovr": 0.5}


def _figure_png(figure) -> str:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(figure)
    return base64.b64encode(buffer.getvalue()).decode()


def _label(model: str, augment: bool) -> str:
    return f"{Path(model).name}\naug {'on' if augment else 'off'}"


def fold_metric_figure(results: pd.DataFrame, cohort: str, metric: str = "balanced_accuracy") -> str:
    """Box plot with the fold values drawn on top, one box per model x augmentation (base64 PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    part = results[results["cohort"] == cohort]
    groups = list(part.groupby(["model", "augment"], sort=False))
    figure, axis = plt.subplots(figsize=(1.6 * len(groups) + 1.5, 3.6))
    values = [g[metric].astype(float).dropna().to_numpy() for _, g in groups]
    axis.boxplot(values, showfliers=False)
    rng = np.random.default_rng(0)
    for position, v in enumerate(values, start=1):
        axis.scatter(position + rng.uniform(-0.12, 0.12, len(v)), v, s=14, alpha=0.7, color="black", zorder=3)
    axis.set_xticks(range(1, len(groups) + 1), [_label(m, a) for (m, a), _ in groups], fontsize=8)
    axis.axhline(1 / len(CLASS_NAMES) if metric != "auc_ovr" else 0.5, ls="--", color="grey", lw=1, label="chance")
    axis.set_ylabel(METRIC_LABELS[metric])
    axis.set_ylim(0, 1.02)
    axis.set_title(f"{cohort}: {METRIC_LABELS[metric]} per fold")
    axis.legend(loc="lower right", fontsize=8)
    return _figure_png(figure)


def confusion_figure(predictions: pd.DataFrame, cohort: str) -> str:
    """Confusion matrices of the pooled out-of-fold predictions, one panel per model x augmentation."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import confusion_matrix

    part = predictions[predictions["cohort"] == cohort]
    groups = list(part.groupby(["model", "augment"], sort=False))
    figure, axes = plt.subplots(1, len(groups), figsize=(2.6 * len(groups), 2.8), squeeze=False)
    for axis, ((model, augment), group) in zip(axes[0], groups):
        matrix = confusion_matrix(group["diagnosis"], group["predicted"], labels=list(CLASS_NAMES))
        axis.imshow(matrix, cmap="Blues")
        for (i, j), count in np.ndenumerate(matrix):
            axis.text(j, i, str(count), ha="center", va="center", color="black", fontsize=9)
        axis.set_xticks(range(len(CLASS_NAMES)), CLASS_NAMES, fontsize=8)
        axis.set_yticks(range(len(CLASS_NAMES)), CLASS_NAMES, fontsize=8)
        axis.set_xlabel("predicted", fontsize=8)
        axis.set_ylabel("true", fontsize=8)
        axis.set_title(_label(model, augment).replace("\n", ", "), fontsize=8)
    figure.tight_layout()
    return _figure_png(figure)


def _summary_table(summary: pd.DataFrame) -> pd.DataFrame:
    table = summary[["cohort", "model", "augment", "n_jobs"]].copy()
    table["model"] = [Path(m).name for m in table["model"]]
    table["augment"] = np.where(summary["augment"], "on", "off")
    for metric in METRICS:
        table[METRIC_LABELS[metric]] = [
            f"{m:.3f} ± {s:.3f}" if np.isfinite(s) else f"{m:.3f}"
            for m, s in zip(summary[f"{metric}_mean"], summary[f"{metric}_sd"])
        ]
    return table


def render(out: str | Path) -> dict[str, Path]:
    """Aggregate whatever jobs of a run folder are finished and write summary/report files.

    Returns:
        The written paths (``summary``, ``results``, ``predictions``, ``markdown``, ``html``).

    Raises:
        FileNotFoundError: the folder is not a study run or has no finished job.
    """
    out = Path(out)
    if not (out / "plan.csv").is_file():
        raise FileNotFoundError(f"{out}: not a study run folder (no plan.csv)")
    results, predictions = collect(out)
    if results.empty:
        raise FileNotFoundError(f"{out}: no finished fold job yet (no folds/*/*/*/done.json)")
    missing = missing_jobs(out)
    summary = summarise(results)
    paths = {
        "results": out / "results.csv",
        "predictions": out / "predictions.csv",
        "summary": out / "summary.csv",
        "markdown": out / "report.md",
        "html": out / "report.html",
    }
    atomic_write_text(paths["results"], results.to_csv(index=False))
    atomic_write_text(paths["predictions"], predictions.to_csv(index=False))
    atomic_write_text(paths["summary"], summary.to_csv(index=False))
    study_text = (out / "study.yaml").read_text() if (out / "study.yaml").is_file() else ""
    figures = {
        cohort: (fold_metric_figure(results, cohort), confusion_figure(predictions, cohort))
        for cohort in summary["cohort"].unique()
    }
    table = _summary_table(summary)
    chance = chance_level(predictions)
    atomic_write_text(paths["markdown"], _markdown(table, chance, missing, study_text))
    atomic_write_text(paths["html"], _html(table, chance, missing, study_text, figures))
    return paths


def _status_line(missing: list) -> str:
    if not missing:
        return "All planned fold jobs are finished."
    return f"**Incomplete run:** {len(missing)} planned fold job(s) not finished; the tables cover finished jobs only."


def _markdown(table: pd.DataFrame, chance: dict, missing: list, study_text: str) -> str:
    lines = ["# Study report", "", _status_line(missing), ""]
    lines += [
        "Mean ± sd over folds x repeats (test folds). Chance: accuracy "
        f"{chance['accuracy']:.3f} (majority class), balanced accuracy {chance['balanced_accuracy']:.3f}, "
        f"AUC {chance['auc_ovr']:.3f}.",
        "",
        table.to_markdown(index=False),
        "",
        "## Study definition",
        "",
        "```yaml",
        study_text.rstrip(),
        "```",
        "",
    ]
    return "\n".join(lines)


def _html(table: pd.DataFrame, chance: dict, missing: list, study_text: str, figures: dict) -> str:
    sections = []
    for cohort, (folds_png, confusion_png) in figures.items():
        sections.append(
            f"<h2>Cohort: {html.escape(str(cohort))}</h2>"
            f'<img alt="fold metrics" src="data:image/png;base64,{folds_png}">'
            f'<h3>Confusion matrices (pooled out-of-fold predictions)</h3><img alt="confusion" '
            f'src="data:image/png;base64,{confusion_png}">'
        )
    status = html.escape(_status_line(missing).replace("**", ""))
    return (
        "<!doctype html><html><head><meta charset='utf-8'><title>neurofusion study report</title>"
        "<style>body{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222}"
        "table{border-collapse:collapse}td,th{border:1px solid #bbb;padding:4px 8px;text-align:right}"
        "th{background:#eee}pre{background:#f6f6f6;padding:1em}</style></head><body>"
        f"<h1>Study report</h1><p>{status}</p>"
        f"<p>Mean ± sd over folds x repeats (test folds). Chance: accuracy {chance['accuracy']:.3f} (majority class), "
        f"balanced accuracy {chance['balanced_accuracy']:.3f}, AUC {chance['auc_ovr']:.3f}.</p>"
        + table.to_html(index=False, border=0)
        + "".join(sections)
        + f"<h2>Study definition</h2><pre>{html.escape(study_text)}</pre></body></html>"
    )
