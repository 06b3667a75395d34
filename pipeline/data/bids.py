"""BIDS dataset -> manifest, with pybids.

One row per subject-session with a T1w (``anat/*_T1w``) or a BOLD run of the chosen task (``func/*_task-rest_bold``);
a session with one of them only keeps the other path empty. Diagnosis and covariates come from ``sessions.tsv``
(per session) or else ``participants.tsv``; the TR from the BOLD sidecar with BIDS inheritance
(``layout.get_metadata``). With derivatives (e.g. fMRIPrep), a session's preprocessed images
(``space-<space>_desc-preproc``) are preferred to the raw ones, and the confounds TSV of a preprocessed BOLD run goes
to the ``confounds`` column. Subject ids keep their prefix (``sub-01``), session ids too (``ses-M00``).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path

import pandas as pd
from bids import BIDSLayout

from pipeline.data.images import read_sidecar
from pipeline.data.manifest import read_delimited
from pipeline.data.tables import (
    NIFTI_SUFFIXES,
    RAW_LABEL,
    ManifestBuild,
    combinations,
    examples,
    finish_build,
    is_missing,
    natural_key,
    parse_label_map,
    pick_files,
)

DEFAULT_SPACE = "MNI152NLin2009cAsym"
DEFAULT_COVARIATES = {"age": "age", "sex": "sex", "site": "site"}
#: entities that do not identify a run: ignored when pairing a preprocessed BOLD run with its confounds or raw run
_NOT_RUN = {"suffix", "extension", "datatype", "desc", "space", "res", "den"}

Key = tuple[str, "str | None"]  # (subject label, session label or None)


def bids_manifest(
    bids_dir: str | Path,
    *,
    task: str = "rest",
    pick: str = "first",
    session: str = "all",
    diagnosis_column: str | None = "diagnosis",
    label_map: str | Mapping[str, str] | None = None,
    drop_unmapped: bool = False,
    derivatives: Sequence[str | Path] = (),
    space: str | None = None,
    covariates: Mapping[str, str] | None = None,
) -> ManifestBuild:
    """A manifest of a BIDS dataset: T1w and resting-state BOLD per subject and session.

    Args:
        bids_dir: the BIDS dataset (raw).
        task: BOLD task label.
        pick: ``first``, ``last`` or ``all`` when a session has several T1w or BOLD files (runs, acquisitions,
            echoes): files ordered by name with numbers compared as numbers (``run-2`` before ``run-10``);
            ``all`` writes one row per T1w × BOLD pair (see :func:`pipeline.data.tables.combinations`).
        session: ``all`` sessions, the ``first`` session with images (labels in natural order: ``M06`` before
            ``M12``), or one session label (``M00`` or ``ses-M00``).
        diagnosis_column: column of ``sessions.tsv`` / ``participants.tsv``; None for unlabelled data.
        label_map: a spec of :func:`pipeline.data.tables.parse_label_map` (None: the ADNI-style defaults).
        drop_unmapped: leave out subjects whose diagnosis the map lacks (listed in the notes) instead of failing.
        derivatives: BIDS-derivatives folders whose preprocessed images are preferred, session by session.
        space: ``space`` entity of the preprocessed images (None: :data:`DEFAULT_SPACE`).
        covariates: manifest column -> TSV column for ``age``/``sex``/``site`` (default the same names).

    Raises:
        ValueError: not a folder, no images, no diagnosis column, or an unknown session.
        UnmappedLabelsError: see :func:`pipeline.data.tables.finish_build`.
    """
    label_map = parse_label_map(label_map)  # fail fast on a bad map
    covariates = dict(DEFAULT_COVARIATES if covariates is None else covariates)
    layout = _layout(bids_dir, derivatives)
    images = _find_images(layout, task, (space or DEFAULT_SPACE) if derivatives else None)
    notes = _image_notes(layout, images, task)
    clinical = _Clinical(layout, bids_dir)
    if diagnosis_column:
        clinical.require(diagnosis_column)
    notes += clinical.notes(images, covariates)
    covariates = {name: column for name, column in covariates.items() if column in clinical.columns()}
    chosen = sorted(
        _select_sessions(images, session, notes), key=lambda k: (natural_key(k[0]), natural_key(k[1] or ""))
    )
    if derivatives:
        notes += _derivative_notes(images, chosen)
    rows = []
    for key in chosen:
        rows += _session_rows(layout, images, key, pick, clinical, diagnosis_column, covariates)
    lacking = [f"{r['subject_id']} {r['session_id']}".strip() for r in rows if r.get("confounds") == ""]
    if lacking:
        notes.append(f"{len(lacking)} preprocessed BOLD run(s) without a confounds TSV: {examples(lacking)}")
    return finish_build(pd.DataFrame(rows), str(bids_dir), label_map, drop_unmapped, notes)


def _layout(bids_dir: str | Path, derivatives: Sequence[str | Path]) -> BIDSLayout:
    for folder in (bids_dir, *derivatives):
        if not Path(folder).is_dir():
            raise FileNotFoundError(f"{folder}: BIDS folder not found")
    try:
        return BIDSLayout(str(bids_dir), validate=False, derivatives=[str(d) for d in derivatives] or False)
    except Exception as err:  # pybids raises several types for unreadable datasets, naming no file for some
        for folder in (bids_dir, *derivatives):
            _check_sidecars(Path(folder))
        raise ValueError(f"{bids_dir}: cannot index as BIDS ({type(err).__name__}: {err})") from None


def _check_sidecars(folder: Path) -> None:
    """Raise :class:`~pipeline.data.images.SidecarError` for the first JSON file of a dataset that cannot be read
    (hidden folders such as ``.git`` and ``.datalad`` left out)."""
    for path in sorted(folder.rglob("*.json")):
        if not any(part.startswith(".") for part in path.relative_to(folder).parts):
            read_sidecar(path)


def _by_key(layout: BIDSLayout, paths: Sequence[str]) -> dict[Key, list[str]]:
    grouped = defaultdict(list)
    for path in paths:
        entities = layout.parse_file_entities(path)
        grouped[(entities["subject"], entities.get("session"))].append(path)
    return grouped


def _run_key(layout: BIDSLayout, path: str) -> frozenset:
    entities = layout.parse_file_entities(path)
    return frozenset((k, str(v)) for k, v in entities.items() if k not in _NOT_RUN)


def _find_images(layout: BIDSLayout, task: str, space: str | None) -> dict[str, dict]:
    """Raw and (with ``space``) preprocessed images, grouped by (subject, session); confounds by run."""

    def paths(**query) -> list[str]:
        return layout.get(return_type="filename", **query)

    ext = list(NIFTI_SUFFIXES)
    found = {
        "raw_mri": _by_key(layout, paths(scope="raw", suffix="T1w", datatype="anat", extension=ext)),
        "raw_fmri": _by_key(layout, paths(scope="raw", suffix="bold", datatype="func", task=task, extension=ext)),
        "deriv_mri": {},
        "deriv_fmri": {},
        "confounds": {},
    }
    found["raw_runs"] = {_run_key(layout, p): p for ps in found["raw_fmri"].values() for p in ps}
    if space:
        preproc = {"scope": "derivatives", "desc": "preproc", "space": space, "extension": ext}
        found["deriv_mri"] = _by_key(layout, paths(suffix="T1w", datatype="anat", **preproc))
        found["deriv_fmri"] = _by_key(layout, paths(suffix="bold", datatype="func", task=task, **preproc))
        confounds = paths(
            scope="derivatives", desc="confounds", suffix=["timeseries", "regressors"], task=task, extension=".tsv"
        )
        found["confounds"] = {_run_key(layout, p): p for p in confounds}
    return found


def _derivative(images: dict, modality: str, key: Key) -> list:
    """Preprocessed files of a session. fMRIPrep writes one anatomical output per subject for all sessions (no
    ``ses`` entity): it serves every session of that subject."""
    found = images[f"deriv_{modality}"].get(key, [])
    if modality == "mri" and not found:
        found = images["deriv_mri"].get((key[0], None), [])
    return found


def _candidates(images: dict, key: Key) -> tuple[list, list]:
    """A session's T1w and BOLD files: preprocessed ones when there are any, else raw."""
    mri, fmri = (_derivative(images, m, key) or images[f"raw_{m}"].get(key, []) for m in ("mri", "fmri"))
    return mri, fmri


