"""Manifest: one CSV row per subject-session, the single entry point of data into every workflow.

Columns (see ``data_manifests/README.md``): ``subject_id`` (required), ``session_id``, ``diagnosis``
(``CN``/``MCI``/``AD``), ``mri``, ``fmri``, ``tr``, ``split`` (``train``/``val``/``test``), ``age``, ``sex``,
``site``. Relative paths resolve against the manifest's folder. Problems are reported as
``<manifest>:<line>: <subject>: <problem>`` where ``line`` is the line of the CSV file (the header is line 1).

Splits are always by subject, stratified by diagnosis, repeated k-fold with a seed; a subject found in two
partitions is an error (:func:`check_no_leakage`).
"""

from __future__ import annotations

import hashlib
import math
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
from sklearn.model_selection import RepeatedStratifiedKFold, train_test_split

from pipeline import CLASS_NAMES
from pipeline.images import ImageError, check_header, check_values
from pipeline.io import atomic_write_text

REQUIRED_COLUMNS = ("subject_id",)
OPTIONAL_COLUMNS = ("session_id", "diagnosis", "mri", "fmri", "tr", "split", "age", "sex", "site", "confounds")
IMAGE_COLUMNS = ("mri", "fmri")
PATH_COLUMNS = (*IMAGE_COLUMNS, "confounds")  # resolved against the manifest's folder on read, relative on write
SPLITS = ("train", "val", "test")
LINE = "line"  # column added on read: the CSV line of each row, used in every message


class ManifestError(ValueError):
    """A manifest failed validation; ``problems`` lists one message per problem."""

    def __init__(self, problems: Sequence[str]):
        self.problems = list(problems)
        more = f" (and {len(self.problems) - 1} more)" if len(self.problems) > 1 else ""
        super().__init__(self.problems[0] + more if self.problems else "invalid manifest")


def _blank(value) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value)) or str(value).strip() == ""


def read_manifest(path: str | Path) -> pd.DataFrame:
    """Read a manifest CSV as strings, resolve relative image paths, and record each row's CSV line.

    Args:
        path: the manifest CSV.

    Raises:
        FileNotFoundError: no such file.
        ManifestError: the file is empty, not a CSV, or lacks a required column.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: manifest not found")
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False, skipinitialspace=True)
    except (pd.errors.EmptyDataError, pd.errors.ParserError, UnicodeDecodeError) as err:
        raise ManifestError([f"{path}: not a readable CSV manifest ({err})"]) from None
    frame.columns = [str(c).strip() for c in frame.columns]
    missing = [c for c in REQUIRED_COLUMNS if c not in frame.columns]
    if missing:
        raise ManifestError(
            [f"{path}: missing required column(s) {', '.join(missing)} (has: {', '.join(frame.columns)})"]
        )
    frame = frame.map(lambda v: v.strip() if isinstance(v, str) else v)
    root = path.resolve().parent
    for column in PATH_COLUMNS:
        if column in frame.columns:
            frame[column] = [
                os.path.normpath(root / v) if v and not Path(v).is_absolute() else v for v in frame[column]
            ]
    frame[LINE] = np.arange(len(frame)) + 2
    frame.attrs["path"] = str(path)
    return frame


def _where(frame: pd.DataFrame, row: pd.Series) -> str:
    return f"{frame.attrs.get('path', 'manifest')}:{row[LINE]}: {row['subject_id'] or '<no subject_id>'}"


def _image_problem(path: str, column: str, voxels: bool) -> str | None:
    """Check of one image file (header and size; with ``voxels`` the values too); a problem message or None."""
    try:
        check_header(path, column)
        if voxels:
            check_values(np.asanyarray(nib.load(path).dataobj), column, path)
    except ImageError as err:
        return str(err)
    return None


def _tr_value_problem(tr: str) -> str | None:
    """The manifest's ``tr`` value: blank, or a positive number."""
    if _blank(tr):
        return None
    try:
        return None if float(tr) > 0 else f"tr must be a positive number of seconds, got {tr!r}"
    except ValueError:
        return f"tr is not a number: {tr!r}"


def _tr_problem(row: pd.Series) -> str | None:
    """The TR of a row's fMRI run, resolved as training will (manifest, sidecar, header); a problem or None."""
    from pipeline.transforms.fmri import resolve_tr  # imported here: reading a manifest needs no torch / MONAI

    try:
        resolve_tr(row["fmri"], row.get("tr"))
    except ValueError as err:  # TRError, or a header nibabel cannot read
        return str(err)
    return None


