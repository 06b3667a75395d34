"""Small-sample statistics of cross-validated studies: intervals, the corrected resampled t-test, stability, chance.

Every metric value comes from :func:`pipeline.engine.metrics.classification_metrics`; this module only resamples,
averages and tests. A *split* is one (repeat, fold) of the repeated k-fold; with several training seeds per split,
seed-level values are averaged into one value per split before an interval or test is computed.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np
import pandas as pd
from scipy import stats

from pipeline import CLASS_NAMES
from pipeline.engine.metrics import METRICS, classification_metrics

SPLIT = ["repeat", "fold"]
PAIR = ["repeat", "fold", "seed"]


def class_indices(diagnoses: Sequence[str]) -> np.ndarray:
    """Class index (position in ``CLASS_NAMES``) of each diagnosis."""
    names = list(CLASS_NAMES)
    return np.array([names.index(d) for d in diagnoses], dtype=np.int64)


def labels_and_probabilities(predictions: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """Class indices of ``diagnosis`` and the ``prob_<class>`` matrix of a predictions frame."""
    columns = [f"prob_{name}" for name in CLASS_NAMES]
    return class_indices(predictions["diagnosis"]), predictions[columns].to_numpy(dtype=np.float64)


def _finite(values: Sequence[float]) -> np.ndarray:
    values = np.asarray(values, dtype=np.float64)
    return values[np.isfinite(values)]


def _mean_and_se(values: np.ndarray, test_train_ratio: float) -> tuple[float, float]:
    """Mean and its standard error, the variance scaled by ``1/J + test_train_ratio`` (needs ``J >= 2`` values)."""
    return float(values.mean()), float(values.std(ddof=1) * np.sqrt(1 / len(values) + test_train_ratio))


def t_interval(values: Sequence[float], confidence: float = 0.95, test_train_ratio: float = 0.0) -> tuple[float, float]:
    """Student-t confidence interval of the mean of per-split values (NaNs ignored; NaN with fewer than two).

    Args:
        values: one value per split (fold x repeat).
        confidence: coverage of the interval.
        test_train_ratio: 0 for the plain interval; ``n_test / n_train`` for the Nadeau-Bengio corrected one.
    """
    values = _finite(values)
    if len(values) < 2:
        return np.nan, np.nan
    mean, se = _mean_and_se(values, test_train_ratio)
    if se == 0:
        return mean, mean
    low, high = stats.t.interval(confidence, len(values) - 1, loc=mean, scale=se)
    return float(low), float(high)


def corrected_ttest(differences: Sequence[float], test_train_ratio: float, confidence: float = 0.95) -> dict:
    """Corrected resampled t-test of paired per-split differences (Nadeau & Bengio 2003; Bouckaert & Frank 2004).

    Resampled splits share training subjects, so their differences are correlated and the plain paired t-test is
    far too confident. The correction replaces the variance of the mean ``s^2 / J`` by ``s^2 (1/J + n_test/n_train)``
    (``J`` splits, ``s^2`` the sample variance of the differences); with ``test_train_ratio = 0`` it is the plain
    paired t-test. The effect size is Cohen's d_z: mean difference / sd of the differences (uncorrected).

    Args:
        differences: one paired difference per split.
        test_train_ratio: ``n_test / n_train`` of the splits (training partition including validation).
        confidence: coverage of the interval of the mean difference.

    Returns:
        ``mean_diff``, ``ci_low``, ``ci_high`` (corrected), ``t``, ``df``, ``p`` (two-sided), ``effect_size``.
    """
    values = _finite(differences)
    keys = ("mean_diff", "ci_low", "ci_high", "t", "p", "effect_size")
    if len(values) < 2:
        return {**dict.fromkeys(keys, np.nan), "df": max(len(values) - 1, 0)}
    mean, se = _mean_and_se(values, test_train_ratio)
    sd = values.std(ddof=1)
    # identical differences: no evidence of a difference if all are zero; otherwise the spread is unknown (a few
    # splits that happen to agree), not zero, so there is no t and no p rather than an infinite t and p = 0
    t = mean / se if se > 0 else (0.0 if mean == 0 else np.nan)
    p = float(2 * stats.t.sf(abs(t), len(values) - 1)) if np.isfinite(t) else np.nan
    low, high = t_interval(values, confidence, test_train_ratio) if np.isfinite(t) else (np.nan, np.nan)
    values_out = (mean, low, high, t, p, mean / sd if sd > 0 else np.nan)
    return {**dict(zip(keys, values_out)), "df": len(values) - 1}


def bootstrap_interval(
    predictions: pd.DataFrame, n_resamples: int = 1000, confidence: float = 0.95, seed: int = 0
) -> dict[str, tuple[float, float]]:
    """Subject-bootstrap percentile intervals of every metric of pooled out-of-fold predictions.

    Subjects are resampled with replacement and each drawn subject brings all of its rows (one per repeat, seed
    and session), so repeated predictions of one person never count as independent evidence.

    Args:
        predictions: rows with ``subject_id``, ``diagnosis`` and ``prob_<class>`` columns.
        n_resamples: number of bootstrap resamples.
        confidence: coverage of the intervals.
        seed: seed of the resampling.

    Returns:
        metric name -> (low, high); NaN with fewer than two subjects or when a resample leaves a metric undefined.
    """
    labels, probabilities = labels_and_probabilities(predictions)
    codes, subjects = pd.factorize(predictions["subject_id"])
    if len(subjects) < 2:
        return dict.fromkeys(METRICS, (np.nan, np.nan))
    rows = [np.flatnonzero(codes == s) for s in range(len(subjects))]

    def statistic(sample: np.ndarray) -> np.ndarray:
        index = np.concatenate([rows[s] for s in sample.astype(np.int64)])
        values = classification_metrics(labels[index], probabilities[index])
        return np.array([values[m] for m in METRICS])

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", stats.DegenerateDataWarning)  # NaN intervals say it already
        result = stats.bootstrap(
            (np.arange(len(subjects)),),
            statistic,
            n_resamples=n_resamples,
            vectorized=False,
            confidence_level=confidence,
            method="percentile",
            rng=np.random.default_rng(seed),
        )
    low, high = result.confidence_interval
    return {metric: (float(lo), float(hi)) for metric, lo, hi in zip(METRICS, low, high)}


def _pooled_sd(frame: pd.DataFrame, by: list[str] | str, metric: str) -> float:
    variances = frame.groupby(by)[metric].var(ddof=1).dropna()
    return float(np.sqrt(variances.mean())) if len(variances) else np.nan


def stability(results: pd.DataFrame, metric: str) -> tuple[float, float]:
    """Split variability and training-seed variability of one model, reported separately.

    Args:
        results: one row per job of one cohort x model x augmentation (``repeat``, ``fold``, ``seed``, metric).
        metric: metric column.

    Returns:
        ``(sd_folds, sd_seeds)``: the sd across splits with the training seed fixed, and the sd across training
        seeds with the split fixed, each pooled (root mean variance) over the other factor; NaN when that factor
        has a single level.
    """
    return _pooled_sd(results, "seed", metric), _pooled_sd(results, SPLIT, metric)


def chance_levels(diagnoses: Sequence[str]) -> dict[str, float]:
    """Every metric of a constant majority-class predictor with uninformative (constant) scores.

    That is majority-class accuracy, balanced accuracy 1/3, OvR AUC 0.5 and the macro-F1 of always answering the
    majority class, computed by :func:`classification_metrics` like every other number of the report.
    """
    labels = class_indices(diagnoses)
    probabilities = np.zeros((len(labels), len(CLASS_NAMES)))
    probabilities[:, np.bincount(labels, minlength=len(CLASS_NAMES)).argmax()] = 1.0
    return classification_metrics(labels, probabilities, len(CLASS_NAMES))


def is_collapsed(predictions: pd.DataFrame) -> bool:
    """Whether one job answered a single class for every test subject of a fold that holds several classes.

    Such a model learned nothing but a prior; its metrics are chance-like for a reason the mean over folds hides.

    Args:
        predictions: one job's test predictions (``predicted`` and ``diagnosis`` columns).
    """
    return predictions["predicted"].nunique() == 1 and predictions["diagnosis"].nunique() > 1