def _session_keys(images: dict) -> set[Key]:
    return set(images["raw_mri"]) | set(images["raw_fmri"]) | set(images["deriv_fmri"])


def _name(key: Key) -> str:
    return f"sub-{key[0]}" + (f" ses-{key[1]}" if key[1] else "")


def _image_notes(layout: BIDSLayout, images: dict, task: str) -> list[str]:
    if not _session_keys(images):
        raise ValueError(f"{layout.root}: no T1w (anat) or task-{task} BOLD (func) NIfTI found")
    if images["raw_fmri"] or images["deriv_fmri"]:
        return []
    tasks = ", ".join(layout.get_tasks()) or "none"
    return [f"no task-{task} BOLD run found (tasks in the dataset: {tasks}; see --task)"]


def _derivative_notes(images: dict, keys: Sequence[Key]) -> list[str]:
    """Sessions that fall back to raw images although derivatives were given."""
    notes = []
    for index, (modality, tag) in enumerate((("mri", "T1w"), ("fmri", "BOLD"))):
        present = [k for k in keys if _candidates(images, k)[index]]
        raw = [_name(k) for k in present if not _derivative(images, modality, k)]
        if raw:
            notes.append(
                f"{tag}: {len(present) - len(raw)} session(s) preprocessed, {len(raw)} raw (no space/desc-preproc "
                f"file in the derivatives): {examples(raw)}"
            )
    return notes


