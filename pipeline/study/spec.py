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
    baselines: true               # optional: scikit-learn baselines and the ceiling in the same folds
    transfer:                     # optional: start a cohort's MRI encoders from one pretrained on another cohort
      paired: {from: mri_only, model: mri_cnn3d, modes: [none, finetune], exclude_shared: false}

``baselines`` (default false) is true (every name below), false, or a list of names: ``mri``, ``fmri``, ``fused``
(a scikit-learn model of those inputs for each cohort whose models read them: PCA + logistic regression on the
preprocessed T1's voxels, logistic regression on the ROI correlations, both concatenated) and ``ceiling`` (logistic
regression on the planted severities, for a cohort with a ``synth_truth.tsv`` beside its manifest). Each is fitted
on the training partition of every fold (validation included) and scored on its test fold:
:mod:`pipeline.study.baselines`.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

from pipeline.engine import REPO_BUNDLES
from pipeline.engine.keys import bundle_key_problem
from pipeline.io import load_yaml

STUDY_KEYS = {
    "name", "description", "cohorts", "models", "augmentation", "cv", "overrides", "seeds", "baselines", "transfer",
}  # fmt: skip
COHORT_KEYS = {"manifest", "models", "overrides"}
CV_KEYS = {"folds", "repeats", "seed", "val_fraction"}
#: a cohort name becomes a folder of the run (``folds/<cohort>/``): a plain name, never a path
COHORT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
#: names of ``baselines``: a reference model per input set, and the ceiling of a synthetic cohort
BASELINE_NAMES = ("mri", "fmri", "fused", "ceiling")
TRANSFER_KEYS = {"from", "model", "modes", "exclude_shared"}
#: values of a transfer's ``modes``: trained from scratch, started from the pretrained encoder, and that kept fixed
TRANSFER_MODES = ("none", "finetune", "frozen")
#: the bundle key through which a network's MRI encoder is loaded (:func:`pipeline.networks.load_mri_encoder`)
ENCODER_KEY = "mri_encoder_weights"


class StudyError(ValueError):
    """The study YAML is invalid; the message names the file and key."""


@dataclass(frozen=True)
class Cohort:
    name: str
    manifest: Path
    models: tuple[str, ...]
    overrides: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Transfer:
    """Start ``target``'s MRI encoders from ``model`` pretrained on cohort ``source``, in each of ``modes``."""

    target: str
    source: str
    model: str
    modes: tuple[str, ...]
    exclude_shared: bool = False


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
    baselines: tuple[str, ...] = ()
    transfer: tuple[Transfer, ...] = ()

    def bundle_dir(self, model: str) -> Path:
        """Folder of a model's bundle: a name under ``bundles/`` or a path."""
        candidate = Path(model)
        return candidate if candidate.is_dir() else REPO_BUNDLES / model

    def takes_mri_encoder(self, model: str) -> bool:
        """Whether a model's bundle can start from a pretrained MRI encoder (its ``train.yaml`` has the key)."""
        return _has_top_level_key(self.bundle_dir(model) / "configs" / "train.yaml", ENCODER_KEY)

    def models_of(self, cohort: str | None = None) -> set[str]:
        """The bundles that read a cohort's keys (its models and the model pretrained on it), or every cohort's."""
        cohorts = [c for c in self.cohorts if cohort is None or c.name == cohort]
        pretrained = {t.model for t in self.transfer if cohort is None or t.source == cohort}
        return {m for c in cohorts for m in c.models} | pretrained

    def check_keys_known(self, overrides: dict[str, Any], models: set[str], where: str) -> None:
        """Refuse an override that none of ``models``' ``train.yaml`` has at its top level (a config id ``a#b`` by
        its ``a``): MONAI's parser would add it to the config unread, so a misspelt key changed nothing."""
        configs = [self.bundle_dir(m) / "configs" / "train.yaml" for m in sorted(models)]
        for key in overrides:
            if not any(_has_top_level_key(config, str(key).split("#")[0]) for config in configs):
                raise StudyError(
                    f"{where}: {key!r} is not a key of {' or '.join(sorted(models))} (configs/train.yaml), so it "
                    "would change nothing"
                )

    def transfer_to(self, cohort: str) -> Transfer | None:
        """The transfer into ``cohort``, if the study has one."""
        return next((t for t in self.transfer if t.target == cohort), None)


