"""Cross-validated study runner: every cohort x model x augmentation x repeat x fold trains and tests a bundle.

Layout of a run folder::

    RUN/study.yaml                         copy of the study definition
    RUN/plan.csv                           every fold job of the study
    RUN/folds/<cohort>/folds.csv           subject -> (repeat, fold)
    RUN/folds/<cohort>/repeat-R_fold-F/manifest.csv          the fold's manifest (split column)
    RUN/folds/<cohort>/repeat-R_fold-F/<model>_aug-<on|off>_seed-S/   one job: ckpt/, eval/, log.txt, done.json
    RUN/results.csv, RUN/predictions.csv, RUN/summary.csv, RUN/report.md, RUN/report.html

A job is finished when its ``done.json`` exists (written last, atomically); re-running skips finished jobs and
redoes unfinished ones from scratch, so a killed job is never half-counted.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import pandas as pd
from tqdm import tqdm

import pipeline
from pipeline.engine.metrics import classification_metrics
from pipeline.engine.workflow import run_bundle
from pipeline.io import atomic_write_json, atomic_write_text
from pipeline.manifest import assign_folds, check_no_leakage, fold_manifest, load_manifest, manifest_sha256
from pipeline.study.spec import Study

JOB_COLUMNS = ["cohort", "model", "augment", "repeat", "fold", "seed"]


@dataclass(frozen=True)
class Job:
    """One training + test evaluation of one bundle on one fold."""

    cohort: str
    model: str
    augment: bool
    repeat: int
    fold: int
    seed: int

    @property
    def fold_dir(self) -> Path:
        return Path("folds") / self.cohort / f"repeat-{self.repeat}_fold-{self.fold}"

    @property
    def job_dir(self) -> Path:
        name = Path(self.model).name
        return self.fold_dir / f"{name}_aug-{'on' if self.augment else 'off'}_seed-{self.seed}"


def plan_jobs(study: Study) -> list[Job]:
    """Every job of the study in a fixed order (the order shards are cut from)."""
    return [
        Job(cohort.name, model, augment, repeat, fold, seed)
        for cohort in study.cohorts
        for repeat in range(study.repeats)
        for fold in range(study.folds)
        for model in cohort.models
        for augment in study.augmentation
        for seed in study.seeds
    ]


def parse_shard(text: str | None) -> tuple[int, int]:
    """``"i/n"`` (0 <= i < n) -> (i, n); None -> the whole study."""
    if not text:
        return 0, 1
    try:
        index, count = (int(v) for v in text.split("/"))
    except ValueError:
        raise ValueError(f"--shard must look like i/n (e.g. 0/4), got {text!r}") from None
    if not 0 <= index < count:
        raise ValueError(f"--shard {text}: need 0 <= i < n")
    return index, count


def prepare_folds(study: Study, out: Path) -> None:
    """Assign folds per cohort and write every fold manifest; the leakage guard runs on each before training."""
    for cohort in study.cohorts:
        frame = load_manifest(cohort.manifest, require_diagnosis=True)
        folds = assign_folds(frame, study.folds, study.repeats, study.seed)
        atomic_write_text(out / "folds" / cohort.name / "folds.csv", folds.to_csv(index=False))
        for repeat in range(study.repeats):
            for fold in range(study.folds):
                part = fold_manifest(frame, folds, repeat, fold, study.val_fraction, study.seed)
                check_no_leakage(part)
                target = out / Job(cohort.name, "", False, repeat, fold, 0).fold_dir / "manifest.csv"
                pipeline.manifest.write_manifest(part, target)


def _git_commit() -> str:
    try:
        root = Path(pipeline.__file__).resolve().parents[1]
        result = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10)
        return result.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _provenance(study: Study, cohort_manifest: Path, bundle_dir: Path) -> dict:
    import monai
    import torch

    meta = json.loads((bundle_dir / "configs" / "metadata.json").read_text())
    return {
        "bundle_version": meta.get("version", ""),
        "neurofusion_version": pipeline.__version__,
        "monai_version": monai.__version__,
        "torch_version": torch.__version__,
        "git_commit": _git_commit(),
        "manifest_sha256": manifest_sha256(cohort_manifest),
    }


def run_job(study: Study, job: Job, out: Path) -> dict:
    """Train the job's bundle on its fold (validation carved from training), evaluate on the test fold."""
    job_dir = out / job.job_dir
    if job_dir.exists():
        shutil.rmtree(job_dir)  # an unfinished earlier attempt: start it again
    job_dir.mkdir(parents=True)
    cohort = next(c for c in study.cohorts if c.name == job.cohort)
    bundle_dir = study.bundle_dir(job.model)
    overrides = {
        **study.overrides,
        **cohort.overrides,
        "manifest": str(out / job.fold_dir / "manifest.csv"),
        "output_dir": str(job_dir / "eval"),
        "ckpt_dir": str(job_dir / "ckpt"),
        "augment": job.augment,
        "seed": job.seed,
        "cache_dir": str(out / "cache" / Path(job.model).name),
    }
    started = time.perf_counter()
    run_bundle(bundle_dir, ["train.yaml"], "train", log_file=job_dir / "log.txt", **overrides)
    trained = time.perf_counter()
    run_bundle(bundle_dir, ["train.yaml", "evaluate.yaml"], "train", log_file=job_dir / "log.txt", **overrides)
    predictions = pd.read_csv(job_dir / "eval" / "predictions.csv")
    fold_frame = pd.read_csv(out / job.fold_dir / "manifest.csv", dtype=str, keep_default_na=False)
    row = {**asdict(job), "study": study.name}
    row.update({f"n_{s}": int((fold_frame["split"] == s).sum()) for s in ("train", "val", "test")})
    row.update(_metrics_of(predictions))
    row.update(train_seconds=round(trained - started, 2), eval_seconds=round(time.perf_counter() - trained, 2))
    row.update(_provenance(study, cohort.manifest, bundle_dir))
    atomic_write_json(job_dir / "done.json", row)
    return row


