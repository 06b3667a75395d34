"""Cross-validated study runner: every cohort x model x augmentation x repeat x fold trains and tests a bundle.

Layout of a run folder::

    RUN/study.yaml                         copy of the study definition
    RUN/plan.csv                           every fold job of the study, with its bundle's input modalities
    RUN/folds/<cohort>/folds.csv           subject -> (repeat, fold)
    RUN/folds/<cohort>/repeat-R_fold-F/manifest.csv          the fold's manifest (split column)
    RUN/folds/<cohort>/repeat-R_fold-F/<model>_aug-<on|off>_seed-S/   one job: ckpt/, eval/, log.txt, done.json
                                           (``..._aug-off_transfer-<finetune|frozen>_seed-S/`` with study key
                                           ``transfer``)
    RUN/pretrain/<source>_<model>/         an encoder pretrained on a whole cohort, RUN/shared_subjects.csv:
                                           :mod:`pipeline.study.transfer`
    RUN/baselines.csv, RUN/folds/<cohort>/repeat-R_fold-F/<baseline-mri|ceiling-fused>/, RUN/cache/baselines/
                                           scikit-learn baselines and ceilings (study key ``baselines``):
                                           :mod:`pipeline.study.baselines`
    RUN/results.csv, RUN/predictions.csv, RUN/summary.csv, RUN/comparisons.csv, RUN/report.md, RUN/report.html,
    RUN/figures/*.png                      written by :func:`pipeline.study.report.render`

A job is finished when its ``done.json`` exists (written last, atomically); re-running skips finished jobs and
redoes unfinished ones from scratch, so a killed job is never half-counted. Once every T1 and BOLD run is registered,
one pool of workers runs the rest: the pretraining jobs of ``transfer`` (in every shard that needs them), the
reference jobs (baselines, ceilings; together, in shard 0) and the fold jobs, each fold job that starts from a
pretrained encoder once that has finished.
"""

from __future__ import annotations

import functools
import json
import shutil
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import pandas as pd

import pipeline
from pipeline.data.manifest import assign_folds, check_no_leakage, fold_manifest, load_manifest, manifest_sha256
from pipeline.engine.metrics import classification_metrics
from pipeline.engine.workflow import run_bundle
from pipeline.io import atomic_write_json, atomic_write_text
from pipeline.study import transfer
from pipeline.study.executor import Execution, run_jobs, worker_pool
from pipeline.study.spec import Study
from pipeline.study.stats import is_collapsed, labels_and_probabilities

JOB_COLUMNS = ["cohort", "model", "augment", "repeat", "fold", "seed", "transfer"]


@dataclass(frozen=True)
class Job:
    """One training + test evaluation of one bundle on one fold."""

    cohort: str
    model: str
    augment: bool
    repeat: int
    fold: int
    seed: int
    transfer: str = "none"  # none (from scratch), finetune or frozen: see pipeline.study.transfer

    @property
    def fold_dir(self) -> Path:
        return Path("folds") / self.cohort / f"repeat-{self.repeat}_fold-{self.fold}"

    @property
    def job_dir(self) -> Path:
        name = Path(self.model).name
        started = "" if self.transfer == "none" else f"_transfer-{self.transfer}"
        return self.fold_dir / f"{name}_aug-{'on' if self.augment else 'off'}{started}_seed-{self.seed}"


def plan_jobs(study: Study) -> list[Job]:
    """Every job of the study in a fixed order (the order shards are cut from)."""
    return [
        Job(cohort.name, model, augment, repeat, fold, seed, mode)
        for cohort in study.cohorts
        for repeat in range(study.repeats)
        for fold in range(study.folds)
        for model in cohort.models
        for augment in study.augmentation
        for mode in transfer.modes(study, cohort.name, model)
        for seed in study.seeds
    ]


def bundle_modalities(bundle_dir: Path) -> str:
    """Modalities of a bundle's inputs from its ``metadata.json``, e.g. ``MR``, ``fMRI`` or ``MR+fMRI`` (fused)."""
    path = bundle_dir / "configs" / "metadata.json"
    inputs = json.loads(path.read_text())["network_data_format"]["inputs"]
    return "+".join(dict.fromkeys(str(spec.get("modality", name)) for name, spec in inputs.items()))