@functools.lru_cache(maxsize=64)
def _has_top_level_key(config: Path, key: str) -> bool:
    parsed = load_yaml(config.read_text())
    return isinstance(parsed, dict) and key in parsed


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
        raw = load_yaml(text)
    except yaml.YAMLError as err:
        raise StudyError(f"{path}: not valid YAML ({err})") from None
    if not isinstance(raw, dict):
        raise StudyError(f"{path}: expected a mapping of study keys")
    _no_unknown(raw, STUDY_KEYS, str(path))
    models = tuple(_names(_require(raw, "models", str(path)), f"{path}: models"))
    cv = _mapping(_require(raw, "cv", str(path)), f"{path}: cv")
    _no_unknown(cv, CV_KEYS, f"{path}: cv")
    cohorts = _parse_cohorts(path, _require(raw, "cohorts", str(path)), models, manifests or {})
    overrides = check_overrides(raw.get("overrides"), f"{path}: overrides")
    study = Study(
        name=str(raw.get("name", path.stem)),
        path=path,
        cohorts=cohorts,
        augmentation=tuple(
            _listed(raw.get("augmentation", [False]), _is_bool, "true or false", f"{path}: augmentation")
        ),
        folds=_integer(_require(cv, "folds", f"{path}: cv"), 2, f"{path}: cv.folds"),
        repeats=_integer(cv.get("repeats", 1), 1, f"{path}: cv.repeats"),
        seed=_integer(cv.get("seed", 0), 0, f"{path}: cv.seed"),
        val_fraction=_fraction(cv.get("val_fraction", 0.2), f"{path}: cv.val_fraction"),
        overrides=overrides,
        seeds=tuple(
            _integer(s, 0, f"{path}: seeds") for s in _listed(raw.get("seeds", [0]), None, "", f"{path}: seeds")
        ),
        text=text,
        baselines=_baselines(raw.get("baselines", False), f"{path}: baselines"),
    )
    for cohort in study.cohorts:
        for model in cohort.models:
            if not (study.bundle_dir(model) / "configs" / "train.yaml").is_file():
                raise StudyError(f"{path}: cohort {cohort.name}: unknown bundle '{model}' (no configs/train.yaml)")
    study = replace(study, transfer=_parse_transfer(study, raw.get("transfer")))
    sources = {t.source for t in study.transfer}
    for cohort in study.cohorts:
        if not cohort.models and cohort.name not in sources:
            raise StudyError(f"{path}: cohorts.{cohort.name}: no models, and no cohort's transfer comes from it")
        where = f"{path}: cohorts.{cohort.name}.overrides"
        study.check_keys_known(cohort.overrides, study.models_of(cohort.name), where)
    study.check_keys_known(study.overrides, study.models_of(), f"{path}: overrides")
    return study


def with_repeats(study: Study, repeats: int | None) -> Study:
    """``study`` with ``repeats`` repetitions of its cross-validation in place of the YAML's ``cv.repeats`` (None:
    unchanged; the run folder's ``study.yaml`` says so). Repeat r's folds do not depend on how many repeats there
    are, so re-running a finished run folder with more repeats keeps its jobs and adds the new repeats'.

    Raises:
        StudyError: fewer than one repeat.
    """
    if repeats is None:
        return study
    if repeats < 1:
        raise StudyError(f"--repeats must be at least 1, got {repeats}")
    text = f"{study.text.rstrip()}\n# run with --repeats {repeats}: cv.repeats replaced\n"
    return replace(study, repeats=repeats, text=text)


