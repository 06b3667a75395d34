"""Manifest rows -> MONAI data lists and (cached) datasets, shared by every bundle and the study runner."""

from __future__ import annotations

import logging
import pickle
from collections.abc import Callable, Mapping, Sequence
from copy import deepcopy
from pathlib import Path

import pandas as pd
import torch
from monai.data import CacheDataset, Dataset, PersistentDataset
from monai.data.utils import SUPPORTED_PICKLE_MOD, pickle_hashing
from monai.utils import convert_to_tensor, look_up_option

from pipeline import CLASS_NAMES
from pipeline.data.manifest import check_class_names, load_manifest, read_manifest, validate_manifest
from pipeline.data.timing import TRError, resolve_tr
from pipeline.errors import ManifestError
from pipeline.io import atomic_path

logger = logging.getLogger(__name__)

DEFAULT_KEYS = {"mri": "image", "fmri": "series"}


def manifest_datalist(
    manifest: str | Path,
    splits: Sequence[str] | None = ("train",),
    modalities: Sequence[str] = ("mri", "fmri"),
    keys: Mapping[str, str] | None = None,
    labelled: bool = True,
    missing: str = "drop",
    class_names: Sequence[str] = CLASS_NAMES,
) -> list[dict]:
    """MONAI data list of the manifest rows in ``splits`` (``None``: every row).

    Each item has the modality keys (``image`` for the T1, ``series`` for the BOLD run, or as ``keys`` says), ``tr``
    (seconds, resolved by :func:`~pipeline.data.timing.resolve_tr`), ``confounds`` (the run's confounds TSV or
    ``""``, when the manifest has that column), ``label`` (class index, when ``labelled``), ``subject_id`` and
    ``session_id``.

    The label is the diagnosis's index in ``class_names``, so labels and names come from one mapping; rows of a
    diagnosis outside ``class_names`` (MCI for ``[CN, AD]``) are left out, counted in the log. Without labels the
    ``diagnosis`` column is ignored (inference needs none; :func:`read_rows`).

    Args:
        manifest: manifest CSV.
        splits: partitions to read (``split`` column); None reads every row and needs no ``split`` column.
        modalities: the modalities the model reads.
        keys: data key per modality (default ``{"mri": "image", "fmri": "series"}``).
        labelled: the workflow needs diagnoses (training, evaluation).
        missing: a row lacking a modality the model reads is ``"drop"``-ped (counted in the log) or an ``"error"``.
        class_names: the classes in label order (the bundle key ``class_names``): two or three of CN, MCI, AD.

    Raises:
        ManifestError: invalid manifest, no ``split`` column when ``splits`` is given, no usable row.
        TRError: an fMRI run without a usable TR.
        BundleKeyError: ``class_names`` that are not two or three distinct names of CN, MCI, AD.
    """
    keys = {**DEFAULT_KEYS, **(keys or {})}
    check_class_names(class_names)
    class_names = list(class_names)
    frame = read_rows(manifest, labelled, require=modalities if missing == "error" else ())
    where = frame.attrs["path"]
    if splits is not None:
        if "split" not in frame.columns:
            raise ManifestError(
                [
                    f"{where}: no 'split' column; this workflow reads rows with split in {list(splits)}. "
                    "Assign folds with `neurofusion split` (it writes one manifest per fold)."
                ]
            )
        frame = frame[frame["split"].isin(splits)]
    if labelled:
        frame = _of_classes(frame, class_names, where)
    complete = frame[[all(row.get(m, "") for m in modalities) for _, row in frame.iterrows()]]
    if len(complete) < len(frame):
        logger.warning(
            "%s: %d of %d rows lack one of %s and are not used",
            where,
            len(frame) - len(complete),
            len(frame),
            modalities,
        )
    if complete.empty:
        raise ManifestError([f"{where}: no row in splits {splits} has all of {list(modalities)}"])
    return [_item(row, modalities, keys, class_names if labelled else None, where) for _, row in complete.iterrows()]


def read_rows(manifest: str | Path, labelled: bool = True, **checks) -> pd.DataFrame:
    """A manifest read and validated for a workflow (:func:`pipeline.data.manifest.load_manifest`); one that needs no
    labels (inference) ignores the ``diagnosis`` column, so a diagnosis it would not use cannot refuse the batch.

    Args:
        manifest: manifest CSV.
        labelled: the workflow needs diagnoses (every row must have a known one).
        checks: further keyword arguments of :func:`~pipeline.data.manifest.validate_manifest`.

    Raises:
        ManifestError: every problem found.
    """
    if labelled:
        return load_manifest(manifest, require_diagnosis=True, **checks)
    frame = read_manifest(manifest).drop(columns="diagnosis", errors="ignore")
    problems = validate_manifest(frame, **checks)  # each item's TR is resolved by manifest_datalist itself
    if problems:
        raise ManifestError(problems)
    return frame


