"""Scikit-learn baselines and the ceiling of a study, fitted in the same folds as its deep models.

Every cohort gets one *reference* model per set of inputs its models read (``mri``, ``fmri`` or ``fused``, from the
bundles' input modalities in ``plan.csv``):

- ``baseline:mri``: StandardScaler, PCA (``min(30, n_train - 1)`` components) and logistic regression on the voxels
  of the T1 as the bundle's deterministic MRI chain produces it, average-pooled by 2;
- ``baseline:fmri``: StandardScaler and logistic regression on the Fisher-z upper triangle of the correlation matrix
  of the cleaned ROI series the bundle's fMRI chain produces;
- ``baseline:fused``: both blocks side by side, each scaled (the T1's through its PCA), one logistic regression;
- ``ceiling:<inputs>``: for a cohort with a ``synth_truth.tsv`` beside its manifest (``neurofusion synth``),
  StandardScaler and logistic regression on the planted severities those inputs carry (``structural_severity`` for
  the T1, ``functional_severity`` for the fMRI, both when fused): about the best a model of them can do.

Each is fitted on the training partition of a fold manifest (``split`` train or val: everything the deep model saw)
and scored on the fold's test rows only. Scalers and PCA sit inside the fitted pipeline, so nothing is learned from
a test row. The chains take their keyword arguments from the bundle's effective keys (``configs/train.yaml`` with
the keys a deep job of the cohort runs with) through :data:`KEY_ALIASES` and the rule ``mri_X`` -> ``X``. Run
folder::

    RUN/baselines.csv                                     every planned reference fold job
    RUN/cache/baselines/<cohort>_<mri|fmri>_<hash>.npz    features per manifest row (hash: the chain's arguments)
    RUN/folds/<cohort>/repeat-R_fold-F/<baseline-mri|ceiling-fused>/   eval/predictions.csv, done.json

Like a deep fold job, a reference job is finished when its ``done.json`` exists; features are cached as they are
computed, so an interrupted run resumes where it stopped.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import time
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm import tqdm

import pipeline
from pipeline import CLASS_NAMES
from pipeline.data.manifest import manifest_sha256, read_manifest
from pipeline.engine.metrics import classification_metrics
from pipeline.io import atomic_path, atomic_write_json, atomic_write_text
from pipeline.study.runner import (
    JOB_COLUMNS,
    Job,
    bundle_modalities,
    cohort_overrides,
    git_state,
    in_fresh_folder,
)
from pipeline.study.spec import Cohort, Study
from pipeline.study.stats import class_indices

TRUTH = "synth_truth.tsv"
PLAN = "baselines.csv"
CACHE = Path("cache") / "baselines"
#: input modality of a bundle (its ``metadata.json``, ``plan.csv``) -> chain (and manifest column)
CHAINS = {"MR": "mri", "fMRI": "fmri"}
#: input set -> the chains it reads
INPUTS = {"mri": ("mri",), "fmri": ("fmri",), "fused": ("mri", "fmri")}
#: chain -> planted severity of ``synth_truth.tsv`` that its images carry
SEVERITIES = {"mri": "structural_severity", "fmri": "functional_severity"}
#: bundle key -> (chain, keyword of its steps function) where the rule ``mri_X`` / ``fmri_X`` -> ``X`` does not apply
KEY_ALIASES = {
    "atlas": ("fmri", "atlas"),
    "high_pass": ("fmri", "high_pass"),
    "low_pass": ("fmri", "low_pass"),
    "fmri_confounds": ("fmri", "confounds_columns"),
}
#: keywords a baseline sets itself: the deterministic chain (no augmentation) and, for the fMRI, its ROI series
NOT_FORWARDED = {"keys", "train", "augment", "augmentation"}
FIXED = {"mri": {}, "fmri": {"sequence": "roi"}}
#: data key of each chain's output
DATA_KEYS = {"mri": "image", "fmri": "series"}
PCA_COMPONENTS = 30
BASELINE_C = 0.1  # inverse L2 strength: strong shrinkage for thousands of features and tens of subjects
CEILING_C = 1.0
SAVE_EVERY = 32  # subjects between cache writes while features are computed


@dataclass(frozen=True)
class ReferenceJob(Job):
    """One fit + test of a baseline or ceiling (``model`` ``baseline:<inputs>`` or ``ceiling:<inputs>``) on a fold."""

    @property
    def kind(self) -> str:
        return self.model.split(":")[0]

    @property
    def inputs(self) -> str:
        return self.model.split(":")[1]

    @property
    def job_dir(self) -> Path:
        return self.fold_dir / self.model.replace(":", "-")


def reference_inputs(modalities: str) -> str | None:
    """Input set (``mri``, ``fmri``, ``fused``) of a bundle's modalities as ``plan.csv`` has them (``MR+fMRI``);
    None for an input without a baseline."""
    chains = [CHAINS.get(m) for m in str(modalities).split("+")]
    if None in chains:
        return None
    return "fused" if len(set(chains)) > 1 else chains[0]


def model_kind(model: str) -> str:
    """``baseline``, ``ceiling`` or ``model`` (a deep model's bundle) of a ``model`` column value."""
    kind = str(model).split(":")[0]
    return kind if kind in ("baseline", "ceiling") and ":" in str(model) else "model"


def truth_table(cohort: Cohort) -> Path:
    """Where a cohort's planted truth would be: ``synth_truth.tsv`` beside its manifest."""
    return cohort.manifest.parent / TRUTH


def _cohort_inputs(study: Study, cohort: Cohort) -> dict[str, str]:
    """Input set -> the first of the cohort's models reading it (whose bundle keys build the features)."""
    found = {}
    for model in cohort.models:
        inputs = reference_inputs(bundle_modalities(study.bundle_dir(model)))
        if inputs is not None:
            found.setdefault(inputs, model)
    return found


def plan_references(study: Study) -> list[ReferenceJob]:
    """Every reference fold job of the study, in a fixed order: per cohort and split, the baselines ``baselines``
    names for the input sets of the cohort's models, then their ceilings (cohorts with a truth table)."""
    jobs = []
    for cohort in study.cohorts:
        inputs = list(_cohort_inputs(study, cohort))
        names = [f"baseline:{i}" for i in inputs if i in study.baselines]
        if "ceiling" in study.baselines and truth_table(cohort).is_file():
            names += [f"ceiling:{i}" for i in inputs]
        jobs += [
            ReferenceJob(cohort.name, name, False, repeat, fold, 0)
            for repeat in range(study.repeats)
            for fold in range(study.folds)
            for name in names
        ]
    return jobs


def write_references(study: Study, out: Path) -> list[ReferenceJob]:
    """Write ``RUN/baselines.csv`` (header only when the study has none) and return the planned reference jobs."""
    jobs = plan_references(study)
    frame = pd.DataFrame([asdict(job) for job in jobs], columns=JOB_COLUMNS)
    atomic_write_text(out / PLAN, frame.to_csv(index=False))
    return jobs


def load_references(out: Path) -> list[ReferenceJob]:
    """The planned reference jobs of a run folder (none for a run without ``baselines.csv``)."""
    path = Path(out) / PLAN
    if not path.is_file():
        return []
    rows = pd.read_csv(path, dtype={"cohort": str, "model": str}).to_dict("records")
    return [ReferenceJob(**{**row, "augment": bool(row["augment"])}) for row in rows]


# --- features -------------------------------------------------------------------------------------------


def _keyword(key: str) -> tuple[str | None, str]:
    """(chain, keyword) a bundle key may set: :data:`KEY_ALIASES`, else ``mri_X`` / ``fmri_X`` -> ``X``."""
    if key in KEY_ALIASES:
        return KEY_ALIASES[key]
    chain, _, keyword = key.partition("_")
    return (chain, keyword) if chain in FIXED and keyword else (None, "")


def chain_options(bundle_dir: Path, overrides: Mapping) -> dict[str, dict]:
    """Keyword arguments of the bundle's deterministic MRI and fMRI steps, from its effective keys.

    A top-level key of ``configs/train.yaml`` (after ``overrides``) is forwarded when :func:`_keyword` maps it to a
    keyword that :func:`~pipeline.transforms.mri_steps` / :func:`~pipeline.transforms.fmri_steps` accepts, so a new
    keyword of a chain (``mri_registration`` -> ``registration``) reaches the baselines without a change here.

    Args:
        bundle_dir: the bundle folder.
        overrides: the study's and the cohort's bundle keys.

    Returns:
        ``{"mri": {...}, "fmri": {...}}``, with :data:`FIXED` applied.
    """
    from monai.bundle import ConfigParser

    from pipeline.transforms import fmri_steps, mri_steps

    accepted = {
        chain: set(inspect.signature(steps).parameters) - NOT_FORWARDED
        for chain, steps in (("mri", mri_steps), ("fmri", fmri_steps))
    }
    parser = ConfigParser()
    parser.read_config(str(Path(bundle_dir) / "configs" / "train.yaml"))
    parser.update(dict(overrides))
    options = {chain: {} for chain in FIXED}
    for key in parser.get():
        chain, keyword = _keyword(str(key))
        if chain is not None and keyword in accepted[chain]:
            options[chain][keyword] = parser.get_parsed_content(key)
    return {chain: {**options[chain], **FIXED[chain]} for chain in FIXED}


def mri_features(image) -> np.ndarray:
    """Voxels of a preprocessed T1 (``[1, X, Y, Z]``) average-pooled by 2, as one vector."""
    import torch

    volume = torch.as_tensor(image, dtype=torch.float32)[None]
    return torch.nn.functional.avg_pool3d(volume, 2).reshape(-1).numpy()


def fmri_features(series) -> np.ndarray:
    """Fisher-z upper triangle (diagonal excluded) of the ROI correlation matrix of a cleaned series ``[R, T]``.

    A flat ROI (no signal) correlates 0 with every other.
    """
    series = np.asarray(series, dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        correlations = np.nan_to_num(np.corrcoef(series), nan=0.0)
    upper = correlations[np.triu_indices(len(correlations), k=1)]
    return np.arctanh(np.clip(upper, -0.999999, 0.999999)).astype(np.float32)


EXTRACT = {"mri": mri_features, "fmri": fmri_features}


def row_key(subject_id: str, session_id: str, path: str) -> str:
    """Cache key of one manifest row's image: subject, session and file (a changed manifest is recomputed)."""
    return f"{subject_id}\t{session_id}\t{path}"


class FeatureStore:
    """Features of one chain for the rows of one cohort, computed once and cached in the run folder.

    Args:
        out: run folder.
        cohort: cohort name.
        chain: ``mri`` or ``fmri``.
        options: keyword arguments of the chain (:func:`chain_options`); their hash names the cache file.
        progress: progress bar while features are computed.
    """

    def __init__(self, out: Path, cohort: str, chain: str, options: Mapping, progress: bool = False) -> None:
        digest = hashlib.sha256(json.dumps(options, sort_keys=True, default=str).encode()).hexdigest()[:12]
        self.path = Path(out) / CACHE / f"{cohort}_{chain}_{digest}.npz"
        self.chain, self.options, self.progress = chain, dict(options), progress
        self.features = self._load()

    def _load(self) -> dict[str, np.ndarray]:
        if not self.path.is_file():
            return {}
        with np.load(self.path) as cached:
            return dict(zip(cached["keys"].tolist(), cached["features"]))

    def _save(self) -> None:
        with atomic_path(self.path, suffix=".npz") as tmp:
            np.savez(tmp, keys=np.array(list(self.features)), features=np.stack(list(self.features.values())))

    def matrix(self, manifest: Path, rows: pd.DataFrame) -> np.ndarray:
        """Features of ``rows`` (of ``manifest``, as :func:`~pipeline.data.manifest.read_manifest` reads it), one row
        each; missing ones are computed from the manifest's data list (the same items the bundles read) and cached."""
        keys = [row_key(*values) for values in rows[["subject_id", "session_id", self.chain]].to_numpy()]
        if any(key not in self.features for key in keys):
            self._compute(manifest, set(keys) - set(self.features))
        return np.stack([self.features[key] for key in keys])

    def _compute(self, manifest: Path, wanted: set[str]) -> None:
        from pipeline.data.datasets import manifest_datalist
        from pipeline.transforms import subject_transforms

        data_key = DATA_KEYS[self.chain]
        items = manifest_datalist(manifest, None, [self.chain])
        items = [i for i in items if row_key(i["subject_id"], i["session_id"], i[data_key]) in wanted]
        transform = subject_transforms([self.chain], train=False, **{self.chain: self.options})
        desc = f"{self.path.stem.rsplit('_', 1)[0]} baseline features"
        for count, item in enumerate(tqdm(items, desc=desc, unit="subject", disable=not self.progress), start=1):
            key = row_key(item["subject_id"], item["session_id"], item[data_key])
            self.features[key] = EXTRACT[self.chain](transform(item)[data_key])
            if count % SAVE_EVERY == 0:
                self._save()
        self._save()


def severities(truth: Path, rows: pd.DataFrame, inputs: str) -> np.ndarray:
    """Planted severities of ``rows``' subjects that the input set carries (:data:`SEVERITIES`), one row each.

    Raises:
        ValueError: the truth table lacks a column, a subject or a value; the message names the file.
    """
    table = pd.read_csv(truth, sep="\t", dtype={"participant_id": str}).set_index("participant_id")
    columns = [SEVERITIES[chain] for chain in INPUTS[inputs]]
    missing = [c for c in columns if c not in table.columns]
    missing += sorted(set(rows["subject_id"]) - set(table.index))
    if missing:
        raise ValueError(f"{truth}: no {', '.join(missing)} (needed by the ceiling of {inputs} models)")
    values = table.loc[rows["subject_id"], columns].to_numpy(dtype=np.float64)
    if not np.isfinite(values).all():
        raise ValueError(f"{truth}: a blank or non-numeric {' or '.join(columns)} of a subject in the cohort")
    return values


# --- fitting ----------------------------------------------------------------------------------------------


def reference_model(blocks: Sequence[tuple[str, int]], n_train: int, c: float = BASELINE_C):
    """Blocks of feature columns side by side, each standardised (``mri`` blocks then reduced by PCA), followed by
    a multinomial logistic regression with balanced class weights.

    Args:
        blocks: (name, width) of consecutive column blocks: ``mri``, ``fmri`` or ``severity``.
        n_train: training rows (PCA keeps ``min(30, n_train - 1)`` components, at most the block's width).
        c: inverse L2 regularisation strength of the logistic regression.
    """
    from sklearn.compose import ColumnTransformer
    from sklearn.decomposition import PCA
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline, make_pipeline
    from sklearn.preprocessing import StandardScaler

    columns, start = [], 0
    for name, width in blocks:
        scaler = StandardScaler()
        if name == "mri":
            components = max(1, min(PCA_COMPONENTS, n_train - 1, width))
            scaler = make_pipeline(scaler, PCA(n_components=components, random_state=0))
        columns.append((name, scaler, list(range(start, start + width))))
        start += width
    classifier = LogisticRegression(C=c, class_weight="balanced", max_iter=5000)
    return Pipeline([("features", ColumnTransformer(columns)), ("classifier", classifier)])


def predict_test(model, features: np.ndarray, labels: np.ndarray, train: np.ndarray) -> np.ndarray:
    """Fit ``model`` on the training rows only; class probabilities of every other row.

    Args:
        model: a scikit-learn classifier (:func:`reference_model`).
        features: one row per manifest row.
        labels: class index (position in ``CLASS_NAMES``) per row.
        train: boolean mask of the training rows; the rest are scored.

    Returns:
        ``[n_test, len(CLASS_NAMES)]`` probabilities (0 for a class without training rows).
    """
    train = np.asarray(train, dtype=bool)
    probabilities = np.zeros((int((~train).sum()), len(CLASS_NAMES)))
    classes = np.unique(labels[train])
    if len(classes) == 1:  # nothing to learn: the one class seen
        probabilities[:, classes[0]] = 1.0
        return probabilities
    model.fit(features[train], labels[train])
    probabilities[:, model.classes_] = model.predict_proba(features[~train])
    return probabilities


def _usable_rows(manifest: Path, inputs: str) -> pd.DataFrame:
    """Rows of a fold manifest with every chain of the input set (the rows the deep models' data lists keep)."""
    frame = read_manifest(manifest)
    chains = INPUTS[inputs]
    keep = [all(str(row.get(chain, "")).strip() for chain in chains) for _, row in frame.iterrows()]
    return frame[keep].reset_index(drop=True)


class References:
    """Runs the reference jobs of one study into a run folder, sharing features across jobs.

    Args:
        study: parsed study.
        out: run folder (fold manifests written).
        progress: progress bars.
    """

    def __init__(self, study: Study, out: Path, progress: bool = False) -> None:
        self.study, self.out, self.progress = study, Path(out), progress
        self.stores: dict[tuple[str, str, str], FeatureStore] = {}
        self.options: dict[tuple[str, str], dict[str, dict]] = {}
        self.provenance = {
            "neurofusion_version": pipeline.__version__,
            "sklearn_version": _sklearn_version(),
            **git_state(),
        }

    def _cohort(self, name: str) -> Cohort:
        return next(c for c in self.study.cohorts if c.name == name)

    def _store(self, cohort: Cohort, chain: str, model: str) -> FeatureStore:
        if (cohort.name, model) not in self.options:
            overrides = cohort_overrides(self.study, cohort, self.out)
            self.options[(cohort.name, model)] = chain_options(self.study.bundle_dir(model), overrides)
        options = self.options[(cohort.name, model)][chain]
        key = (cohort.name, chain, json.dumps(options, sort_keys=True, default=str))
        if key not in self.stores:
            self.stores[key] = FeatureStore(self.out, cohort.name, chain, options, self.progress)
        return self.stores[key]

    def features(self, job: ReferenceJob, manifest: Path, rows: pd.DataFrame) -> tuple[np.ndarray, list]:
        """Feature matrix of ``rows`` for the job and its column blocks [(name, width)]."""
        cohort = self._cohort(job.cohort)
        if job.kind == "ceiling":
            values = severities(truth_table(cohort), rows, job.inputs)
            return values, [("severity", values.shape[1])]
        model = _cohort_inputs(self.study, cohort)[job.inputs]
        parts = [self._store(cohort, chain, model).matrix(manifest, rows) for chain in INPUTS[job.inputs]]
        return np.hstack(parts), [(chain, part.shape[1]) for chain, part in zip(INPUTS[job.inputs], parts)]

    def run(self, job: ReferenceJob) -> dict:
        """Fit and test one reference job; writes ``eval/predictions.csv`` then ``done.json``."""
        return in_fresh_folder(self.out / job.job_dir, lambda: self._fit_and_test(job))

    def _fit_and_test(self, job: ReferenceJob) -> dict:
        manifest = self.out / job.fold_dir / "manifest.csv"
        rows = _usable_rows(manifest, job.inputs)
        features, blocks = self.features(job, manifest, rows)
        started = time.perf_counter()
        train = (rows["split"] != "test").to_numpy()
        labels = class_indices(rows["diagnosis"])
        c = CEILING_C if job.kind == "ceiling" else BASELINE_C
        probabilities = predict_test(reference_model(blocks, int(train.sum()), c), features, labels, train)
        predictions = _predictions(rows[~train], probabilities)
        atomic_write_text(self.out / job.job_dir / "eval" / "predictions.csv", predictions.to_csv(index=False))
        row = {**asdict(job), "study": self.study.name, "kind": job.kind}
        row.update({f"n_{s}": int((rows["split"] == s).sum()) for s in ("train", "val", "test")})
        row.update(classification_metrics(labels[~train], probabilities, len(CLASS_NAMES)))
        row.update(n_features=int(features.shape[1]), train_seconds=round(time.perf_counter() - started, 2))
        row.update(self.provenance, manifest_sha256=manifest_sha256(self._cohort(job.cohort).manifest))
        atomic_write_json(self.out / job.job_dir / "done.json", row)
        return row


def _predictions(rows: pd.DataFrame, probabilities: np.ndarray) -> pd.DataFrame:
    """Test predictions in the columns of a deep job's ``eval/predictions.csv``."""
    frame = rows[["subject_id", "session_id"]].reset_index(drop=True)
    for index, name in enumerate(CLASS_NAMES):
        frame[f"prob_{name}"] = probabilities[:, index]
    frame["predicted"] = [CLASS_NAMES[i] for i in probabilities.argmax(axis=1)]
    frame["diagnosis"] = rows["diagnosis"].to_numpy()
    return frame


def _sklearn_version() -> str:
    import sklearn

    return sklearn.__version__


def run_references(study: Study, out: Path, jobs: Sequence[ReferenceJob], progress: bool = True) -> None:
    """Run the given reference jobs (those without ``done.json``) of ``study`` into the run folder ``out``."""
    todo = [job for job in jobs if not (Path(out) / job.job_dir / "done.json").exists()]
    references = References(study, out, progress)
    for job in tqdm(todo, desc=f"{study.name} baselines", unit="job", disable=not progress or not todo):
        references.run(job)
