"""Manifest: one CSV row per subject-session, the single entry point of data into every workflow.

Columns (see ``data_manifests/README.md``): ``subject_id`` (required), ``session_id``, ``diagnosis``
(``CN``/``MCI``/``AD``), ``mri``, ``fmri``, ``tr``, ``split`` (``train``/``val``/``test``), ``age``, ``sex``,
``site``. Relative paths resolve against the manifest's folder; symbolic links are kept (a DataLad / git-annex file
keeps its name, so its sidecar is found beside it). Problems are reported as ``<manifest>:<line>: <subject>:
<problem>`` where ``line`` is the file's own line (blank lines and values quoted over several lines counted).
Spreadsheet exports are read as they come (:func:`read_delimited`).

Splits are always by subject, stratified by diagnosis, repeated k-fold with a seed; a subject found in two
partitions is an error (:func:`check_no_leakage`).
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import math
import os
import re
import zlib
from collections import defaultdict
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pandas as pd
from sklearn.model_selection import RepeatedStratifiedKFold, train_test_split

from pipeline import CLASS_NAMES
from pipeline.data.images import ImageError, check_header, check_values, content_sha256, fingerprint
from pipeline.data.timing import resolve_tr
from pipeline.errors import BundleKeyError, ManifestError, key_problem
from pipeline.io import atomic_write_text

REQUIRED_COLUMNS = ("subject_id",)
OPTIONAL_COLUMNS = ("session_id", "diagnosis", "mri", "fmri", "tr", "split", "age", "sex", "site", "confounds")
IMAGE_COLUMNS = ("mri", "fmri")
PATH_COLUMNS = (*IMAGE_COLUMNS, "confounds")  # resolved against the manifest's folder on read, relative on write
SPLITS = ("train", "val", "test")
LINE = "line"  # column added on read: the CSV line of each row, used in every message
DELIMITERS = (",", ";", "\t")
NUMERIC_COLUMNS = ("tr", "age")  # a decimal comma in these is read as a point in a semicolon-delimited file
_DECIMAL_COMMA = re.compile(r"^[+-]?\d+,\d+$")
_EXCEL_SEP = re.compile(r"^sep=([,;\t])\r?\n?$")  # Excel's optional first line naming the delimiter
#: what the bundle key ``class_names`` must be
CLASS_NAMES_RULE = "two or three distinct names of CN, MCI, AD in label order, e.g. [CN, AD]"


def valid_class_names(value: Any) -> bool:
    """Whether ``value`` can be the classes of a model: two or three distinct diagnoses of :data:`CLASS_NAMES`."""
    names = value if isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value) else []
    return 2 <= len(set(names)) == len(names) <= len(CLASS_NAMES) and set(names) <= set(CLASS_NAMES)


def check_class_names(value: Any) -> None:
    """Refuse class names that :func:`valid_class_names` rejects.

    Raises:
        BundleKeyError: naming the key ``class_names``.
    """
    if not valid_class_names(value):
        raise BundleKeyError(key_problem("class_names", CLASS_NAMES_RULE, value))


def _blank(value) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value)) or str(value).strip() == ""


def read_delimited(path: str | Path, numeric: Sequence[str] = (), what: str = "manifest") -> pd.DataFrame:
    """A delimited text table, as spreadsheets export it, as stripped strings indexed by each row's line in the file.

    Accepted as they come: a UTF-8 byte-order mark, CRLF line ends, blank lines and rows of empty cells (skipped),
    spaces around names and values, values quoted over several lines, Excel's ``sep=;`` first line, empty trailing
    cells. The delimiter is the one the header line uses among comma, semicolon and tab (the suffix decides only for
    a one-column header: tab for ``.tsv``/``.tab``, else comma); in a semicolon-delimited file a decimal comma in a
    ``numeric`` column is read as a point (``2,5`` -> ``2.5``). The header decides rather than :class:`csv.Sniffer`,
    which prefers commas whenever every row holds the same number of them (in values too).

    Args:
        path: the file.
        numeric: columns whose decimal commas are read as points (semicolon-delimited files only).
        what: what the file is, for messages.

    Raises:
        ManifestError: one line naming the file (and line): not UTF-8 text, no header, a column named twice or
            unnamed, a row with more values than the header, a quote never closed.
    """
    path = Path(path)
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = raw.count(b"\n", 0, err.start) + 1
        byte = f"byte 0x{raw[err.start]:02x}"
        raise ManifestError(
            [f"{path}:{line}: not UTF-8 text ({byte}); save the {what} as UTF-8 (Excel: CSV UTF-8)"]
        ) from None
    first, _, rest = text.partition("\n")
    excel = _EXCEL_SEP.match(first + "\n")
    if excel:
        text = "\n" + rest  # the line is kept (empty) so line numbers stay the file's
    delimiter = excel.group(1) if excel else _delimiter(path, text)
    records = _records(path, text, delimiter)
    if not records:
        raise ManifestError([f"{path}: empty {what}: no header line"])
    (header_line, header), rows = records[0], records[1:]
    columns = _columns(path, header_line, header, rows)
    table = pd.DataFrame(
        [[cells[i] if i < len(cells) else "" for i in columns] for _, cells in rows],
        columns=[header[i] for i in columns],
        index=pd.Index([line for line, _ in rows], name=LINE),
        dtype=str,
    )
    if delimiter == ";":
        for column in (c for c in numeric if c in table.columns):
            table[column] = [v.replace(",", ".") if _DECIMAL_COMMA.match(v) else v for v in table[column]]
    return table


def _delimiter(path: Path, text: str) -> str:
    """The delimiter of the header (first non-blank) line; the suffix's default when it holds none."""
    default = "\t" if path.suffix.lower() in (".tsv", ".tab") else ","
    header = next((line for line in text.splitlines() if line.strip()), "")
    counts = {d: header.count(d) for d in DELIMITERS}
    if counts[default]:
        return default
    found = max(DELIMITERS, key=counts.__getitem__)
    return found if counts[found] else default