def _row_problems(
    row: pd.Series, columns: Iterable[str], require_diagnosis: bool, check_files: bool, check_voxels: bool
) -> list[str]:
    problems = []
    if _blank(row["subject_id"]):
        problems.append("empty subject_id")
    diagnosis = row.get("diagnosis", "")
    if _blank(diagnosis):
        if require_diagnosis:
            problems.append("missing diagnosis (needed to train or evaluate)")
    elif diagnosis not in CLASS_NAMES:
        problems.append(f"unknown diagnosis {diagnosis!r} (expected one of {', '.join(CLASS_NAMES)})")
    split = row.get("split", "")
    if not _blank(split) and split not in SPLITS:
        problems.append(f"unknown split {split!r} (expected one of {', '.join(SPLITS)})")
    tr = _tr_value_problem(row.get("tr", ""))
    problems += [tr] if tr else []
    paths = [c for c in IMAGE_COLUMNS if c in columns and not _blank(row.get(c))]
    if not paths:
        problems.append("no image: both mri and fmri are empty")
    if check_files:
        images = [p for c in paths if (p := _image_problem(row[c], c, check_voxels))]
        problems += images
        if "fmri" in paths and not (images or tr) and (p := _tr_problem(row)):
            problems.append(p)
        confounds = row.get("confounds", "")
        if not _blank(confounds) and not Path(confounds).is_file():
            problems.append(f"confounds file not found: {confounds}")
    return problems


def validate_manifest(
    frame: pd.DataFrame,
    *,
    require_diagnosis: bool = False,
    require: Sequence[str] = (),
    check_files: bool = True,
    check_voxels: bool = False,
) -> list[str]:
    """Every problem of a manifest, one message each, naming the file, line and subject.

    Args:
        frame: a manifest from :func:`read_manifest`.
        require_diagnosis: every row needs a diagnosis (training and evaluation).
        require: modality columns every row must have (e.g. ``("mri", "fmri")`` for the fused model).
        check_files: open each image header (existence, readability, dimensionality, plausible grid, a file holding
            all its data) and resolve each fMRI run's TR (:func:`pipeline.images.check_header`,
            :func:`~pipeline.transforms.fmri.resolve_tr`).
        check_voxels: also read every image's voxels and refuse NaN, infinite or blank ones
            (:func:`pipeline.images.check_values`; reads every file in full).
    """
    problems = []
    for _, row in frame.iterrows():
        where = _where(frame, row)
        found = _row_problems(row, frame.columns, require_diagnosis, check_files, check_files and check_voxels)
        found += [f"missing {c} (this workflow needs it)" for c in require if _blank(row.get(c))]
        problems += [f"{where}: {p}" for p in found]
    keys = ["subject_id"] + (["session_id"] if "session_id" in frame.columns else [])
    for _, group in frame[frame.duplicated(keys, keep=False)].groupby(keys, sort=False):
        lines = ", ".join(str(v) for v in group[LINE])
        problems.append(f"{frame.attrs.get('path', 'manifest')}: duplicate subject/session rows on lines {lines}")
    problems += _leakage_problems(frame)
    return problems


def load_manifest(path: str | Path, **checks) -> pd.DataFrame:
    """Read and validate a manifest; raise :class:`ManifestError` listing every problem.

    Args:
        path: the manifest CSV.
        checks: keyword arguments of :func:`validate_manifest`.
    """
    frame = read_manifest(path)
    problems = validate_manifest(frame, **checks)
    if problems:
        raise ManifestError(problems)
    return frame