def _of_classes(frame: pd.DataFrame, class_names: Sequence[str], where: str) -> pd.DataFrame:
    """The rows whose diagnosis is one of ``class_names``; the others are counted in the log."""
    kept = frame[frame["diagnosis"].isin(class_names)]
    if len(kept) < len(frame):
        left_out = frame.loc[~frame["diagnosis"].isin(class_names), "diagnosis"].value_counts()
        counts = ", ".join(f"{n} {d}" for d, n in left_out.items())
        logger.warning(
            "%s: %d of %d rows left out: their diagnosis is not one of class_names %s (%s)",
            where,
            len(frame) - len(kept),
            len(frame),
            list(class_names),
            counts,
        )
    return kept


def _item(
    row, modalities: Sequence[str], keys: Mapping[str, str], class_names: Sequence[str] | None, where: str
) -> dict:
    item = {keys[m]: row[m] for m in modalities}
    item["subject_id"] = row["subject_id"]
    item["session_id"] = row.get("session_id", "")
    if "fmri" in modalities:
        try:
            item["tr"] = resolve_tr(row["fmri"], row.get("tr"))
        except TRError as err:
            raise TRError(f"{where}:{row['line']}: {row['subject_id']}: {err}") from None
        if "confounds" in row:
            item["confounds"] = row["confounds"]
    if class_names is not None:
        item["label"] = class_names.index(row["diagnosis"])
    return item


class RecoveringPersistentDataset(PersistentDataset):
    """MONAI's ``PersistentDataset`` whose cache files are written atomically in the cache folder, and which
    recomputes any cache file it cannot load.

    MONAI writes a cache file in the system's temporary folder and moves it into ``cache_dir``; where the two are on
    different file systems the move is a copy, so a run killed during it left a truncated file under the final name
    that failed every later run (``PytorchStreamReader failed reading zip archive``), and two processes sharing the
    cache (a study's parallel fold jobs) could read each other's half-copied file, or remove it while it was being
    copied. Here the file is written to a temporary name beside its final one and renamed, so a reader sees a whole
    file or none; one left unreadable by an older version is recomputed. Arguments are those of
    :class:`monai.data.PersistentDataset`.
    """

    def _cachecheck(self, item_transformed):
        hashfile = self._cache_file(item_transformed)
        if hashfile is not None and hashfile.is_file():
            try:
                return torch.load(hashfile, weights_only=self.weights_only)
            except PermissionError:
                raise
            except (pickle.UnpicklingError, RuntimeError, OSError, EOFError):  # how depends on where a file ends
                logger.warning("%s: unreadable cache file (left by a killed run?); recomputing it", hashfile)
        item = self._pre_transform(deepcopy(item_transformed))  # keep the hashed original
        if hashfile is not None:
            with atomic_path(hashfile, suffix=".pt") as temporary:
                torch.save(
                    convert_to_tensor(item, convert_numeric=False, track_meta=self.track_meta),
                    temporary,
                    pickle_module=look_up_option(self.pickle_module, SUPPORTED_PICKLE_MOD),
                    pickle_protocol=self.pickle_protocol,
                )
        return item

    def _cache_file(self, item_transformed) -> Path | None:
        """Where MONAI keeps the cache of ``item_transformed``."""
        if self.cache_dir is None:
            return None
        return self.cache_dir / f"{self.hash_func(item_transformed).decode('utf-8')}{self.transform_hash}.pt"


def make_dataset(
    data: Sequence[dict],
    transform: Callable,
    cache_rate: float = 1.0,
    cache_dir: str | Path | None = None,
    num_workers: int = 0,
) -> Dataset:
    """A dataset that caches the deterministic prefix of ``transform``.

    With ``cache_dir`` the cache lives on disk (:class:`RecoveringPersistentDataset`, keyed by the item and the
    transform, so a study's folds share it and a changed chain never reads a stale entry; a file a killed run left
    unreadable is recomputed); otherwise ``cache_rate`` of the items are cached in memory (``CacheDataset``);
    ``cache_rate=0`` and no ``cache_dir`` caches nothing.

    Args:
        data: MONAI data list.
        transform: the subject chain.
        cache_rate: fraction cached in memory.
        cache_dir: folder of a persistent cache.
        num_workers: threads filling the in-memory cache.
    """
    if cache_dir:
        return RecoveringPersistentDataset(data, transform, cache_dir=cache_dir, hash_transform=pickle_hashing)
    if cache_rate > 0:
        return CacheDataset(data, transform, cache_rate=cache_rate, num_workers=num_workers or None, progress=False)
    return Dataset(data, transform)