def write_plan(study: Study, out: Path) -> list[Job]:
    """Write ``RUN/plan.csv`` (every job and its bundle's modalities) and return the jobs."""
    jobs = plan_jobs(study)
    modalities = {model: bundle_modalities(study.bundle_dir(model)) for model in {j.model for j in jobs}}
    plan = pd.DataFrame([{**asdict(j), "modalities": modalities[j.model]} for j in jobs])
    atomic_write_text(out / "plan.csv", plan.to_csv(index=False))
    return jobs


def load_plan(out: Path) -> pd.DataFrame:
    """``RUN/plan.csv`` of a run folder.

    Raises:
        FileNotFoundError: the folder is not a study run.
        ValueError: the plan predates the ``modalities`` column.
    """
    path = Path(out) / "plan.csv"
    if not path.is_file():
        raise FileNotFoundError(f"{out}: not a study run folder (no plan.csv)")
    plan = pd.read_csv(path)
    if "modalities" not in plan.columns:
        raise ValueError(f"{path}: no 'modalities' column (older run); re-run `neurofusion experiment` to refresh it")
    return plan


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


def shard_jobs(jobs: list[Job], index: int, count: int) -> list[Job]:
    """Share ``index`` of ``count`` of the planned jobs: every ``count``-th job starting at ``index``."""
    return jobs[index::count]


def costliest_first(jobs: Sequence[Job], tables: dict[Path, pd.DataFrame]) -> list[Job]:
    """``jobs`` in the order a pool of workers finishes them soonest: the largest cohort's first and, within a
    cohort, the augmented ones first (they cost more), so the short jobs fill in at the end and no worker waits
    alone on a long one (longest processing time first). Results do not depend on the order: each job is seeded
    on its own.

    Args:
        jobs: fold jobs in plan order (kept among equals).
        tables: :func:`fold_tables` of the study (the cohorts' sizes).
    """
    size = {path.parent.name: len(table) for path, table in tables.items() if path.name == "folds.csv"}
    return sorted(jobs, key=lambda job: (-size.get(job.cohort, 0), not job.augment))


def fold_tables(study: Study) -> dict[Path, pd.DataFrame]:
    """Every cohort's ``folds.csv`` and fold manifests, by path in the run folder, built (and the cohort manifests
    validated, the leakage guard run on each fold) before anything is written. A cohort without models (only a
    transfer's source) has no folds."""
    tables = {}
    for cohort in (c for c in study.cohorts if c.models):
        frame = load_manifest(cohort.manifest, require_diagnosis=True)
        folds = assign_folds(frame, study.folds, study.repeats, study.seed)
        tables[Path("folds") / cohort.name / "folds.csv"] = folds
        for repeat in range(study.repeats):
            for fold in range(study.folds):
                part = fold_manifest(frame, folds, repeat, fold, study.val_fraction, study.seed)
                check_no_leakage(part)
                tables[Job(cohort.name, "", False, repeat, fold, 0).fold_dir / "manifest.csv"] = part
    return tables


def prepare_folds(study: Study, out: Path, tables: dict[Path, pd.DataFrame] | None = None) -> None:
    """Write every cohort's folds table and fold manifests (:func:`fold_tables`, unless given) into ``out``."""
    for relative, table in (tables if tables is not None else fold_tables(study)).items():
        if relative.name == "folds.csv":
            atomic_write_text(out / relative, table.to_csv(index=False))
        else:
            pipeline.data.manifest.write_fold_manifest(table, out / relative)


def _git(*args: str) -> str | None:
    """Output of a git command in this package's checkout; None when git or the checkout is unavailable."""
    try:
        root = Path(pipeline.__file__).resolve().parents[1]
        result = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return result.stdout.strip() if result.returncode == 0 else None


def git_state() -> dict:
    """``git_commit`` (HEAD) and ``git_dirty`` (tracked files modified since it; unknown outside a checkout)."""
    status = _git("status", "--porcelain", "--untracked-files=no")
    return {
        "git_commit": _git("rev-parse", "HEAD") or "unknown",
        "git_dirty": "unknown" if status is None else bool(status),
    }


def job_provenance(study: Study, cohort_manifest: Path, bundle_dir: Path) -> dict:
    import monai
    import torch

    meta = json.loads((bundle_dir / "configs" / "metadata.json").read_text())
    return {
        "bundle_version": meta.get("version", ""),
        "neurofusion_version": pipeline.__version__,
        "monai_version": monai.__version__,
        "torch_version": torch.__version__,
        **git_state(),
        "manifest_sha256": manifest_sha256(cohort_manifest),
    }