def manifest_sha256(path: str | Path) -> str:
    """Content hash of a manifest file (recorded with results)."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


# --- splits ---------------------------------------------------------------------------------------------


def _leakage_problems(frame: pd.DataFrame) -> list[str]:
    if "split" not in frame.columns:
        return []
    assigned = frame[frame["split"] != ""]
    partitions = assigned.groupby("subject_id")["split"].unique()
    return [
        f"{frame.attrs.get('path', 'manifest')}: subject {subject} is in several partitions ({', '.join(sorted(p))}):"
        " sessions of one subject must share a partition"
        for subject, p in partitions.items()
        if len(p) > 1
    ]


def check_no_leakage(frame: pd.DataFrame) -> None:
    """Raise :class:`ManifestError` when a subject appears in more than one partition."""
    problems = _leakage_problems(frame)
    if problems:
        raise ManifestError(problems)


def subject_table(frame: pd.DataFrame) -> pd.DataFrame:
    """One row per subject with the diagnosis used for stratification.

    A subject whose sessions carry different diagnoses (e.g. MCI converting to AD) is stratified by its most
    frequent diagnosis, ties broken towards the more advanced stage.
    """
    if "diagnosis" not in frame.columns or (frame["diagnosis"] == "").any():
        raise ManifestError([f"{frame.attrs.get('path', 'manifest')}: every row needs a diagnosis to be split"])
    rank = {name: i for i, name in enumerate(CLASS_NAMES)}

    def stratum(diagnoses: pd.Series) -> str:
        counts = diagnoses.value_counts()
        return max(counts.index, key=lambda d: (counts[d], rank[d]))

    table = frame.groupby("subject_id", sort=True)["diagnosis"].agg(stratum).reset_index()
    return table


def assign_folds(frame: pd.DataFrame, folds: int, repeats: int = 1, seed: int = 0) -> pd.DataFrame:
    """Subject-level, diagnosis-stratified repeated k-fold.

    Args:
        frame: a manifest (several sessions per subject allowed).
        folds: number of folds k (each class needs at least k subjects).
        repeats: number of repetitions with different shuffles.
        seed: seed of the shuffles.

    Returns:
        One row per subject and repeat: ``subject_id``, ``diagnosis``, ``repeat``, ``fold`` (the test fold).
    """
    subjects = subject_table(frame)
    counts = subjects["diagnosis"].value_counts()
    if folds < 2:
        raise ValueError(f"folds must be at least 2, got {folds}")
    if (counts < folds).any():
        small = ", ".join(f"{d}: {n}" for d, n in counts.items() if n < folds)
        raise ValueError(f"cannot stratify {folds} folds: too few subjects in {small} (each class needs >= {folds})")
    splitter = RepeatedStratifiedKFold(n_splits=folds, n_repeats=repeats, random_state=seed)
    rows = []
    for index, (_, test) in enumerate(splitter.split(subjects, subjects["diagnosis"])):
        part = subjects.iloc[test].assign(repeat=index // folds, fold=index % folds)
        rows.append(part)
    return pd.concat(rows).sort_values(["repeat", "fold", "subject_id"]).reset_index(drop=True)


def fold_manifest(
    frame: pd.DataFrame, folds_table: pd.DataFrame, repeat: int, fold: int, val_fraction: float = 0.2, seed: int = 0
) -> pd.DataFrame:
    """The manifest of one fold with its ``split`` column: ``test`` = the fold, ``val`` carved from the rest.

    Validation subjects are a diagnosis-stratified fraction of the training partition only, never of the test fold.

    Args:
        frame: the cohort manifest.
        folds_table: output of :func:`assign_folds`.
        repeat: which repetition.
        fold: which fold is the test partition.
        val_fraction: fraction of the training subjects held out for validation (0 disables validation).
        seed: seed of the validation draw (combined with repeat and fold).
    """
    table = folds_table[folds_table["repeat"] == repeat]
    test_subjects = set(table.loc[table["fold"] == fold, "subject_id"])
    rest = table[~table["subject_id"].isin(test_subjects)]
    val_subjects: set[str] = set()
    if val_fraction > 0:
        n_val = max(len(CLASS_NAMES), round(val_fraction * len(rest)))
        if len(rest) - n_val < len(CLASS_NAMES):
            raise ValueError(
                f"repeat {repeat} fold {fold}: {len(rest)} training subjects are too few to carve a stratified "
                f"validation set of {n_val} and keep one training subject per class; use fewer folds or more subjects"
            )
        sparse = {d: n for d, n in rest["diagnosis"].value_counts().items() if n < 2}
        if sparse:
            few = ", ".join(f"{d}: {n}" for d, n in sparse.items())
            raise ValueError(
                f"repeat {repeat} fold {fold}: training subjects are too few to carve a stratified validation set "
                f"({few}; each class needs 2); use fewer folds, more subjects or a validation fraction of 0"
            )
        _, val = train_test_split(
            rest, test_size=n_val, stratify=rest["diagnosis"], random_state=seed * 1000 + repeat * 100 + fold
        )
        val_subjects = set(val["subject_id"])
    split = np.where(
        frame["subject_id"].isin(test_subjects),
        "test",
        np.where(frame["subject_id"].isin(val_subjects), "val", "train"),
    )
    result = frame.drop(columns=[c for c in ("split",) if c in frame.columns]).assign(split=split)
    result.attrs = dict(frame.attrs)
    check_no_leakage(result)
    return result


def write_manifest(frame: pd.DataFrame, path: str | Path, relative_to: str | Path | None = None) -> None:
    """Write a manifest CSV atomically, image paths relative to ``relative_to`` (default: the file's folder)."""
    path = Path(path)
    base = Path(relative_to or path.parent).resolve()
    out = frame.drop(columns=[LINE], errors="ignore").copy()
    for column in PATH_COLUMNS:
        if column in out.columns:
            out[column] = [_relative(v, base) for v in out[column]]
    atomic_write_text(path, out.to_csv(index=False))


def _relative(value: str, base: Path) -> str:
    return "" if _blank(value) else os.path.relpath(Path(value).resolve(), base)
