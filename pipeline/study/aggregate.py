"""Aggregate the finished jobs of a study run: per-model summary with intervals, paired comparisons, chance levels.

The statistics themselves live in :mod:`pipeline.study.stats`; this module decides what is summarised and what is
compared with what. Comparisons are planned from ``RUN/plan.csv`` and ``RUN/baselines.csv`` (so a comparison whose
jobs have not finished is listed as skipped, not silently dropped) and paired by (repeat, fold, seed); a deep model
and its baseline (one per split) are paired by (repeat, fold), the model's seeds averaged. A model run in several
``transfer`` modes (:mod:`pipeline.study.transfer`) is a group per mode, and each mode is compared with ``none``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from pipeline import CLASS_NAMES
from pipeline.engine.metrics import METRICS, classification_metrics
from pipeline.study.baselines import model_kind, reference_inputs
from pipeline.study.stats import (
    PAIR,
    SPLIT,
    bootstrap_interval,
    chance_levels,
    corrected_ttest,
    labels_and_probabilities,
    stability,
    t_interval,
)

GROUP = ["cohort", "model", "augment", "transfer"]
PRIMARY = "balanced_accuracy"
ALPHA = 0.05
COMPARISON_COLUMNS = (
    "cohort", "kind", "comparison", "model_a", "augment_a", "model_b", "augment_b", "metric", "n_splits",
    "test_train_ratio", "mean_a", "mean_b", "mean_diff", "ci_low", "ci_high", "t", "df", "p", "effect_size",
    "significant", "note", "transfer_a", "transfer_b",
)  # fmt: skip
NO_TRANSFER = "none"


def with_transfer(frame: pd.DataFrame) -> pd.DataFrame:
    """``frame`` with a ``transfer`` column (``none`` where a run or row predates it)."""
    if "transfer" in frame.columns:
        return frame.assign(transfer=frame["transfer"].fillna(NO_TRANSFER).astype(str))
    return frame.assign(transfer=NO_TRANSFER)


def _select(frame: pd.DataFrame, cohort: str, model: str, augment: bool, transfer: str = NO_TRANSFER) -> pd.DataFrame:
    frame = with_transfer(frame)
    chosen = (frame["cohort"] == cohort) & (frame["model"] == model) & (frame["augment"].astype(bool) == augment)
    return frame[chosen & (frame["transfer"] == transfer)]


def summarise(results: pd.DataFrame, predictions: pd.DataFrame, n_resamples: int = 1000, seed: int = 0) -> pd.DataFrame:
    """Means, intervals and stability of every metric, one row per cohort x model x augmentation x transfer mode.

    ``transfer`` is the mode (``none``, ``finetune``, ``frozen``) and ``transfer_from`` the cohort the encoder was
    pretrained on (empty for ``none``). ``kind`` (``model``, ``baseline``, ``ceiling``) tells deep models from the
    reference models; ``n_collapsed`` counts the jobs that answered one class for every test subject (results column
    ``collapsed``).

    Columns per metric: ``_mean``, ``_sd`` (over jobs), ``_ci_low``/``_ci_high`` (t interval over splits, seeds
    averaged per split), ``_pooled`` (the metric of all pooled out-of-fold predictions), ``_boot_low``/``_boot_high``
    (subject bootstrap of the pooled predictions) and ``_sd_folds``/``_sd_seeds`` (see :func:`stability`).

    Args:
        results: one row per finished job.
        predictions: pooled per-subject test predictions of those jobs.
        n_resamples: subject-bootstrap resamples.
        seed: bootstrap seed.
    """
    rows = []
    for (cohort, model, augment, transfer), group in with_transfer(results).groupby(GROUP, sort=False):
        pooled = _select(predictions, cohort, model, bool(augment), transfer)
        source = group["transfer_from"].fillna("").iloc[0] if "transfer_from" in group else ""
        key = {"cohort": cohort, "model": model, "kind": model_kind(model), "augment": bool(augment)}
        key.update(transfer=transfer, transfer_from=source)
        rows.append({**key, **_summary(group, pooled, n_resamples, seed)})
    return pd.DataFrame(rows)


def _summary(group: pd.DataFrame, pooled: pd.DataFrame, n_resamples: int, seed: int) -> dict:
    splits = group.groupby(SPLIT)[list(METRICS)].mean()
    row = {
        "n_jobs": len(group),
        "n_splits": len(splits),
        "n_seeds": group["seed"].nunique(),
        "n_subjects": pooled["subject_id"].nunique(),
        "n_collapsed": int(group["collapsed"].sum()) if "collapsed" in group else 0,
    }
    point = classification_metrics(*labels_and_probabilities(pooled))
    boot = bootstrap_interval(pooled, n_resamples, seed=seed)
    for metric in METRICS:
        values = group[metric].astype(float)
        row[f"{metric}_mean"] = values.mean()
        row[f"{metric}_sd"] = values.std(ddof=1)
        row[f"{metric}_ci_low"], row[f"{metric}_ci_high"] = t_interval(splits[metric])
        row[f"{metric}_pooled"] = point[metric]
        row[f"{metric}_boot_low"], row[f"{metric}_boot_high"] = boot[metric]
        row[f"{metric}_sd_folds"], row[f"{metric}_sd_seeds"] = stability(group, metric)
    return row


def chance_table(subjects: pd.DataFrame) -> pd.DataFrame:
    """Per cohort: number of subjects, class counts and every metric of the majority-class predictor.

    Args:
        subjects: one row per subject with ``cohort`` and ``diagnosis``.
    """
    rows = []
    for cohort, part in subjects.groupby("cohort", sort=False):
        counts = part["diagnosis"].value_counts()
        rows.append(
            {
                "cohort": cohort,
                "n_subjects": len(part),
                "classes": " / ".join(f"{counts[c]} {c}" for c in CLASS_NAMES if c in counts.index),
                **chance_levels(part["diagnosis"]),
            }
        )
    return pd.DataFrame(rows).set_index("cohort")


@dataclass(frozen=True)
class Comparison:
    """``a`` minus ``b`` within one cohort; each side is (model, augment, transfer mode), paired by the columns
    ``pair``."""

    cohort: str
    kind: str  # "fusion_vs_single", "augmentation", "transfer" or "vs_baseline"
    a: tuple[str, bool, str]
    b: tuple[str, bool, str]
    pair: tuple[str, ...] = tuple(PAIR)

    @property
    def label(self) -> str:
        aug = f"augmentation {'on' if self.a[1] else 'off'}"
        if self.kind == "augmentation":
            return f"{_variant(self.a)}: augmentation on vs off"
        if self.kind == "transfer":
            return f"{self.a[0]}: transfer {self.a[2]} vs none ({aug})"
        return f"{_variant(self.a)} vs {_variant(self.b)} ({aug})"


def variant(model: str, transfer: str = NO_TRANSFER) -> str:
    """Display name of a model in a transfer mode: ``mri_cnn3d``, ``mri_cnn3d [transfer frozen]``."""
    return model if transfer == NO_TRANSFER else f"{model} [transfer {transfer}]"


def _variant(side: tuple[str, bool, str]) -> str:
    return variant(side[0], side[2])


def is_fused(modalities: str) -> bool:
    """Whether a bundle's modalities (``plan.csv`` column) name more than one input modality."""
    return "+" in str(modalities)


