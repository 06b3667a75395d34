"""Study YAML: what to run (cohorts x models x augmentation x repeated k-fold) and with which bundle overrides.

Keys (documented in ``bundles/experiments/README.md``)::

    name: paper_study
    cohorts:                      # name -> manifest (relative to this YAML), optional models / overrides
      paired: {manifest: ../../runs/demo/cohort/manifest_paired.csv}
      mri_only: {manifest: ..., models: [mri_cnn3d], overrides: {epochs: 4}}
    models: [mri_cnn3d, fmri_lstm, mri_fmri_fusion]   # bundle names under bundles/ (or paths)
    augmentation: [false, true]
    cv: {folds: 5, repeats: 1, seed: 0, val_fraction: 0.2}
    overrides: {epochs: 10}       # bundle keys for every job
    seeds: [0]                    # optional training seeds per fold
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from pipeline.engine import REPO_BUNDLES

STUDY_KEYS = {"name", "description", "cohorts", "models", "augmentation", "cv", "overrides", "seeds"}
COHORT_KEYS = {"manifest", "models", "overrides"}
CV_KEYS = {"folds", "repeats", "seed", "val_fraction"}


class StudyError(ValueError):
    """The study YAML is invalid; the message names the file and key."""


@dataclass(frozen=True)
class Cohort:
    name: str
    manifest: Path
    models: tuple[str, ...]
    overrides: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Study:
    """A parsed study definition."""

    name: str
    path: Path
    cohorts: tuple[Cohort, ...]
    augmentation: tuple[bool, ...]
    folds: int
    repeats: int
    seed: int
    val_fraction: float
    overrides: dict[str, Any]
    seeds: tuple[int, ...]
    text: str

    def bundle_dir(self, model: str) -> Path:
        """Folder of a model's bundle: a name under ``bundles/`` or a path."""
        candidate = Path(model)
        return candidate if candidate.is_dir() else REPO_BUNDLES / model


def _require(mapping: dict, key: str, where: str):
    if key not in mapping:
        raise StudyError(f"{where}: missing key '{key}'")
    return mapping[key]


def _no_unknown(mapping: dict, known: set[str], where: str) -> None:
    unknown = sorted(set(mapping) - known)
    if unknown:
        raise StudyError(f"{where}: unknown key(s) {', '.join(unknown)} (known: {', '.join(sorted(known))})")


def load_study(path: str | Path, manifests: dict[str, str] | None = None) -> Study:
    """Parse and validate a study YAML.

    Args:
        path: the study YAML.
        manifests: cohort name -> manifest path replacing the YAML's (e.g. the demo's freshly synthesised cohort).

    Raises:
        StudyError: unknown or missing keys, bad types, unknown bundles or cohorts.
    """
    path = Path(path)
    if not path.is_file():
        raise StudyError(f"{path}: study file not found")
    text = path.read_text()
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise StudyError(f"{path}: not valid YAML ({err})") from None
    if not isinstance(raw, dict):
        raise StudyError(f"{path}: expected a mapping of study keys")
    _no_unknown(raw, STUDY_KEYS, str(path))
    models = tuple(_require(raw, "models", str(path)))
    cv = dict(_require(raw, "cv", str(path)))
    _no_unknown(cv, CV_KEYS, f"{path}: cv")
    cohorts = _parse_cohorts(path, _require(raw, "cohorts", str(path)), models, manifests or {})
    study = Study(
        name=str(raw.get("name", path.stem)),
        path=path,
        cohorts=cohorts,
        augmentation=tuple(bool(a) for a in raw.get("augmentation", [False])),
        folds=int(_require(cv, "folds", f"{path}: cv")),
        repeats=int(cv.get("repeats", 1)),
        seed=int(cv.get("seed", 0)),
        val_fraction=float(cv.get("val_fraction", 0.2)),
        overrides=dict(raw.get("overrides") or {}),
        seeds=tuple(int(s) for s in raw.get("seeds", [0])),
        text=text,
    )
    for cohort in study.cohorts:
        for model in cohort.models:
            if not (study.bundle_dir(model) / "configs" / "train.yaml").is_file():
                raise StudyError(f"{path}: cohort {cohort.name}: unknown bundle '{model}' (no configs/train.yaml)")
    return study


def _parse_cohorts(path: Path, raw: Any, models: tuple[str, ...], manifests: dict[str, str]) -> tuple[Cohort, ...]:
    if not isinstance(raw, dict) or not raw:
        raise StudyError(f"{path}: 'cohorts' must map cohort names to {{manifest: ...}}")
    unknown = sorted(set(manifests) - set(raw))
    if unknown:
        raise StudyError(f"{path}: no cohort named {', '.join(unknown)} (cohorts: {', '.join(raw)})")
    cohorts = []
    for name, entry in raw.items():
        where = f"{path}: cohorts.{name}"
        entry = {"manifest": entry} if isinstance(entry, str) else dict(entry or {})
        _no_unknown(entry, COHORT_KEYS, where)
        manifest = Path(manifests.get(name) or _require(entry, "manifest", where))
        if name not in manifests and not manifest.is_absolute():
            manifest = (path.parent / manifest).resolve()
        cohort_models = tuple(entry.get("models", models))
        cohorts.append(Cohort(name, manifest, cohort_models, dict(entry.get("overrides") or {})))
    return tuple(cohorts)