def _records(path: Path, text: str, delimiter: str) -> list[tuple[int, list[str]]]:
    """(first line, stripped cells) of every record that holds a value."""
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter, skipinitialspace=True, strict=True)
    records, end = [], 0
    while True:
        start = end + 1
        try:
            cells = next(reader, None)
        except csv.Error as err:
            raise ManifestError([f"{path}:{start}: not a readable table ({err}; a quote never closed?)"]) from None
        if cells is None:
            return records
        end = reader.line_num
        cells = [c.strip() for c in cells]
        if any(cells):
            records.append((start, cells))


def _columns(path: Path, line: int, header: list[str], rows: list[tuple[int, list[str]]]) -> list[int]:
    """Indices of the header's columns, unnamed ones left out when empty; refuses repeated names, long rows."""
    kept = []
    for index, name in enumerate(header):
        if name in header[:index]:
            raise ManifestError([f"{path}:{line}: column {name!r} appears twice in the header"])
        if name:
            kept.append(index)
        elif any(index < len(cells) and cells[index] for _, cells in rows):
            raise ManifestError([f"{path}:{line}: column {index + 1} of the header has no name but holds values"])
    for row_line, cells in rows:
        if len(cells) > len(header) and any(cells[len(header) :]):
            more = f"{len(cells)} values, the header has {len(header)} (quote a value that holds the delimiter)"
            raise ManifestError([f"{path}:{row_line}: {more}"])
    return kept


def read_manifest(path: str | Path) -> pd.DataFrame:
    """Read a manifest CSV as strings, resolve relative image paths, and record each row's line in the file.

    The file is read by :func:`read_delimited` (spreadsheet exports: BOM, CRLF, semicolons, blank lines). Relative
    paths resolve against the manifest's folder; the manifest and the images may be symbolic links (DataLad,
    git-annex): links are not followed, so each path stays the one a user sees.

    Args:
        path: the manifest CSV.

    Raises:
        FileNotFoundError: no such file.
        ManifestError: the file is empty, not a delimited table, or lacks a required column.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: manifest not found")
    frame = read_delimited(path, NUMERIC_COLUMNS)
    missing = [c for c in REQUIRED_COLUMNS if c not in frame.columns]
    if missing:
        raise ManifestError(
            [f"{path}: missing required column(s) {', '.join(missing)} (has: {', '.join(frame.columns)})"]
        )
    root = _folder(path)
    for column in PATH_COLUMNS:
        if column in frame.columns:
            frame[column] = [
                os.path.normpath(root / v) if v and not Path(v).is_absolute() else v for v in frame[column]
            ]
    frame[LINE] = frame.index
    frame = frame.reset_index(drop=True)
    frame.attrs["path"] = str(path)
    return frame


def _folder(path: Path) -> Path:
    """The folder a file's relative paths start from: the folder holding it (a link to the file is not followed)."""
    return Path(os.path.abspath(path)).parent.resolve()


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
        comma = (
            " (a decimal comma? write a point, or delimit the file with semicolons)" if _DECIMAL_COMMA.match(tr) else ""
        )
        return f"tr is not a number: {tr!r}{comma}"


