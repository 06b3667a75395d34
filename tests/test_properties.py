"""Properties of manifests and splits over generated cohorts (hypothesis): any valid manifest survives a write and a
read, any invalid row is refused naming its line, and any cohort is split by subject, stratified, with validation
carved from training only."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pandas as pd
from hypothesis import HealthCheck, given, reject, settings
from hypothesis import strategies as st

from pipeline import CLASS_NAMES
from pipeline.data.manifest import LINE, assign_folds, fold_manifest, read_manifest, validate_manifest, write_manifest

FAST = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])

ids = st.from_regex(r"sub-[A-Za-z0-9]{1,8}", fullmatch=True)
free_text = st.text(
    st.characters(codec="utf-8", exclude_categories=("C", "Z")) | st.sampled_from(" ,;\"'"), max_size=12
)
stripped = free_text.map(str.strip)
diagnoses = st.sampled_from(["", *CLASS_NAMES])


@st.composite
def valid_rows(draw, min_size: int = 1) -> list[dict]:
    subjects = draw(st.lists(ids, min_size=min_size, max_size=12, unique_by=str.casefold))  # sub-a, SUB-A: one
    rows = []
    for subject in subjects:
        modality = draw(st.sampled_from(["mri", "fmri", "both"]))
        rows.append(
            {
                "subject_id": subject,
                "session_id": draw(st.sampled_from(["", "bl", "m12"])),
                "diagnosis": draw(diagnoses),
                "mri": "" if modality == "fmri" else f"{subject}/anat/{subject}_T1w.nii.gz",
                "fmri": "" if modality == "mri" else f"{subject}/func/{subject}_bold.nii.gz",
                "tr": draw(st.sampled_from(["", "0.8", "2", "3.0"])) if modality != "mri" else "",
                "age": draw(st.sampled_from(["", "61", "74.5"])),
                "sex": draw(st.sampled_from(["", "F", "M"])),
                "site": draw(stripped),
            }
        )
    return rows


def write_csv(folder: Path, rows: list[dict]) -> Path:
    path = folder / "manifest.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


@FAST
@given(valid_rows())
def test_any_valid_manifest_round_trips(rows):
    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder).resolve()
        frame = read_manifest(write_csv(folder, rows))
        assert validate_manifest(frame, check_files=False) == []
        write_manifest(frame, folder / "elsewhere" / "deeper" / "manifest.csv")
        again = read_manifest(folder / "elsewhere" / "deeper" / "manifest.csv")
        pd.testing.assert_frame_equal(again.drop(columns=LINE), frame.drop(columns=LINE))
        expected = pd.DataFrame(rows).astype(str)
        for column in ("mri", "fmri"):
            expected[column] = [str(folder / p) if p else "" for p in expected[column]]
        pd.testing.assert_frame_equal(frame.drop(columns=LINE), expected)


FAULTS = {
    "unknown diagnosis": lambda row, text: {**row, "diagnosis": text or "Dementia"},
    "unknown split": lambda row, text: {**row, "split": text or "holdout"},
    "tr is not a number": lambda row, text: {**row, "fmri": "run.nii.gz", "tr": (text or "x") + "s"},
    "tr must be a positive number": lambda row, text: {**row, "fmri": "run.nii.gz", "tr": "-2"},
    "empty subject_id": lambda row, text: {**row, "subject_id": ""},
    "no image": lambda row, text: {**row, "mri": "", "fmri": ""},
}


@FAST
@given(valid_rows(), st.data(), st.sampled_from(sorted(FAULTS)), ids, st.from_regex(r"[a-z]{1,6}", fullmatch=True))
def test_an_invalid_row_is_refused_naming_its_line(rows, data, fault, subject, text):
    if fault in ("unknown diagnosis", "unknown split") and text.upper() in (*CLASS_NAMES, "TRAIN", "VAL", "TEST"):
        reject()
    if any(row["subject_id"] != subject and row["subject_id"].casefold() == subject.casefold() for row in rows):
        reject()  # IDs that differ only by case are a fault of their own
    rows = [{**row, "split": ""} for row in rows]
    position = data.draw(st.integers(0, len(rows)))
    base = {**rows[0], "subject_id": subject, "session_id": "other"}
    rows.insert(position, FAULTS[fault](base, text))
    with tempfile.TemporaryDirectory() as folder:
        path = write_csv(Path(folder).resolve(), rows)
        problems = validate_manifest(read_manifest(path), check_files=False)
    named = subject if fault != "empty subject_id" else "<no subject_id>"
    assert len(problems) == 1 and problems[0].startswith(f"{path}:{position + 2}: {named}: "), problems
    assert fault in problems[0]


@st.composite
def cohorts(draw) -> tuple[pd.DataFrame, int]:
    folds = draw(st.integers(2, 4))
    rows = []
    for diagnosis in CLASS_NAMES:
        for i in range(draw(st.integers(folds, folds + 6))):
            for session in range(draw(st.integers(1, 3))):
                rows.append({"subject_id": f"{diagnosis}-{i}", "session_id": f"s{session}", "diagnosis": diagnosis})
    order = draw(st.permutations(range(len(rows))))
    return pd.DataFrame([rows[i] for i in order]), folds


@FAST
@given(cohorts(), st.integers(1, 3), st.integers(0, 2**16))
def test_any_cohort_puts_each_subject_in_one_test_fold_per_repeat(cohort, repeats, seed):
    frame, folds = cohort
    table = assign_folds(frame, folds, repeats, seed)
    assert (table.groupby(["repeat", "subject_id"]).size() == 1).all()
    assert (table.groupby("repeat")["subject_id"].nunique() == frame["subject_id"].nunique()).all()
    assert set(table["fold"]) == set(range(folds))


@FAST
@given(cohorts(), st.integers(1, 2), st.integers(0, 2**16))
def test_any_cohort_is_stratified_within_one_subject_per_class_and_fold(cohort, repeats, seed):
    frame, folds = cohort
    table = assign_folds(frame, folds, repeats, seed)
    counts = table.groupby(["repeat", "diagnosis", "fold"]).size().unstack("fold", fill_value=0)
    assert (counts.max(axis=1) - counts.min(axis=1) <= 1).all()


@FAST
@given(cohorts(), st.integers(0, 2**16), st.sampled_from([0.0, 0.2, 0.34]))
def test_validation_is_carved_from_training_only(cohort, seed, val_fraction):
    frame, folds = cohort
    table = assign_folds(frame, folds, 1, seed)
    for fold in range(folds):
        try:
            part = fold_manifest(frame, table, 0, fold, val_fraction, seed)
        except ValueError as err:  # too few training subjects to carve a stratified validation set: refused
            assert "too few to carve" in str(err)
            reject()
        test = set(table.loc[table["fold"] == fold, "subject_id"])
        assert set(part.loc[part["split"] == "test", "subject_id"]) == test
        assert not test & set(part.loc[part["split"] == "val", "subject_id"])
        assert (part.groupby("subject_id")["split"].nunique() == 1).all()  # sessions share a partition
        assert len(part) == len(frame)
        training = table["subject_id"].nunique() - len(test)  # subjects outside the test fold
        expected = max(len(CLASS_NAMES), round(val_fraction * training)) if val_fraction else 0
        assert part.loc[part["split"] == "val", "subject_id"].nunique() == expected