def _metrics_of(predictions: pd.DataFrame) -> dict:
    names = list(pipeline.CLASS_NAMES)
    labels = [names.index(d) for d in predictions["diagnosis"]]
    return classification_metrics(labels, predictions[[f"prob_{n}" for n in names]].to_numpy())


def collect(out: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Results of every finished job (one row each) and their pooled per-subject test predictions."""
    rows, predictions = [], []
    for done in sorted(out.glob("folds/*/*/*/done.json")):
        row = json.loads(done.read_text())
        rows.append(row)
        frame = pd.read_csv(done.parent / "eval" / "predictions.csv", dtype={"session_id": str})
        predictions.append(frame.assign(**{k: row[k] for k in JOB_COLUMNS}))
    results = pd.DataFrame(rows)
    pooled = pd.concat(predictions, ignore_index=True) if predictions else pd.DataFrame()
    return results, pooled


def run_study(study: Study, out: str | Path, shard: str | None = None, progress: bool = True) -> list[Job]:
    """Run this shard's unfinished jobs of ``study`` into ``out``; returns the jobs still missing overall.

    Args:
        study: parsed study.
        out: run folder (created; an existing one is resumed).
        shard: ``"i/n"`` to run only every n-th job starting at i (cluster array jobs).
        progress: show a progress bar with ETA over jobs.
    """
    out = Path(out)
    index, count = parse_shard(shard)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "study.yaml", study.text)
    jobs = plan_jobs(study)
    atomic_write_text(out / "plan.csv", pd.DataFrame([asdict(j) for j in jobs]).to_csv(index=False))
    prepare_folds(study, out)
    mine = [job for i, job in enumerate(jobs) if i % count == index and not (out / job.job_dir / "done.json").exists()]
    for job in tqdm(mine, desc=f"{study.name} fold jobs", unit="job", disable=not progress):
        run_job(study, job, out)
    return missing_jobs(out)


def missing_jobs(out: Path) -> list[Job]:
    """Planned jobs of a run folder without a ``done.json``."""
    plan = pd.read_csv(Path(out) / "plan.csv")
    jobs = [Job(**{k: (bool(v) if k == "augment" else v) for k, v in row.items()}) for row in plan.to_dict("records")]
    return [job for job in jobs if not (Path(out) / job.job_dir / "done.json").exists()]