def plan_comparisons(plan: pd.DataFrame, references: Sequence = ()) -> list[Comparison]:
    """Within each cohort: every fused model vs every single-modality model at the same augmentation setting,
    augmentation on vs off for every model, each transfer mode vs ``none``, and every model (each setting) vs the
    baseline of its inputs; only comparisons the study's design makes possible. A fused model in a transfer mode is
    compared with a single-modality model in the same mode, or in ``none`` when that one has no such mode.

    Args:
        plan: ``RUN/plan.csv``.
        references: the planned reference jobs (:func:`pipeline.study.baselines.load_references`).
    """
    baselines = {(j.cohort, j.model) for j in references if model_kind(j.model) == "baseline"}
    comparisons = []
    for cohort, part in with_transfer(plan).groupby("cohort", sort=False):
        modalities = dict(zip(part["model"], part["modalities"]))
        variants = list(dict.fromkeys(zip(part["model"], part["transfer"])))
        settings = sorted({bool(a) for a in part["augment"]})
        fused = [(m, t) for m, t in variants if is_fused(modalities[m])]
        single = [m for m, mod in modalities.items() if not is_fused(mod)]
        comparisons += [
            Comparison(cohort, "fusion_vs_single", (f, a, t), (s, a, t if (s, t) in variants else NO_TRANSFER))
            for a in settings
            for f, t in fused
            for s in single
        ]
        if settings == [False, True]:
            comparisons += [Comparison(cohort, "augmentation", (m, True, t), (m, False, t)) for m, t in variants]
        comparisons += [
            Comparison(cohort, "transfer", (m, a, t), (m, a, NO_TRANSFER))
            for m, t in variants
            for a in settings
            if t != NO_TRANSFER and (m, NO_TRANSFER) in variants
        ]
        comparisons += [
            Comparison(cohort, "vs_baseline", (m, a, t), (baseline, False, NO_TRANSFER), tuple(SPLIT))
            for m, t in variants
            for a in settings
            if (cohort, baseline := f"baseline:{reference_inputs(modalities[m])}") in baselines
        ]
    return comparisons


def _paired_splits(results: pd.DataFrame, comparison: Comparison) -> pd.DataFrame:
    """Per split: both sides' metrics (seeds averaged after pairing, by seed unless ``comparison.pair`` leaves it out)
    and the split's test/train ratio."""
    columns = [*METRICS, "n_test", "n_train", "n_val"]
    pair = list(comparison.pair)
    sides = [
        _select(results, comparison.cohort, *side).groupby(pair)[columns].mean()
        for side in (comparison.a, comparison.b)
    ]
    joined = sides[0].merge(
        sides[1][list(METRICS)], how="inner", left_index=True, right_index=True, suffixes=("_a", "_b")
    )
    joined["test_train_ratio"] = joined["n_test"] / (joined["n_train"] + joined["n_val"])
    return joined.groupby(SPLIT).mean()