def _tr_problem(row: pd.Series) -> str | None:
    """The TR of a row's fMRI run, resolved as training will (manifest, sidecar, header); a problem or None."""
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
            all its data) and resolve each fMRI run's TR (:func:`pipeline.data.images.check_header`,
            :func:`~pipeline.data.timing.resolve_tr`).
        check_voxels: also read every image's voxels and refuse NaN, infinite or blank ones
            (:func:`pipeline.data.images.check_values`; reads every file in full).
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
    problems += _case_problems(frame)
    if check_files:
        problems += _shared_image_problems(frame)
    problems += _leakage_problems(frame)
    return problems


def _case_problems(frame: pd.DataFrame) -> list[str]:
    """Subject IDs that differ only by case (``sub-006``, ``SUB-006``): one person split as two."""
    named = frame[[not _blank(v) for v in frame["subject_id"]]].drop_duplicates("subject_id")
    problems = []
    for _, group in named.groupby(named["subject_id"].str.casefold(), sort=False):
        if len(group) > 1:
            ids = " and ".join(f"{s!r} (line {line})" for s, line in zip(group["subject_id"], group[LINE]))
            problems.append(
                f"{frame.attrs.get('path', 'manifest')}: subject IDs {ids} differ only by case: one subject under two "
                "IDs? Spell it one way"
            )
    return problems


def _shared_image_problems(frame: pd.DataFrame) -> list[str]:
    """One image under different subjects: the same file (paths resolved through links) or the same content (equal
    :func:`~pipeline.data.images.fingerprint`, confirmed by :func:`~pipeline.data.images.content_sha256`)."""
    uses = defaultdict(list)  # resolved file -> [(line, subject, column, path)]
    for _, row in frame.iterrows():
        for column in (c for c in IMAGE_COLUMNS if c in frame.columns and not _blank(row[c])):
            if Path(row[column]).is_file():
                uses[os.path.realpath(row[column])].append((row[LINE], row["subject_id"], column, row[column]))
    problems = [_shared(frame, found, "the same file") for found in uses.values()]
    by_print = defaultdict(list)
    for real in uses:
        with contextlib.suppress(OSError, EOFError, zlib.error):  # reported by its own check
            by_print[fingerprint(real)].append(real)
    for reals in (r for r in by_print.values() if len(r) > 1):
        by_content = defaultdict(list)
        for real in reals:
            with contextlib.suppress(OSError, EOFError, zlib.error):  # reported by its own check
                by_content[content_sha256(real)] += uses[real]
        problems += [_shared(frame, found, "identical header and data") for found in by_content.values()]
    return [p for p in problems if p]


def _shared(frame: pd.DataFrame, found: list[tuple], how: str) -> str | None:
    """The problem of one image used by rows ``found`` (None unless they belong to different subjects)."""
    if len({subject for _, subject, _, _ in found}) < 2:
        return None
    rows = "; ".join(f"line {line} ({subject}) {column} {path}" for line, subject, column, path in sorted(found))
    return f"{frame.attrs.get('path', 'manifest')}: one image under different subjects ({how}): {rows}"


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
    return _with_tr(frame) if checks.get("check_files", True) else frame


def _with_tr(frame: pd.DataFrame) -> pd.DataFrame:
    """The TR of every fMRI run written into the ``tr`` column, resolved once (manifest, the sidecar beside the path
    given, header), so a fold manifest written elsewhere carries it."""

    if "fmri" not in frame.columns:
        return frame
    given = frame["tr"] if "tr" in frame.columns else [""] * len(frame)
    frame["tr"] = [
        tr if _blank(run) or not _blank(tr) else str(resolve_tr(run)) for run, tr in zip(frame["fmri"], given)
    ]
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
    """Write a manifest CSV atomically, paths relative to ``relative_to`` (default: the file's folder).

    Paths are made relative as given, symbolic links kept (a DataLad / git-annex file keeps its name and its
    sidecar), so reading the file back gives the same paths.
    """
    base = Path(relative_to or Path(path).parent).resolve()
    _write(frame, path, lambda value: os.path.relpath(os.path.abspath(value), base))


def write_fold_manifest(frame: pd.DataFrame, path: str | Path) -> None:
    """Write a fold manifest (``split``, ``experiment``) atomically: absolute paths as the cohort manifest gave them
    (links kept, not resolved, so each run's sidecar is still beside it), and the ``tr`` that :func:`load_manifest`
    resolved for every run."""
    _write(frame, path, os.path.abspath)


def _write(frame: pd.DataFrame, path: str | Path, rewrite) -> None:
    out = frame.drop(columns=[LINE], errors="ignore").copy()
    for column in PATH_COLUMNS:
        if column in out.columns:
            out[column] = ["" if _blank(v) else rewrite(v) for v in out[column]]
    atomic_write_text(Path(path), out.to_csv(index=False))
