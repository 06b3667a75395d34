"""Subject-level, diagnosis-stratified repeated k-fold; validation carved from training only."""

from __future__ import annotations

import pandas as pd
import pytest

from pipeline.data.manifest import assign_folds, fold_manifest


def cohort(n_per_class: int = 7, sessions: int = 2) -> pd.DataFrame:
    rows = []
    for diagnosis in ("CN", "MCI", "AD"):
        for i in range(n_per_class):
            for s in range(sessions):
                rows.append({"subject_id": f"{diagnosis}{i}", "session_id": f"s{s}", "diagnosis": diagnosis})
    return pd.DataFrame(rows)


def test_every_subject_is_tested_exactly_once_per_repeat():
    folds = assign_folds(cohort(), folds=5, repeats=3, seed=1)
    counts = folds.groupby(["repeat", "subject_id"]).size()
    assert (counts == 1).all()
    assert folds.groupby("repeat")["subject_id"].nunique().eq(21).all()


def test_folds_are_stratified_by_diagnosis():
    folds = assign_folds(cohort(n_per_class=10), folds=5, repeats=2, seed=0)
    per_fold = folds.groupby(["repeat", "fold", "diagnosis"]).size()
    assert per_fold.min() == per_fold.max() == 2


def test_repeats_shuffle_differently_and_seed_fixes_them():
    a = assign_folds(cohort(), folds=3, repeats=2, seed=4)
    b = assign_folds(cohort(), folds=3, repeats=2, seed=4)
    pd.testing.assert_frame_equal(a, b)
    r0 = a[a.repeat == 0].set_index("subject_id")["fold"]
    r1 = a[a.repeat == 1].set_index("subject_id")["fold"]
    assert not r0.equals(r1.loc[r0.index])


def test_fold_manifest_keeps_sessions_together_and_val_out_of_test():
    frame = cohort()
    folds = assign_folds(frame, folds=3, repeats=1, seed=0)
    part = fold_manifest(frame, folds, repeat=0, fold=1, val_fraction=0.25, seed=0)
    assert part.groupby("subject_id")["split"].nunique().eq(1).all()
    test_subjects = set(folds[(folds.repeat == 0) & (folds.fold == 1)]["subject_id"])
    assert set(part.loc[part.split == "test", "subject_id"]) == test_subjects
    val = part[part.split == "val"]
    assert not set(val["subject_id"]) & test_subjects
    assert set(val["diagnosis"]) == {"CN", "MCI", "AD"}


def test_too_few_subjects_for_the_folds_is_refused():
    with pytest.raises(ValueError, match="too few subjects in .*AD: 2"):
        assign_folds(cohort(n_per_class=2), folds=3)
