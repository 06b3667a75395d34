"""Tables -> manifests: diagnosis label maps, ADNIMERGE-like tables joined to image files by a path pattern, and the
checked writing and summary shared with :mod:`pipeline.data.bids`.

A builder collects candidate rows with the *raw* diagnosis label of each subject-session; :func:`finish_build` maps
the labels to ``CN``/``MCI``/``AD`` (listing every value it cannot map, and failing unless asked to drop them) and
:func:`write_checked` validates the result with :func:`pipeline.data.manifest.validate_manifest` before writing it.
"""

from __future__ import annotations

import glob
import itertools
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from tabulate import tabulate
from tqdm.auto import tqdm

from pipeline import CLASS_NAMES
from pipeline.data.manifest import LINE, read_delimited, validate_manifest, write_manifest
from pipeline.errors import ManifestError

#: ADNI-style labels: ADNIMERGE ``DX`` / ``DX_bl`` and Clinica's ``sessions.tsv`` / ``participants.tsv`` values.
DEFAULT_LABEL_MAP = {
    "CN": "CN",
    "SMC": "CN",
    "EMCI": "MCI",
    "LMCI": "MCI",
    "MCI": "MCI",
    "AD": "AD",
    "Dementia": "AD",
}
PICKS = ("first", "last", "all")
COVARIATES = ("age", "sex", "site")
MISSING = "<missing>"  # how a blank or ``n/a`` diagnosis is listed
RAW_LABEL = "raw_diagnosis"  # builder column: the label as found in the table
NIFTI_SUFFIXES = (".nii", ".nii.gz")
#: from-table defaults: where the images of one table row are, relative to ``--images-root``
DEFAULT_PATTERNS = {"mri": "{subject}/{visit}/anat/*T1w.nii*", "fmri": "{subject}/{visit}/func/*bold.nii*"}
#: from-table defaults: ADNIMERGE column of each covariate
DEFAULT_TABLE_COVARIATES = {"age": "AGE", "sex": "PTGENDER", "site": "SITE"}
MANIFEST_ORDER = ("subject_id", "session_id", "diagnosis", "mri", "fmri", "tr", "confounds", *COVARIATES)


class UnmappedLabelsError(ValueError):
    """Diagnosis values the label map does not cover; ``unmapped`` maps each value to its subjects."""

    def __init__(self, source: str, unmapped: Mapping[str, Sequence[str]]):
        self.unmapped = dict(unmapped)
        labels = ", ".join(shown(label) for label in self.unmapped)
        super().__init__(
            f"{source}: {len(self.unmapped)} diagnosis value(s) cannot be mapped to {'/'.join(CLASS_NAMES)} "
            f"({labels}); add them to the label map (--label-map) or drop those rows (--drop-unmapped)"
        )

    def lines(self) -> list[str]:
        """One line per unmapped value with every subject that has it."""
        return [
            f"unmapped diagnosis {shown(label)}: {len(subjects)} subject(s): " + ", ".join(subjects)
            for label, subjects in self.unmapped.items()
        ]


@dataclass
class ManifestBuild:
    """A manifest built from a dataset: rows with absolute paths, and notes on what was left out and why."""

    frame: pd.DataFrame
    notes: list[str] = field(default_factory=list)


# --- small helpers --------------------------------------------------------------------------------------


def is_missing(value) -> bool:
    """Blank, ``n/a`` (the BIDS missing value) or NaN."""
    return pd.isna(value) or str(value).strip() in ("", "n/a")


def shown(label: str) -> str:
    """A diagnosis label as messages show it: quoted, or ``<missing>``."""
    return label if label == MISSING else repr(label)