def _parse_transfer(study: Study, raw: Any) -> tuple[Transfer, ...]:
    """The ``transfer`` key: target cohort -> ``{from, model, modes, exclude_shared}`` (module docstring)."""
    where = f"{study.path}: transfer"
    names = {c.name: c for c in study.cohorts}
    transfers = []
    for target, entry in _mapping(raw or {}, where).items():
        here = f"{where}.{target}"
        if target not in names:
            raise StudyError(f"{here}: no cohort named {target} (cohorts: {', '.join(names)})")
        entry = _mapping(entry, here)
        _no_unknown(entry, TRANSFER_KEYS, here)
        source = _require(entry, "from", here)
        if source not in names or source == target:
            others = ", ".join(n for n in names if n != target) or "none"
            raise StudyError(f"{here}.from: must name another cohort of the study (cohorts: {others}), got {source!r}")
        model = entry.get("model", "mri_cnn3d")
        if not isinstance(model, str) or not (study.bundle_dir(model) / "configs" / "train.yaml").is_file():
            raise StudyError(f"{here}.model: unknown bundle {model!r} (no configs/train.yaml)")
        if not study.takes_mri_encoder(model):
            raise StudyError(f"{here}.model: {model} has no MRI encoder to pretrain (mri_cnn3d or mri_fmri_fusion)")
        expected = f"one of {', '.join(TRANSFER_MODES)}"
        modes = tuple(
            dict.fromkeys(
                _listed(entry.get("modes", ["finetune"]), TRANSFER_MODES.__contains__, expected, f"{here}.modes")
            )
        )
        if not modes:
            raise StudyError(f"{here}.modes: list at least one of {', '.join(TRANSFER_MODES)}")
        if not any(study.takes_mri_encoder(m) for m in names[target].models):
            raise StudyError(
                f"{here}: none of cohort {target}'s models ({', '.join(names[target].models) or 'none'}) reads an "
                "MRI encoder (mri_cnn3d, mri_fmri_fusion)"
            )
        exclude = entry.get("exclude_shared", False)
        if not isinstance(exclude, bool):
            raise StudyError(f"{here}.exclude_shared: must be true or false, got {exclude!r}")
        transfers.append(Transfer(target, source, model, modes, exclude))
    return tuple(transfers)


def _mapping(value: Any, where: str) -> dict:
    if not isinstance(value, dict):
        raise StudyError(f"{where}: expected a mapping, got {value!r}")
    return dict(value)


def _is_bool(value: Any) -> bool:
    return isinstance(value, bool)


def _listed(value: Any, test, expected: str, where: str) -> list:
    """A YAML list (a single value is a list of one) whose items pass ``test``."""
    items = value if isinstance(value, list) else [value]
    for item in items:
        if test is not None and not test(item):
            raise StudyError(f"{where}: each item must be {expected}, got {item!r}")
    return items


def _names(value: Any, where: str) -> list[str]:
    return _listed(value, lambda v: isinstance(v, str) and v != "", "a bundle name or folder", where)


def _baselines(value: Any, where: str) -> tuple[str, ...]:
    """``true`` (every baseline and the ceiling), ``false`` (none) or a list of :data:`BASELINE_NAMES`."""
    if isinstance(value, bool):
        return BASELINE_NAMES if value else ()
    names = _listed(value, lambda v: v in BASELINE_NAMES, f"true, false or one of {', '.join(BASELINE_NAMES)}", where)
    return tuple(dict.fromkeys(names))


def _integer(value: Any, low: int, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise StudyError(f"{where}: must be an integer >= {low}, got {value!r}")
    return value


def _fraction(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1:
        raise StudyError(f"{where}: must be a number from 0 up to 1, got {value!r}")
    return float(value)


def check_overrides(value: Any, where: str) -> dict[str, Any]:
    """Bundle keys of a study or cohort, each value checked against the key's type (``epochs: "5"`` is refused)."""
    overrides = _mapping(value or {}, where)
    for key, item in overrides.items():
        problem = bundle_key_problem(str(key), item)
        if problem:
            raise StudyError(f"{where}: {problem}")
    return overrides


def _parse_cohorts(path: Path, raw: Any, models: tuple[str, ...], manifests: dict[str, str]) -> tuple[Cohort, ...]:
    if not isinstance(raw, dict) or not raw:
        raise StudyError(f"{path}: 'cohorts' must map cohort names to {{manifest: ...}}")
    unknown = sorted(set(manifests) - set(raw))
    if unknown:
        raise StudyError(f"{path}: no cohort named {', '.join(unknown)} (cohorts: {', '.join(raw)})")
    cohorts = []
    for name, entry in raw.items():
        where = f"{path}: cohorts.{name}"
        if not isinstance(name, str) or not COHORT_NAME.fullmatch(name):
            raise StudyError(
                f"{where}: a cohort name names a folder of the run: letters, digits, '_', '-', '.', not a path"
            )
        entry = {"manifest": entry} if isinstance(entry, str) else _mapping(entry or {}, where)
        _no_unknown(entry, COHORT_KEYS, where)
        manifest = Path(manifests.get(name) or _require(entry, "manifest", where))
        if name not in manifests and not manifest.is_absolute():
            manifest = (path.parent / manifest).resolve()
        cohort_models = tuple(_names(entry.get("models", list(models)), f"{where}.models"))
        overrides = check_overrides(entry.get("overrides"), f"{where}.overrides")
        cohorts.append(Cohort(name, manifest, cohort_models, overrides))
    return tuple(cohorts)
