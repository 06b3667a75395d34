"""Predict subjects into an output folder: every subject staged in a hidden folder inside it and moved into place
only when all succeeded, so a refusal or an error leaves nothing behind and nothing is written outside it.

``--force`` replaces only what ``predict`` writes: ``predictions.csv`` and subject folders holding nothing but its
own files (:data:`~pipeline.inference.predict.OUTPUT_FILES`); a folder holding anything else (a BIDS subject's
``anat/``) is never replaced, and an output folder inside an input dataset is refused.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import pandas as pd
from tqdm.auto import tqdm

from pipeline.inference.predict import OUTPUT_FILES, Predictor, Subject
from pipeline.io import atomic_write_text

TABLE = "predictions.csv"
_REPLACED = ".replaced"
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")
#: the file that marks a BIDS dataset's root
BIDS_ROOT_FILE = "dataset_description.json"
logger = logging.getLogger(__name__)


def folder_name(name: str) -> str:
    """``name`` as a plain folder name: characters other than letters, digits, ``. _ -`` become ``_``, leading
    dots and separators are dropped (``sub 01/a`` -> ``sub_01_a``, ``../x`` -> ``x``)."""
    return _UNSAFE.sub("_", name).lstrip("._-") or "subject"


def check_names(subjects: Sequence[Subject]) -> None:
    """Refuse subject names that are not plain folder names or that repeat.

    Raises:
        ValueError: naming the subject.
    """
    seen: set[str] = set()
    for subject in subjects:
        if not _NAME.fullmatch(subject.name):
            raise ValueError(f"subject {subject.name!r}: not usable as a folder name (letters, digits, . _ -)")
        if subject.name in seen:
            raise ValueError(f"subject {subject.name!r} appears twice; give sessions distinct session_id values")
        seen.add(subject.name)


@contextmanager
def staged(out: Path, entries: Sequence[str], force: bool) -> Iterator[Path]:
    """A staging folder inside ``out``; on success its ``entries`` replace those of ``out``, on error it is removed
    (and ``out`` too when this call created it).

    Args:
        out: the output folder.
        entries: names the run writes directly in ``out``.
        force: replace existing entries (otherwise an existing one is refused before anything runs).

    Raises:
        FileExistsError: an entry exists and ``force`` is off, or it holds what ``predict`` did not write.
    """
    existing = [name for name in entries if (out / name).exists() or (out / name).is_symlink()]
    for name in existing:
        foreign = _not_written_by_predict(out / name)
        if foreign:
            raise FileExistsError(
                f"{out / name}: exists and {foreign}, not written by neurofusion predict; choose another --out "
                "(--force replaces only predict's own outputs)"
            )
    if existing and not force:
        raise FileExistsError(f"{out / existing[0]}: exists; use --force to replace it")
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".neurofusion-predict-", dir=out))
    try:
        yield staging
        _commit(out, staging, entries)
    except BaseException:
        if (staging / _REPLACED).exists() and any((staging / _REPLACED).iterdir()):
            # the commit could not put every previous entry back: keep them in the staging folder rather than lose them
            logger.error("%s: could not restore every replaced output; they are kept in %s", out, staging / _REPLACED)
            raise
        shutil.rmtree(staging, ignore_errors=True)
        if created:
            shutil.rmtree(out, ignore_errors=True)
        raise
    shutil.rmtree(staging, ignore_errors=True)


def _not_written_by_predict(path: Path) -> str | None:
    """How an existing output entry is not ``predict``'s own (None: it holds only predict's files)."""
    if path.is_symlink():
        return "is a symbolic link"
    if path.name == TABLE:
        return None if path.is_file() else "is a folder"
    if not path.is_dir():
        return "is a file"
    foreign = sorted(p.name + ("/" if p.is_dir() else "") for p in path.iterdir() if p.name not in OUTPUT_FILES)
    if not foreign:
        return None
    return f"holds {foreign[0]}" + (f" (and {len(foreign) - 1} more)" if len(foreign) > 1 else "")


def check_outside_inputs(out: str | Path, subjects: Sequence[Subject]) -> None:
    """Refuse an output folder that holds an input, or lies inside a BIDS dataset an input belongs to (its
    ``derivatives/`` excepted, where BIDS puts outputs).

    Raises:
        ValueError: naming the folder, the input and where to write instead.
    """
    target = Path(out).resolve()
    for subject in subjects:
        for given in subject.given().values():
            # the path as given and as resolved: a DataLad file is a link into the dataset's .git
            for path in dict.fromkeys((Path(os.path.abspath(given)), Path(given).resolve())):
                root = _bids_root(path)
                if root and target.is_relative_to(root) and not target.is_relative_to(root / "derivatives"):
                    raise ValueError(
                        f"--out {out}: inside the input BIDS dataset {root} (of {given}); write outside it or under "
                        f"{root / 'derivatives'}"
                    )
                if path.is_relative_to(target):
                    raise ValueError(
                        f"--out {out}: holds the input {given}; choose an output folder outside the input data"
                    )


def _bids_root(path: Path) -> Path | None:
    """The nearest folder above ``path`` with a ``dataset_description.json`` (a BIDS dataset), or None."""
    return next((folder for folder in path.parents if (folder / BIDS_ROOT_FILE).is_file()), None)


def _commit(out: Path, staging: Path, entries: Sequence[str]) -> None:
    """Move ``entries`` from ``staging`` into ``out``, existing ones first moved aside into ``staging/.replaced``.

    On an error every step done is undone (new entries back into ``staging``, previous ones back into ``out``) before
    the error is raised again, so ``out`` is never left half replaced.
    """
    replaced = staging / _REPLACED
    replaced.mkdir()
    steps: list[tuple[str, bool]] = []  # (name, its previous entry was moved aside), in order
    placed = 0  # how many of ``steps`` have their new entry in ``out``
    try:
        for name in entries:
            aside = (out / name).exists()
            if aside:
                (out / name).rename(replaced / name)
            steps.append((name, aside))
            (staging / name).rename(out / name)
            placed += 1
    except BaseException:
        for index, (name, aside) in reversed(list(enumerate(steps))):
            with contextlib.suppress(OSError):  # one failed undo must not stop the others
                if index < placed:
                    (out / name).rename(staging / name)
                if aside:
                    (replaced / name).rename(out / name)
        raise


def _table_row(subject: Subject, record: dict) -> dict:
    row = {"subject_id": record["subject_id"], "session_id": subject.session_id, "folder": subject.name}
    row.update({f"prob_{name}": p for name, p in record["probabilities"].items()})
    row["predicted"] = record["predicted_class"]
    row["missing_fmri"] = "fmri" in record["missing_modalities"]
    row["warnings"] = len(record["warnings"])
    return row


def predict_subjects(
    predictor: Predictor,
    subjects: Sequence[Subject],
    out: str | Path,
    force: bool = False,
    table: bool = False,
    progress: bool = False,
) -> list[dict]:
    """Predict every subject into ``out/<name>/`` (and ``out/predictions.csv`` when ``table``).

    Header QC runs over every subject first, so a bad file late in a batch is refused before any prediction.

    Args:
        predictor: the loaded bundle's predictor.
        subjects: the subjects, each with a distinct folder name.
        out: the output folder.
        force: replace existing subject folders and table.
        table: write the batch table ``predictions.csv``.
        progress: a progress bar over subjects.

    Raises:
        QCError: a subject failed QC (nothing is written).
        FileExistsError: an output exists and ``force`` is off, or holds files ``predict`` did not write.
        ValueError: ``out`` holds an input or lies inside an input BIDS dataset (:func:`check_outside_inputs`).
    """
    check_names(subjects)
    check_outside_inputs(out, subjects)
    out = Path(out)
    entries = [s.name for s in subjects] + ([TABLE] if table else [])
    for subject in subjects:
        predictor.check_headers(subject)
    records = []
    with staged(out, entries, force) as staging:
        for subject in tqdm(subjects, desc="predict", unit="subject", disable=not progress):
            records.append(predictor.predict(subject, staging / subject.name))
        if table:
            rows = [_table_row(s, r) for s, r in zip(subjects, records)]
            atomic_write_text(staging / TABLE, pd.DataFrame(rows).to_csv(index=False))
    return records