def natural_key(text: str) -> list:
    """Sort key comparing digit runs as numbers: ``run-2`` before ``run-10``, ``ses-M06`` before ``ses-M12``."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", text)]


def pick_files(paths: Sequence[str], how: str) -> list[str]:
    """The files to use among several of one modality: ordered by file name (:func:`natural_key`).

    Args:
        paths: candidate files.
        how: ``first``, ``last`` or ``all``.
    """
    if how not in PICKS:
        raise ValueError(f"pick must be one of {', '.join(PICKS)}, got {how!r}")
    ordered = sorted(paths, key=lambda p: natural_key(Path(p).name))
    return {"first": ordered[:1], "last": ordered[-1:], "all": ordered}[how]


def examples(items: Sequence[str], limit: int = 8) -> str:
    """A short comma-separated list: the first ``limit`` items and how many more."""
    items = list(items)
    more = f" and {len(items) - limit} more" if len(items) > limit else ""
    return ", ".join(str(i) for i in items[:limit]) + more


def _name_parts(path: str) -> list[str]:
    name = Path(path).name
    stem = name[: -len(".nii.gz")] if name.endswith(".nii.gz") else Path(name).stem
    return [p for p in stem.split("_") if "-" in p and not p.startswith(("sub-", "ses-"))]


def combinations(session: str, mri: Sequence[str], fmri: Sequence[str]) -> list[tuple[str, str, str]]:
    """``(session_id, mri, fmri)`` for every T1 × BOLD pair of a session.

    With one file per modality the session id is unchanged. With several, each row's session id gets the name parts
    that tell that row's files apart (``ses-01_bold-run-2``), so rows stay distinct while the subject id, which
    splits go by, is unchanged.
    """
    tagged = []
    for tag, paths in (("T1w", mri), ("bold", fmri)):
        parts = [_name_parts(p) for p in paths]
        common = set.intersection(*map(set, parts)) if parts else set()
        suffix = [f"{tag}-" + "-".join(x for x in p if x not in common) if len(paths) > 1 else "" for p in parts]
        tagged.append(list(zip(paths, suffix)) or [("", "")])
    rows = []
    for (t1, t1_tag), (bold, bold_tag) in itertools.product(*tagged):
        rows.append(("_".join(x for x in (session, t1_tag, bold_tag) if x), t1, bold))
    return rows


# --- label maps -----------------------------------------------------------------------------------------


def parse_label_map(spec: str | Mapping[str, str | None] | None) -> dict[str, str]:
    """A diagnosis label map: source label -> ``CN``/``MCI``/``AD``, or ``""`` to exclude that label on purpose.

    Args:
        spec: None for :data:`DEFAULT_LABEL_MAP`; a mapping; a JSON file holding one object; or inline pairs
            ``"LABEL=CLASS,LABEL=CLASS"``. The map replaces the defaults. Labels match ignoring case and
            surrounding spaces.
    """
    if spec is None:
        pairs = dict(DEFAULT_LABEL_MAP)
    elif isinstance(spec, Mapping):
        pairs = dict(spec)
    elif Path(spec).is_file():
        try:
            pairs = json.loads(Path(spec).read_text(encoding="utf8"))
        except json.JSONDecodeError as err:
            raise ValueError(f"{spec}: label map is not valid JSON ({err})") from None
        if not isinstance(pairs, dict):
            raise ValueError(f"{spec}: label map must be a JSON object {{label: class}}")
    else:
        pairs = _inline_pairs(spec)
    return _checked_map(pairs, str(spec) if spec is not None else "default label map")


def _inline_pairs(spec: str) -> dict[str, str]:
    pairs = {}
    for item in (i for i in spec.split(",") if i.strip()):
        if "=" not in item:
            raise ValueError(f"label map {spec!r}: {item.strip()!r} is not LABEL=CLASS (and {spec!r} is not a file)")
        label, _, target = item.partition("=")
        pairs[label] = target
    if not pairs:
        raise ValueError(f"label map {spec!r} is empty")
    return pairs


def _checked_map(pairs: Mapping, where: str) -> dict[str, str]:
    checked: dict[str, str] = {}
    for label, target in pairs.items():
        key, value = str(label).strip().casefold(), ("" if target is None else str(target).strip())
        if value and value not in CLASS_NAMES:
            raise ValueError(f"{where}: {label!r} maps to {value!r}, expected one of {', '.join(CLASS_NAMES)} or ''")
        if checked.get(key, value) != value:
            raise ValueError(f"{where}: {label!r} is mapped twice, to {checked[key]!r} and {value!r}")
        checked[key] = value
    return checked


def finish_build(
    rows: pd.DataFrame, source: str, label_map: str | Mapping[str, str] | None, drop_unmapped: bool, notes: list[str]
) -> ManifestBuild:
    """Map raw diagnosis labels and order the columns.

    Args:
        rows: candidate rows; a :data:`RAW_LABEL` column holds each row's label (absent: unlabelled data).
        source: the dataset or table, named in messages.
        label_map: a spec of :func:`parse_label_map` (None: the ADNI-style defaults).
        drop_unmapped: leave out rows whose label the map lacks (listed in the notes) instead of failing.
        notes: notes of the builder, extended here.

    Raises:
        UnmappedLabelsError: labels the map lacks, unless ``drop_unmapped``.
    """
    if rows.empty:
        raise ValueError(f"{source}: no subject-session with a T1w or BOLD image was found")
    if RAW_LABEL in rows.columns:
        rows = _map_labels(rows, source, parse_label_map(label_map), drop_unmapped, notes)
    rows = rows.fillna("")  # keys some rows lack (confounds of raw runs)
    columns = [c for c in MANIFEST_ORDER if c in rows.columns]
    return ManifestBuild(rows[columns].reset_index(drop=True), notes)


def _map_labels(rows: pd.DataFrame, source: str, label_map, drop_unmapped: bool, notes: list[str]) -> pd.DataFrame:
    labels = [MISSING if is_missing(v) else str(v).strip() for v in rows[RAW_LABEL]]
    mapped = [label_map.get(label.casefold()) if label != MISSING else None for label in labels]
    rows = rows.assign(diagnosis=[m or "" for m in mapped])
    unmapped = _subjects_by_label(rows, labels, [m is None for m in mapped])
    excluded = _subjects_by_label(rows, labels, [m == "" for m in mapped])
    if unmapped and not drop_unmapped:
        raise UnmappedLabelsError(source, unmapped)
    for what, found in (("unmapped diagnosis (--drop-unmapped)", unmapped), ("label excluded by the map", excluded)):
        for label, subjects in found.items():
            notes.append(f"left out {len(subjects)} subject(s) with {what} {shown(label)}: {examples(subjects)}")
    return rows[[bool(m) for m in mapped]]


def _subjects_by_label(rows: pd.DataFrame, labels: list[str], which: list[bool]) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for label, subject, hit in zip(labels, rows["subject_id"], which):
        if hit and subject not in found.setdefault(label, []):
            found[label].append(subject)
    return {label: subjects for label, subjects in found.items() if subjects}


def parse_covariates(spec: str | Mapping[str, str] | None, defaults: Mapping[str, str]) -> dict[str, str]:
    """Manifest covariate -> source column, from ``"age=AGE,sex=PTGENDER"`` (None: ``defaults``; ``""``: none)."""
    if spec is None:
        return dict(defaults)
    pairs = dict(spec) if isinstance(spec, Mapping) else dict(i.partition("=")[::2] for i in spec.split(",") if i)
    pairs = {k.strip(): v.strip() for k, v in pairs.items()}
    bad = [k for k, v in pairs.items() if k not in COVARIATES or not v]
    if bad:
        raise ValueError(f"covariates {spec!r}: expected NAME=COLUMN pairs with NAME one of {', '.join(COVARIATES)}")
    return pairs


# --- writing and summary --------------------------------------------------------------------------------


def write_checked(build: ManifestBuild, out: str | Path) -> Path:
    """Validate a built manifest (files, diagnoses, duplicates) and write it atomically, paths relative to it.

    Raises:
        ManifestError: every problem, naming the line it would have in ``out``; nothing is written.
    """
    out = Path(out)
    frame = build.frame.copy()
    frame[LINE] = np.arange(len(frame)) + 2
    frame.attrs["path"] = str(out)
    problems = validate_manifest(frame)
    if problems:
        raise ManifestError(problems)
    write_manifest(frame, out)
    return out


def summary(frame: pd.DataFrame) -> str:
    """Subjects per diagnosis × modality availability (both / MRI only / fMRI only), as text.

    Cells count distinct subjects; a subject whose sessions differ in diagnosis or modalities counts in each cell it
    has a row in (said in a footnote), so only the ``subjects`` column and ``total`` row are distinct totals.
    """
    has_mri = frame.get("mri", pd.Series("", index=frame.index)).astype(bool)
    has_fmri = frame.get("fmri", pd.Series("", index=frame.index)).astype(bool)
    cells = pd.DataFrame(
        {
            "subject_id": frame["subject_id"],
            "diagnosis": frame["diagnosis"] if "diagnosis" in frame.columns else "(none)",
            "modalities": np.select([has_mri & has_fmri, has_mri], ["both", "MRI only"], "fMRI only"),
        }
    ).drop_duplicates()
    columns = ["both", "MRI only", "fMRI only"]
    order = [d for d in (*CLASS_NAMES, "(none)") if d in set(cells["diagnosis"])]
    table = pd.crosstab(cells["diagnosis"], cells["modalities"]).reindex(index=order, columns=columns, fill_value=0)
    table["subjects"] = cells.groupby("diagnosis")["subject_id"].nunique().reindex(order)
    total = [cells.loc[cells["modalities"] == c, "subject_id"].nunique() for c in columns]
    table.loc["total"] = [*total, cells["subject_id"].nunique()]
    table = table.rename_axis(index="diagnosis", columns=None).reset_index()
    lines = [
        f"{len(frame)} rows (subject-sessions) from {frame['subject_id'].nunique()} subjects",
        tabulate(table, headers="keys", showindex=False),
    ]
    mixed = cells["subject_id"].duplicated().sum()
    if mixed:
        lines.append(f"({mixed} subject(s) counted in several cells: their sessions differ in diagnosis or modalities)")
    return "\n".join(lines)


# --- ADNIMERGE-like tables ------------------------------------------------------------------------------


def read_table(path: str | Path, numeric: Sequence[str] = ()) -> pd.DataFrame:
    """A CSV (or ``.tsv``/``.tab``: tab-separated) table as stripped strings, indexed by each row's line in the file.

    Read by :func:`pipeline.data.manifest.read_delimited`: spreadsheet exports (BOM, CRLF, a semicolon or tab delimiter,
    blank lines) as they come; ``numeric`` columns of a semicolon-delimited file get decimal points.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: table not found")
    return read_delimited(path, numeric, what="table")