def compare(results: pd.DataFrame, plan: pd.DataFrame, references: Sequence = ()) -> pd.DataFrame:
    """Corrected resampled t-tests of every planned comparison and metric (``a - b``, one difference per split).

    ``references`` are the planned reference jobs (:func:`plan_comparisons`).

    A comparison with fewer than two paired splits among the finished jobs is kept with NaN statistics and a
    ``note`` saying why.
    """
    rows = []
    for comparison in plan_comparisons(plan, references):
        splits = _paired_splits(results, comparison)
        ratio = float(splits["test_train_ratio"].mean()) if len(splits) else np.nan
        for metric in METRICS:
            a, b = splits[f"{metric}_a"], splits[f"{metric}_b"]
            test = corrected_ttest(a - b, ratio)
            note = _test_note(test, len(splits))
            rows.append(
                {
                    "cohort": comparison.cohort,
                    "kind": comparison.kind,
                    "comparison": comparison.label,
                    "model_a": comparison.a[0],
                    "augment_a": comparison.a[1],
                    "model_b": comparison.b[0],
                    "augment_b": comparison.b[1],
                    "transfer_a": comparison.a[2],
                    "transfer_b": comparison.b[2],
                    "metric": metric,
                    "n_splits": int((a - b).notna().sum()),
                    "test_train_ratio": ratio,
                    "mean_a": a.mean(),
                    "mean_b": b.mean(),
                    **test,
                    "significant": bool(test["p"] < ALPHA),
                    "note": note,
                }
            )
    return pd.DataFrame(rows, columns=list(COMPARISON_COLUMNS))


def _test_note(test: dict, n_splits: int) -> str:
    """Why a comparison has no p-value ("" when it has one)."""
    if not test["df"]:
        return f"only {n_splits} paired split(s) finished, 2 needed"
    if not np.isfinite(test["p"]):
        return f"the difference was {test['mean_diff']:+.3f} in all {n_splits} paired splits: no spread, so no p-value"
    return ""


def ceiling_share(summary: pd.DataFrame, plan: pd.DataFrame, chance: pd.DataFrame) -> pd.DataFrame:
    """``summary`` with each row's ``baseline`` and ``ceiling`` (the reference models of its inputs, where they ran)
    and ``share_of_ceiling``: the share of the recoverable signal it recovered, (BA - chance) / (ceiling BA - chance).

    BA is the mean balanced accuracy over jobs and chance the cohort's (1 / number of classes). The share is NaN
    without a ceiling, for the ceiling itself, and where the ceiling is not above chance (nothing to recover).

    Args:
        summary: :func:`summarise` of a run.
        plan: ``RUN/plan.csv`` (the deep models' modalities).
        chance: :func:`chance_table` of the run's cohorts.
    """
    modalities = dict(zip(plan["model"], plan["modalities"]))
    scores = {(r.cohort, r.model): getattr(r, f"{PRIMARY}_mean") for r in summary.itertuples() if r.kind != "model"}
    rows = []
    for r in summary.itertuples():
        inputs = r.model.split(":", 1)[1] if r.kind != "model" else reference_inputs(modalities.get(r.model, ""))
        baseline, ceiling = (f"{kind}:{inputs}" for kind in ("baseline", "ceiling"))
        level, top = chance.loc[r.cohort, PRIMARY], scores.get((r.cohort, ceiling), np.nan)
        recoverable = r.kind != "ceiling" and np.isfinite(top) and top > level
        rows.append(
            {
                "baseline": baseline if (r.cohort, baseline) in scores and r.kind == "model" else "",
                "ceiling": ceiling if (r.cohort, ceiling) in scores and r.kind != "ceiling" else "",
                "share_of_ceiling": (getattr(r, f"{PRIMARY}_mean") - level) / (top - level) if recoverable else np.nan,
            }
        )
    return pd.concat([summary.reset_index(drop=True), pd.DataFrame(rows, index=range(len(rows)))], axis=1)


QUESTIONS = (
    "Does augmentation help the fused model on the small paired cohort?",
    "Does augmentation help the 3D CNN on the large MRI-only cohort?",
)


def paper_questions(comparisons: pd.DataFrame, plan: pd.DataFrame) -> list[tuple[str, pd.DataFrame]]:
    """The paper's two questions, each with the primary-metric comparisons that answer it (possibly none).

    The fused model's question is answered in every cohort that has a fused model; the 3D CNN's in every cohort
    without a fused model, for the single-input MRI models.
    """
    fused = plan["modalities"].map(is_fused)
    rows = comparisons[(comparisons["kind"] == "augmentation") & (comparisons["metric"] == PRIMARY)]
    in_fused_cohort = rows["cohort"].isin(set(plan.loc[fused, "cohort"]))
    fused_rows = rows[in_fused_cohort & rows["model_a"].isin(set(plan.loc[fused, "model"]))]
    mri_rows = rows[~in_fused_cohort & rows["model_a"].isin(set(plan.loc[plan["modalities"] == "MR", "model"]))]
    return [(QUESTIONS[0], fused_rows), (QUESTIONS[1], mri_rows)]