def run_job(study: Study, job: Job, out: Path) -> dict:
    """Train the job's bundle on its fold (validation carved from training), evaluate on the test fold.

    A job that fails leaves no folder behind; one killed outright leaves an unfinished folder that the next run
    starts again.
    """
    job_dir = out / job.job_dir
    return in_fresh_folder(job_dir, lambda: _train_and_test(study, job, out, job_dir))


def in_fresh_folder(job_dir: Path, work: Callable[[], dict]) -> dict:
    """Run a job's ``work`` in an emptied ``job_dir``; a failure removes the folder, so nothing half-done stays."""
    if job_dir.exists():
        shutil.rmtree(job_dir)  # an unfinished earlier attempt: start it again
    job_dir.mkdir(parents=True)
    try:
        return work()
    except BaseException:
        shutil.rmtree(job_dir, ignore_errors=True)
        raise


def cohort_overrides(study: Study, cohort, out: Path) -> dict:
    """Bundle keys every job of a cohort runs with: the study's and the cohort's overrides, and the run's caches
    shared across jobs (the baselines build their chains from the same keys)."""
    return {**study.overrides, **cohort.overrides, "registration_cache_dir": str(registration_cache(out))}


def _train_and_test(study: Study, job: Job, out: Path, job_dir: Path) -> dict:
    cohort = next(c for c in study.cohorts if c.name == job.cohort)
    bundle_dir = study.bundle_dir(job.model)
    overrides = {
        **cohort_overrides(study, cohort, out),
        "manifest": str(out / job.fold_dir / "manifest.csv"),
        "output_dir": str(job_dir / "eval"),
        "ckpt_dir": str(job_dir / "ckpt"),
        "augment": job.augment,
        "seed": job.seed,
        "cache_dir": str(out / "cache" / Path(job.model).name),
        **transfer.job_overrides(study, job.cohort, job.transfer, out),
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
    row.update(transfer.job_record(study, job.cohort, job.transfer))
    row.update(train_seconds=round(trained - started, 2), eval_seconds=round(time.perf_counter() - trained, 2))
    row.update(job_provenance(study, cohort.manifest, bundle_dir))
    atomic_write_json(job_dir / "done.json", row)
    return row


def _metrics_of(predictions: pd.DataFrame) -> dict:
    return classification_metrics(*labels_and_probabilities(predictions))


def finished_jobs(out: Path) -> list[tuple[Path, dict]]:
    """(job folder, ``done.json`` row) of every finished job (``transfer`` ``none`` in rows that predate it)."""
    rows = [(done.parent, json.loads(done.read_text())) for done in sorted(out.glob("folds/*/*/*/done.json"))]
    for _, row in rows:
        row.setdefault("transfer", "none")
    return rows


def _job_tables(out: Path, name: str, **read_csv) -> pd.DataFrame:
    """``eval/<name>`` of every finished job, concatenated, with the job's columns added."""
    frames = [
        pd.read_csv(job_dir / "eval" / name, **read_csv).assign(**{k: row[k] for k in JOB_COLUMNS})
        for job_dir, row in finished_jobs(out)
        if (job_dir / "eval" / name).is_file()
    ]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=JOB_COLUMNS)


