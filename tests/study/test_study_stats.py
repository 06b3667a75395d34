"""Study statistics: intervals, the corrected resampled t-test, subject bootstrap, stability, chance, comparisons."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from pipeline.study.aggregate import chance_table, compare, paper_questions, plan_comparisons
from pipeline.study.report import answer
from pipeline.study.stats import bootstrap_interval, chance_levels, corrected_ttest, stability, t_interval

DIFFERENCES = [0.1, 0.0, 0.2, 0.1, -0.05]  # mean 0.07, sample variance 0.0095 (by hand)


def test_t_interval_matches_a_hand_computation():
    low, high = t_interval([0.5, 0.6, 0.7, 0.8])
    half_width = 3.182446 * 0.1290994 / 2  # t(0.975, df=3) * sd / sqrt(4)
    assert (low, high) == pytest.approx((0.65 - half_width, 0.65 + half_width), abs=1e-6)


def test_uncorrected_test_is_the_paired_t_test():
    rng = np.random.default_rng(1)
    a, b = rng.uniform(0.4, 0.8, 10), rng.uniform(0.4, 0.8, 10)
    result, reference = corrected_ttest(a - b, 0.0), stats.ttest_rel(a, b)
    assert result["t"] == pytest.approx(reference.statistic)
    assert result["p"] == pytest.approx(reference.pvalue)


def test_corrected_test_scales_the_variance_by_one_over_j_plus_test_train_ratio():
    result = corrected_ttest(DIFFERENCES, test_train_ratio=0.25)
    se = math.sqrt(0.0095 * (1 / 5 + 0.25))  # Nadeau & Bengio: s^2 (1/J + n_test/n_train)
    assert result["t"] == pytest.approx(0.07 / se)  # 1.0706
    assert result["df"] == 4
    assert result["p"] == pytest.approx(0.344647, abs=1e-5)
    assert (result["ci_low"], result["ci_high"]) == pytest.approx((0.07 - 2.776445 * se, 0.07 + 2.776445 * se))


def test_correction_makes_the_test_more_conservative():
    plain, corrected = corrected_ttest(DIFFERENCES, 0.0), corrected_ttest(DIFFERENCES, 0.25)
    assert corrected["p"] > plain["p"]
    assert corrected["ci_high"] - corrected["ci_low"] > plain["ci_high"] - plain["ci_low"]


def test_effect_size_is_mean_difference_over_sd_of_differences():
    assert corrected_ttest(DIFFERENCES, 0.25)["effect_size"] == pytest.approx(0.07 / math.sqrt(0.0095))


def test_all_zero_differences_give_p_one():
    result = corrected_ttest([0.0, 0.0, 0.0], 0.25)
    assert result["p"] == 1.0 and result["mean_diff"] == 0.0


def test_identical_nonzero_differences_give_no_p_value_rather_than_an_infinite_t():
    result = corrected_ttest([0.1, 0.1], 0.25)
    assert result["mean_diff"] == pytest.approx(0.1)
    assert math.isnan(result["t"]) and math.isnan(result["p"]) and math.isnan(result["ci_low"])


def test_a_single_split_gives_no_test():
    result = corrected_ttest([0.1], 0.25)
    assert math.isnan(result["p"]) and result["df"] == 0


def _predictions(n_per_class: int, seed: int = 0, prefix: str = "sub") -> pd.DataFrame:
    """Informative but imperfect class probabilities for ``n_per_class`` subjects of each class."""
    rng = np.random.default_rng(seed)
    diagnosis = np.repeat(["CN", "MCI", "AD"], n_per_class)
    logits = rng.normal(size=(len(diagnosis), 3)) + 1.2 * np.eye(3)[np.repeat([0, 1, 2], n_per_class)]
    probabilities = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    frame = pd.DataFrame(probabilities, columns=["prob_CN", "prob_MCI", "prob_AD"])
    return frame.assign(subject_id=[f"{prefix}-{i}" for i in range(len(frame))], diagnosis=diagnosis)


def _width(interval: tuple[float, float]) -> float:
    return interval[1] - interval[0]


def test_bootstrap_interval_covers_the_pooled_estimate():
    from pipeline.engine.metrics import classification_metrics
    from pipeline.study.stats import labels_and_probabilities

    predictions = _predictions(10)
    point = classification_metrics(*labels_and_probabilities(predictions))
    for metric, (low, high) in bootstrap_interval(predictions, n_resamples=200).items():
        assert low <= point[metric] <= high


def test_bootstrap_interval_narrows_with_more_subjects():
    small = bootstrap_interval(_predictions(5), n_resamples=200)["balanced_accuracy"]
    large = bootstrap_interval(_predictions(40), n_resamples=200)["balanced_accuracy"]
    assert _width(large) < 0.6 * _width(small)


def test_bootstrap_resamples_subjects_with_all_their_predictions():
    once = _predictions(8)
    twice_same_subjects = pd.concat([once, once])  # a second repeat predicting the same people
    twice_new_subjects = pd.concat([once, once.assign(subject_id=once["subject_id"] + "b")])
    reference = bootstrap_interval(once, n_resamples=100)["accuracy"]
    assert bootstrap_interval(twice_same_subjects, n_resamples=100)["accuracy"] == pytest.approx(reference)
    assert _width(bootstrap_interval(twice_new_subjects, n_resamples=100)["accuracy"]) < _width(reference)


def test_bootstrap_is_reproducible_with_its_seed():
    predictions = _predictions(6)
    assert bootstrap_interval(predictions, 50, seed=3) == bootstrap_interval(predictions, 50, seed=3)


def test_stability_separates_split_and_training_seed_variation():
    split_effect, seed_effect = [0.0, 0.1, 0.2, 0.3], [0.0, 0.02, 0.04]
    results = pd.DataFrame(
        [
            {"repeat": 0, "fold": f, "seed": s, "accuracy": 0.5 + split_effect[f] + seed_effect[s]}
            for f in range(4)
            for s in range(3)
        ]
    )
    sd_folds, sd_seeds = stability(results, "accuracy")
    assert sd_folds == pytest.approx(np.std(split_effect, ddof=1))
    assert sd_seeds == pytest.approx(0.02)


def test_stability_across_seeds_is_undefined_with_one_seed():
    results = pd.DataFrame({"repeat": 0, "fold": [0, 1, 2], "seed": 0, "accuracy": [0.5, 0.6, 0.7]})
    assert math.isnan(stability(results, "accuracy")[1])


def test_chance_levels_are_those_of_a_constant_majority_predictor():
    chance = chance_levels(["CN"] * 5 + ["MCI"] * 3 + ["AD"] * 2)
    assert chance["accuracy"] == pytest.approx(0.5)
    assert chance["balanced_accuracy"] == pytest.approx(1 / 3)
    assert chance["macro_f1"] == pytest.approx((2 / 3) / 3)  # F1 of CN is 2/3, the other classes 0
    assert chance["auc_ovr"] == pytest.approx(0.5)


# --- comparisons ------------------------------------------------------------------------------------------

MODALITIES = {"mri_cnn3d": "MR", "fmri_lstm": "fMRI", "mri_fmri_fusion": "MR+fMRI"}


def _plan(cohort: str = "paired", models=tuple(MODALITIES), folds: int = 4, seeds=(0, 1)) -> pd.DataFrame:
    rows = [
        {"cohort": cohort, "model": m, "augment": a, "repeat": 0, "fold": f, "seed": s, "modalities": MODALITIES[m]}
        for m in models
        for a in (False, True)
        for f in range(folds)
        for s in seeds
    ]
    return pd.DataFrame(rows)


def _results(plan: pd.DataFrame, gain: dict[tuple[str, bool], list[float]]) -> pd.DataFrame:
    """Finished jobs of ``plan``: split- and seed-dependent noise shared by all models, plus a per-fold gain."""
    rng = np.random.default_rng(0)
    noise = {(f, s): rng.uniform(0.3, 0.6) for f in plan["fold"].unique() for s in plan["seed"].unique()}
    frame = plan.copy()
    frame["balanced_accuracy"] = [
        noise[(r.fold, r.seed)] + gain.get((r.model, r.augment), [0.0] * 10)[r.fold] for r in frame.itertuples()
    ]
    for metric in ("accuracy", "macro_f1", "auc_ovr"):
        frame[metric] = frame["balanced_accuracy"]
    return frame.assign(n_train=15, n_val=5, n_test=5)


def test_fused_model_is_compared_with_each_single_model_at_the_same_augmentation():
    labels = {c.label for c in plan_comparisons(_plan()) if c.kind == "fusion_vs_single"}
    assert labels == {
        f"mri_fmri_fusion vs {single} (augmentation {aug})"
        for single in ("mri_cnn3d", "fmri_lstm")
        for aug in ("off", "on")
    }


def test_augmentation_on_is_compared_with_off_for_every_model():
    pairs = {(c.a, c.b) for c in plan_comparisons(_plan()) if c.kind == "augmentation"}
    assert pairs == {((m, True, "none"), (m, False, "none")) for m in MODALITIES}  # (model, augment, transfer)


def test_comparisons_pair_jobs_by_repeat_fold_and_seed():
    plan = _plan()
    results = _results(plan, {("mri_fmri_fusion", True): [0.1, 0.2, 0.1, 0.2]})
    dropped = results.drop(results.index[(results["model"] == "mri_fmri_fusion") & ~results["augment"]][:1])
    row = compare(dropped, plan).query("comparison == 'mri_fmri_fusion: augmentation on vs off'").iloc[0]
    assert row["mean_diff"] == pytest.approx(0.15)  # pairs share their noise, so only the gain remains
    assert row["n_splits"] == 4  # fold 0 still pairs through its other seed
    assert row["test_train_ratio"] == pytest.approx(5 / 20)  # validation counts as training partition


def test_comparison_without_two_paired_splits_is_kept_with_a_note():
    plan = _plan(folds=2)
    results = _results(plan, {})
    results = results[~((results["model"] == "fmri_lstm") & results["augment"] & (results["fold"] == 1))]
    row = compare(results, plan).query("comparison == 'fmri_lstm: augmentation on vs off'").iloc[0]
    assert math.isnan(row["p"])
    assert row["note"] == "only 1 paired split(s) finished, 2 needed"


def _answer_to_fused_question(gain: list[float]) -> str:
    plan = _plan(folds=5, seeds=(0,))
    comparisons = compare(_results(plan, {("mri_fmri_fusion", True): gain}), plan)
    subjects = pd.DataFrame(
        {"cohort": "paired", "subject_id": range(29), "diagnosis": ["CN", "MCI", "AD"] * 9 + ["CN"] * 2}
    )
    (_, rows), _ = paper_questions(comparisons, plan)
    return answer(rows, chance_table(subjects))


def test_answer_reports_a_significant_gain_with_its_interval_and_p():
    text = _answer_to_fused_question([0.20, 0.21, 0.19, 0.20, 0.20])
    assert text.startswith("Yes for mri_fmri_fusion on cohort paired (29 subjects): augmentation raised")
    assert "95% CI" in text and "corrected p =" in text


def test_answer_does_not_claim_an_effect_that_is_not_significant():
    text = _answer_to_fused_question([0.2, -0.2, 0.1, -0.1, 0.05])
    assert text.startswith("Not shown") and "not significant" in text and "compatible with" in text


def test_question_without_a_matching_cohort_says_so():
    plan = _plan()
    (_, fused), (_, mri_only) = paper_questions(compare(_results(plan, {}), plan), plan)
    assert len(fused) == 1 and mri_only.empty
    assert answer(mri_only, pd.DataFrame()).startswith("Not answered")


def test_answer_says_when_augmentation_changed_nothing():
    text = _answer_to_fused_question([0.0] * 5)
    assert text.endswith("balanced accuracy was identical with and without augmentation in all 5 paired splits.")