def table_manifest(
    table: str | Path,
    images_root: str | Path,
    *,
    subject_column: str = "PTID",
    visit_column: str | None = "VISCODE",
    diagnosis_column: str | None = "DX",
    mri_pattern: str | None = None,
    fmri_pattern: str | None = None,
    pick: str = "first",
    label_map: str | Mapping[str, str] | None = None,
    drop_unmapped: bool = False,
    covariates: Mapping[str, str] | None = None,
) -> ManifestBuild:
    """A manifest from an ADNIMERGE-like table (one row per subject visit) joined to image files by path patterns.

    A pattern is a glob relative to ``images_root`` in which ``{subject}``, ``{visit}`` and ``{COLUMN}`` (any
    column of the table) are replaced by the row's values; only ``.nii``/``.nii.gz`` files count. Rows whose
    patterns match no image are left out (counted in the notes). Diagnoses are checked only on rows with images.

    Args:
        table: CSV, or TSV when named ``.tsv``/``.tab``.
        images_root: folder the patterns are relative to.
        subject_column: subject id column (becomes ``subject_id`` as is).
        visit_column: visit column (becomes ``session_id``); None or ``""`` for one row per subject.
        diagnosis_column: diagnosis column; None or ``""`` for unlabelled data.
        mri_pattern: where a row's T1 images are (None: :data:`DEFAULT_PATTERNS`; ``""``: no MRI).
        fmri_pattern: where a row's BOLD runs are (None: :data:`DEFAULT_PATTERNS`; ``""``: no fMRI).
        pick: ``first``, ``last`` or ``all`` when a pattern matches several files (see :func:`pick_files`).
        label_map: a spec of :func:`parse_label_map` (None: the ADNI-style defaults).
        drop_unmapped: leave out rows with unmapped diagnoses (listed in the notes) instead of failing.
        covariates: manifest column -> table column for ``age``/``sex``/``site`` (default
            :data:`DEFAULT_TABLE_COVARIATES`); columns the table lacks are noted.

    Raises:
        ValueError: a named column is missing, a pattern names an unknown column, (subject, visit) repeats, or one
            image matches several rows.
        UnmappedLabelsError: see :func:`finish_build`.
    """
    label_map = parse_label_map(label_map)  # fail fast on a bad map
    covariates = dict(DEFAULT_TABLE_COVARIATES if covariates is None else covariates)
    frame, root = read_table(table, [covariates.get("age", "")]), Path(images_root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: images root not found")
    placeholders = {"subject": subject_column, **({"visit": visit_column} if visit_column else {})}
    _check_columns(frame, table, [*placeholders.values(), *([diagnosis_column] if diagnosis_column else [])])
    _check_unique(frame, table, list(placeholders.values()))
    given = {"mri": mri_pattern, "fmri": fmri_pattern}
    patterns = {m: DEFAULT_PATTERNS[m] if p is None else p for m, p in given.items()}
    patterns = {m: p for m, p in patterns.items() if p}
    if not patterns:
        raise ValueError("give at least one of the MRI and fMRI path patterns")
    rows, unmatched = [], []
    for line, record in tqdm(
        zip(frame.index, frame.to_dict("records")), total=len(frame), desc="match", unit="row", disable=None
    ):
        values = {**record, **{k: record[c] for k, c in placeholders.items()}}
        found = {m: pick_files(_expand(root, p, values, table), pick) for m, p in patterns.items()}
        if not any(found.values()):
            unmatched.append(f"{values['subject']} {values.get('visit', '')}".strip())
            continue
        carried = {"tr": "", LINE: line, **_carried(record, diagnosis_column, covariates)}
        for session, mri, fmri in combinations(values.get("visit", ""), found.get("mri", []), found.get("fmri", [])):
            rows.append({"subject_id": values["subject"], "session_id": session, "mri": mri, "fmri": fmri, **carried})
    if not rows:
        raise ValueError(f"{table}: no row matches an image under {root} (patterns: {', '.join(patterns.values())})")
    built = pd.DataFrame(rows)
    _check_single_use(built, table)
    notes = _table_notes(frame, table, unmatched, covariates)
    return finish_build(built.drop(columns=[LINE]), str(table), label_map, drop_unmapped, notes)


def _check_columns(frame: pd.DataFrame, table, columns: Sequence[str]) -> None:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise ValueError(f"{table}: no column(s) {', '.join(missing)} (has: {examples(list(frame.columns), 20)})")


def _check_unique(frame: pd.DataFrame, table, keys: Sequence[str]) -> None:
    repeated = frame[frame.duplicated(keys, keep=False)]
    if not repeated.empty:
        first = repeated[(repeated[keys] == repeated[keys].iloc[0]).all(axis=1)]
        lines = ", ".join(str(i) for i in first.index)
        value = " ".join(first[keys].iloc[0])
        raise ValueError(f"{table}: {' '.join(keys)} {value!r} appears on lines {lines}; each must be unique")


def _expand(root: Path, pattern: str, values: dict[str, str], table) -> list[str]:
    """The NIfTI files a pattern matches for one row (values are matched literally, not as globs)."""
    try:
        relative = pattern.format_map({k: glob.escape(v) for k, v in values.items()})
    except KeyError as err:
        raise ValueError(
            f"path pattern {pattern!r} uses {{{err.args[0]}}}, which is neither subject, visit (when a visit column "
            f"is given) nor a column of {table}"
        ) from None
    matches = (root / m for m in glob.glob(relative, root_dir=root, recursive=True))
    return [str(m) for m in matches if m.name.endswith(NIFTI_SUFFIXES) and m.is_file()]


def _carried(record: dict, diagnosis_column: str | None, covariates: Mapping[str, str]) -> dict:
    carried = {RAW_LABEL: record[diagnosis_column]} if diagnosis_column else {}
    for name, column in covariates.items():
        if column in record:
            carried[name] = "" if is_missing(record[column]) else record[column]
    return carried


def _table_notes(frame: pd.DataFrame, table, unmatched: list[str], covariates: Mapping[str, str]) -> list[str]:
    notes = []
    if unmatched:
        notes.append(f"left out {len(unmatched)} of {len(frame)} table rows that match no image: {examples(unmatched)}")
    absent = [f"{name} ({column})" for name, column in covariates.items() if column not in frame.columns]
    if absent:
        notes.append(f"not carried, no such column in {table}: {', '.join(absent)}")
    return notes


def _check_single_use(built: pd.DataFrame, table) -> None:
    """One image file must belong to one table row: a pattern that ignores the visit would mislabel."""
    for column in ("mri", "fmri"):
        used = built[built[column] != ""].drop_duplicates([LINE, column])
        shared = used[used.duplicated(column, keep=False)]
        if not shared.empty:
            path = shared[column].iloc[0]
            lines = ", ".join(str(v) for v in shared.loc[shared[column] == path, LINE])
            raise ValueError(
                f"{table}: {path} matches the rows on lines {lines}; make the {column} pattern specific to one row "
                "(e.g. include {visit})"
            )