def collect(out: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Results of every finished job (one row each) and their pooled per-subject test predictions.

    Deep and reference jobs alike: ``kind`` says which (``model``, ``baseline`` or ``ceiling``), ``collapsed``
    whether the job answered one class for every test subject of a fold holding several
    (:func:`~pipeline.study.stats.is_collapsed`).
    """
    from pipeline.study.baselines import model_kind

    results = pd.DataFrame([row for _, row in finished_jobs(out)])
    predictions = _job_tables(out, "predictions.csv", dtype={"session_id": str})
    if results.empty:
        return results, predictions
    flags = pd.DataFrame(
        [
            {**dict(zip(JOB_COLUMNS, key)), "collapsed": is_collapsed(part)}
            for key, part in predictions.groupby(JOB_COLUMNS, sort=False)
        ],
        columns=[*JOB_COLUMNS, "collapsed"],
    )
    results = results.drop(columns=["kind", "collapsed"], errors="ignore").merge(flags, on=JOB_COLUMNS, how="left")
    results["collapsed"] = results["collapsed"].astype("boolean").fillna(False).astype(bool)
    results.insert(1, "kind", results["model"].map(model_kind))
    return results, predictions


def cohort_subjects(out: Path) -> pd.DataFrame:
    """Every subject of every cohort of a run (``cohort``, ``subject_id``, ``diagnosis``), from the fold tables."""
    frames = [
        pd.read_csv(path, dtype=str)[["subject_id", "diagnosis"]].drop_duplicates().assign(cohort=path.parent.name)
        for path in sorted(out.glob("folds/*/folds.csv"))
    ]
    return pd.concat(frames, ignore_index=True)


def training_logs(out: Path) -> pd.DataFrame:
    """Per-epoch training logs (``eval/training_log.csv``) of every finished job, with the job's columns."""
    return _job_tables(out, "training_log.csv")


def registration_cache(out: Path) -> Path:
    """The run's registration cache, shared by every fold job and model: each T1 is registered once."""
    return Path(out) / "cache" / "registration"


def registration_settings(study: Study, cohort, model: str) -> dict[str, dict]:
    """Manifest column -> the registration settings a job of ``model`` on ``cohort`` uses for it (its bundle's keys
    under the study's and cohort's overrides): ``mri`` when it registers the T1s, ``fmri`` the BOLD runs."""
    from monai.bundle import ConfigParser

    bundle_dir = study.bundle_dir(model)
    modalities = bundle_modalities(bundle_dir).split("+")
    parser = ConfigParser()
    parser.read_config(str(bundle_dir / "configs" / "train.yaml"))
    parser.update({**study.overrides, **cohort.overrides})

    def key(name: str):
        return parser.get_parsed_content(name) if name in parser else None

    found = {}
    if "MR" in modalities and key("mri_registration") == "affine":
        found["mri"] = {"level_mm": float(key("mri_registration_mm"))}
    if "fMRI" in modalities and key("fmri_registration") not in (None, "none") and key("fmri_sequence") != "volume":
        found["fmri"] = {"mode": key("fmri_registration")}
    return found


def register_subjects(study: Study, out: Path, execution: Execution, progress: bool = True) -> None:
    """Register every T1 and BOLD run the study's models register into :func:`registration_cache` through
    ``execution`` (one job a file in local worker processes; ``execution.at_once`` submitted jobs of
    ``execution.threads`` processes each), before the fold jobs run: they then read each registration from the cache,
    instead of parallel jobs registering the same runs at once."""
    from pipeline.transforms import fmri_registration, registration

    todo: dict[tuple, list[str]] = {}
    for cohort in study.cohorts:
        table = load_manifest(cohort.manifest)
        pretrained = [t.model for t in study.transfer if t.source == cohort.name]
        for model in dict.fromkeys([*cohort.models, *pretrained]):
            for column, settings in registration_settings(study, cohort, model).items():
                paths = [p for p in table.get(column, []) if p]
                todo.setdefault((column, *sorted(settings.items())), []).extend(paths)
    registers = {  # manifest column -> what registers its files, what the progress bar calls one
        "mri": (registration.register_files, "T1"),
        "fmri": (fmri_registration.register_bold_files, "BOLD run"),
    }
    for (column, *settings), paths in todo.items():
        register, what = registers[column]
        paths = list(dict.fromkeys(paths))
        work = functools.partial(register, settings=dict(settings), cache_dir=registration_cache(out))
        chunks = [[path] for path in paths]
        if execution.submitted:
            work = functools.partial(work, workers=execution.threads)
            chunks = [paths[i :: execution.at_once or 1] for i in range(min(len(paths), execution.at_once or 1))]
        run_jobs(
            work,
            chunks,
            execution,
            desc=f"registering {what}s to MNI152",
            unit=what if not execution.submitted else "job",
            progress=progress,
            log_dir=job_logs(out, execution) / "registration",
            wait=True,  # the fold jobs read the cache
        )


def job_logs(out: Path, execution: Execution) -> Path:
    """Folder of the logs of a run's submitted jobs: ``RUN/logs/<slurm|local>``."""
    return Path(out) / "logs" / execution.executor


@dataclass(frozen=True)
class ReferenceRun:
    """A run's unfinished reference jobs (:mod:`pipeline.study.baselines`) as one job: they share the features they
    compute."""

    jobs: tuple[Job, ...]


def run_item(study: Study, item, out: Path, plan: transfer.TransferPlan, shard: tuple[int, int]) -> None:
    """One job of a study's pool: a pretraining, the reference jobs or a fold job."""
    from pipeline.study import baselines

    if isinstance(item, transfer.PretrainJob):
        transfer.pretrain(study, out, plan, item, shard)
    elif isinstance(item, ReferenceRun):
        baselines.run_references(study, out, item.jobs, progress=False)
    else:
        run_job(study, item, out)


def item_label(item) -> str:
    """A pool job's name in messages: its folder in the run."""
    return "baselines" if isinstance(item, ReferenceRun) else str(item.job_dir)


def item_needs(study: Study, item) -> list:
    """The pretraining a pool job starts from (none but for fold jobs with a transfer)."""
    return transfer.needed(study, [item]) if isinstance(item, Job) else []


def abandon_job(out: Path, job) -> None:
    """Remove the folder of a job stopped before it finished (no ``done.json``), so the next run starts it again."""
    if isinstance(job, ReferenceRun):
        for reference in job.jobs:
            abandon_job(out, reference)
    elif not (out / job.job_dir / "done.json").exists():
        shutil.rmtree(out / job.job_dir, ignore_errors=True)


def run_study(
    study: Study, out: str | Path, shard: str | None = None, progress: bool = True, execution: Execution | None = None
) -> list[Job]:
    """Run this shard's unfinished jobs of ``study`` into ``out``; returns the jobs still missing overall.

    The reference jobs (:mod:`pipeline.study.baselines`) run as one job of the first shard, so their features are
    computed once.

    Args:
        study: parsed study.
        out: run folder (created; an existing one is resumed).
        shard: ``"i/n"`` to run only every n-th job starting at i (cluster array jobs).
        progress: show a progress bar with ETA over jobs.
        execution: how the registrations and fold jobs run (default: :class:`~pipeline.study.executor.Execution`,
            as many local worker processes as cores).
    """
    from pipeline.study import baselines

    out = Path(out)
    execution = execution or Execution()
    index, count = parse_shard(shard)
    tables = fold_tables(study)  # a cohort that cannot be used is refused before the run folder exists
    transfers = transfer.plan_transfer(study)  # and so is a transfer that would leak
    fresh = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    try:
        atomic_write_text(out / "study.yaml", study.text)
        jobs = write_plan(study, out)
        references = baselines.write_references(study, out)
        prepare_folds(study, out, tables)
        transfer.write_records(transfers, out)
        mine = [job for job in shard_jobs(jobs, index, count) if not (out / job.job_dir / "done.json").exists()]
        pretraining = [job for job in transfer.needed(study, mine) if not transfer.is_done(out, job)]
        unfinished = [job for job in references if not (out / job.job_dir / "done.json").exists()]
        reference_run = [ReferenceRun(tuple(unfinished))] if index == 0 and unfinished else []
        with worker_pool():  # the registration stage's workers run the other jobs too
            register_subjects(study, out, execution, progress)
            run_jobs(
                functools.partial(run_item, study, out=out, plan=transfers, shard=(index, count)),
                [*pretraining, *reference_run, *costliest_first(mine, tables)],
                execution,
                desc=f"{study.name} jobs",
                progress=progress,
                label=item_label,
                abandon=functools.partial(abandon_job, out),
                log_dir=job_logs(out, execution),
                needs=functools.partial(item_needs, study),
            )
    except Exception:
        if fresh and not finished_jobs(out):  # nothing of value: leave no partial run folder behind
            shutil.rmtree(out, ignore_errors=True)
        raise
    return missing_jobs(out)


def planned_jobs(out: Path) -> list[Job]:
    """Every planned job of a run folder: the deep jobs of ``plan.csv``, then the reference jobs of
    ``baselines.csv`` (:func:`pipeline.study.baselines.load_references`)."""
    from pipeline.study.baselines import load_references

    plan = pd.read_csv(Path(out) / "plan.csv", dtype={"transfer": str}, keep_default_na=False)
    plan = plan.reindex(columns=JOB_COLUMNS, fill_value="none")  # a plan that predates transfer
    jobs = [Job(**{k: (bool(v) if k == "augment" else v) for k, v in row.items()}) for row in plan.to_dict("records")]
    return jobs + load_references(out)


def missing_jobs(out: Path) -> list[Job]:
    """Planned jobs of a run folder (deep and reference) without a ``done.json``."""
    return [job for job in planned_jobs(out) if not (Path(out) / job.job_dir / "done.json").exists()]