def _select_sessions(images: dict, session: str, notes: list[str]) -> list[Key]:
    keys = _session_keys(images)
    if session == "all":
        return list(keys)
    by_subject = defaultdict(list)
    for key in keys:
        by_subject[key[0]].append(key)
    if session == "first":
        return [min(ks, key=lambda k: natural_key(k[1] or "")) for ks in by_subject.values()]
    label = session.removeprefix("ses-")
    chosen = [k for k in keys if k[1] == label]
    if not chosen:
        labels = sorted({k[1] for k in keys if k[1]}, key=natural_key)
        raise ValueError(f"no session ses-{label} in the dataset (sessions: {examples(labels, 20) or 'none'})")
    lacking = sorted(f"sub-{s}" for s in by_subject if (s, label) not in keys)
    if lacking:
        notes.append(f"left out {len(lacking)} subject(s) without images in ses-{label}: {examples(lacking)}")
    return chosen


def _session_rows(layout, images, key: Key, pick, clinical, diagnosis_column, covariates) -> list[dict]:
    mri, fmri = _candidates(images, key)
    mri, fmri = pick_files(mri, pick), pick_files(fmri, pick)
    session = f"ses-{key[1]}" if key[1] else ""
    rows = []
    for session_id, t1, bold in combinations(session, mri, fmri):
        row = {"subject_id": f"sub-{key[0]}", "session_id": session_id, "mri": t1, "fmri": bold, "tr": ""}
        if bold:
            row.update(_bold_details(layout, images, bold))
        if diagnosis_column:
            row[RAW_LABEL] = clinical.value(key, diagnosis_column)
        row.update({name: clinical.value(key, column) for name, column in covariates.items()})
        rows.append(row)
    return rows


def _bold_details(layout: BIDSLayout, images: dict, bold: str) -> dict:
    """TR (sidecar with inheritance; for a preprocessed run without one, its raw run's) and confounds."""
    run = _run_key(layout, bold)
    preprocessed = "desc" in layout.parse_file_entities(bold)
    details = {"confounds": images["confounds"].get(run, "")} if preprocessed else {}
    tr = layout.get_metadata(bold).get("RepetitionTime")
    if tr is None and preprocessed and run in images["raw_runs"]:
        tr = layout.get_metadata(images["raw_runs"][run]).get("RepetitionTime")
    if tr is not None:
        try:
            details["tr"] = str(float(tr))
        except (TypeError, ValueError):
            raise ValueError(f"{bold}: RepetitionTime {tr!r} in its sidecar is not a number of seconds") from None
    return details


class _Clinical:
    """``participants.tsv`` and ``sub-*/[ses-*/]*_sessions.tsv`` as strings; a session's value wins."""

    def __init__(self, layout: BIDSLayout, bids_dir: str | Path):
        self.where = Path(bids_dir)
        self.participants = self._participants(layout)
        self.sessions = self._sessions(layout)

    def _participants(self, layout: BIDSLayout) -> pd.DataFrame:
        files = layout.get(scope="raw", suffix="participants", extension=".tsv", return_type="filename")
        if not files:
            return pd.DataFrame(index=pd.Index([], name="participant_id"))
        return _read_tsv(files[0], "participant_id", "sub-")

    def _sessions(self, layout: BIDSLayout) -> dict[str, pd.DataFrame]:
        files = layout.get(scope="raw", suffix="sessions", extension=".tsv", return_type="filename")
        return {layout.parse_file_entities(f)["subject"]: _read_tsv(f, "session_id", "ses-") for f in files}

    def columns(self) -> set[str]:
        """Every column of participants.tsv and the sessions.tsv files."""
        return set(self.participants.columns).union(*(set(t.columns) for t in self.sessions.values()))

    def require(self, column: str) -> None:
        """Raise unless ``column`` is in participants.tsv or a sessions.tsv."""
        if column not in self.columns():
            has = examples(sorted(self.participants.columns), 20) or "no participants.tsv"
            raise ValueError(
                f"{self.where}: no column {column!r} in participants.tsv or any sessions.tsv (participants.tsv has: "
                f"{has}); name the diagnosis column with --diagnosis-column"
            )

    def value(self, key: Key, column: str) -> str:
        """The session's value of ``column``, else the participant's; ``""`` when missing."""
        subject, session = key
        sources = [(self.participants, f"sub-{subject}")]
        if session and subject in self.sessions:
            sources.insert(0, (self.sessions[subject], f"ses-{session}"))
        for frame, index in sources:
            if column in frame.columns and index in frame.index:
                value = frame.at[index, column]
                if not is_missing(value):
                    return value
        return ""

    def notes(self, images: dict, covariates: Mapping[str, str]) -> list[str]:
        """Participants without images, and covariates found nowhere."""
        notes = []
        with_images = {f"sub-{k[0]}" for k in _session_keys(images)}
        without = [p for p in self.participants.index if p not in with_images]
        if without:
            notes.append(
                f"{len(without)} subject(s) of participants.tsv have no T1w or BOLD image: {examples(without)}"
            )
        absent = [f"{name} ({column})" for name, column in covariates.items() if column not in self.columns()]
        if absent:
            notes.append(f"not carried, no such column in participants.tsv or sessions.tsv: {', '.join(absent)}")
        return notes


def _read_tsv(path: str, index: str, prefix: str) -> pd.DataFrame:
    """A BIDS TSV as strings indexed by ``index`` (values given the BIDS prefix when they lack it); read as
    :func:`pipeline.data.manifest.read_delimited` reads tables (BOM, CRLF, blank lines; decimal points in ``age``)."""
    frame = read_delimited(path, ("age",), what="BIDS table")
    if index not in frame.columns:
        raise ValueError(f"{path}: no {index} column (has: {', '.join(frame.columns)})")
    frame[index] = [v if v.startswith(prefix) else prefix + v for v in frame[index]]
    repeated = frame[frame[index].duplicated(keep=False)]
    if not repeated.empty:
        value = repeated[index].iloc[0]
        lines = ", ".join(str(line) for line in repeated.index[repeated[index] == value])
        raise ValueError(f"{path}: {index} {value} appears on lines {lines}")
    return frame.set_index(index)
