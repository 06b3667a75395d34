"""``neurofusion bench study``: a study's wall time and peak memory, with fold jobs one at a time against several at
once, and against the cohort's size.

Each measured run is ``neurofusion experiment`` in a child process, so its wall time and peak resident memory (the
largest of that process and its workers, from ``getrusage``) are its own.

- ``--jobs 1 2`` (default: 1 and the cores): the same study once with each ``--jobs`` value, its threads per job the
  cores divided by it, each into a fresh run folder. The T1 registrations are computed once beforehand and copied
  into each run, so every run times the same work. Each run's metrics are compared with the first's: equal for the
  same threads per job; another thread count rounds the 3D convolutions differently, which training may amplify.
  Beside each run's wall time, its pool's stage (``plan.csv`` written to the last ``done.json``): what ``--jobs``
  parallelises, without the command's start-up and report. ``--repeats R``: R repeats of the study's
  cross-validation in every run, a study of more jobs of the same size (experiment's ``--repeats``).
- ``--subjects 100 300 1000``: one synthetic MRI-only cohort of the largest size, each smaller cohort its first
  subjects (classes balanced), each run through an MRI-only study of the 3D CNN (augmentation off, ``--folds`` folds
  of ``--epochs`` epochs): wall time, time per subject and peak memory per size.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd

from pipeline.errors import CommandError

describe = (
    "study wall time and peak memory per process: --jobs 1 vs N on the same study (registration done beforehand), "
    "and against the number of subjects of a synthetic MRI-only cohort"
)

SMOKE = Path(__file__).resolve().parents[2] / "bundles" / "experiments" / "smoke.yaml"
METRICS = ["accuracy", "balanced_accuracy", "macro_f1", "auc_ovr"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, help="work folder (created; its runs are kept for inspection)")
    parser.add_argument(
        "--study",
        help="study YAML whose --jobs settings are compared (default: the smoke study on a tiny synthetic cohort, a "
        "study of small jobs)",
    )
    parser.add_argument("--cohort", action="append", default=[], metavar="NAME=MANIFEST", help="as for experiment")
    parser.add_argument("--jobs", type=int, nargs="+", help="--jobs values to compare (default: 1 and the cores)")
    parser.add_argument(
        "--repeats",
        type=int,
        help="--jobs: repeats of the study's cross-validation, as experiment's --repeats (more jobs of the same size)",
    )
    parser.add_argument("--subjects", type=int, nargs="+", help="cohort sizes to scale over instead, e.g. 100 300 1000")
    parser.add_argument("--folds", type=int, default=5, help="--subjects: folds (default 5)")
    parser.add_argument("--epochs", type=int, default=2, help="--subjects: epochs (default 2)")
    parser.add_argument(
        "--registration",
        choices=("affine", "none"),
        default="affine",
        help="--subjects: the 3D CNN's mri_registration (default affine; none leaves out ~1 s a T1 and core)",
    )


# Started by a small launcher: Linux carries a parent's peak RSS into a child it forks (exec records the old
# address space's), so a child of this process would report at least this process's memory. The launcher's own
# children report only theirs; it writes their peak (KiB), the largest of the command and its waited-for workers.
# It is also the subreaper of everything the command starts (Linux's PR_SET_CHILD_SUBREAPER): a descendant that the
# command leaves without waiting for it (multiprocessing's fork server, say) is waited for and counted too.
LAUNCHER = (
    "import ctypes, os, resource, subprocess, sys\n"
    "PR_SET_CHILD_SUBREAPER, libc = 36, ctypes.CDLL(None)\n"
    "if hasattr(libc, 'prctl'):\n"
    "    libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)\n"
    "code = subprocess.call(sys.argv[2:])\n"
    "while True:\n"
    "    try:\n"
    "        os.wait()\n"
    "    except ChildProcessError:\n"
    "        break\n"
    "open(sys.argv[1], 'w').write(str(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss))\n"
    "sys.exit(code)\n"
)


def measure(command: list[str], log: Path) -> tuple[float, float]:
    """Run ``command``; its wall seconds and peak resident memory in GiB (the largest of it and its waited-for
    descendants). A failure is refused with the log's path."""
    peak = log.with_suffix(".peak_kib")
    started = time.perf_counter()
    with open(log, "w") as stream:
        code = subprocess.call([sys.executable, "-c", LAUNCHER, str(peak), *command], stdout=stream, stderr=stream)
    seconds = time.perf_counter() - started
    if code != 0:
        raise CommandError(f"{' '.join(command[2:5])} failed with exit code {code}: see {log}")
    return seconds, int(peak.read_text()) / 2**20


def experiment(study: Path, out: Path, cohorts: list[str], *extra: str) -> list[str]:
    command = [sys.executable, "-m", "pipeline.cli", "experiment", str(study), "--out", str(out), "--quiet"]
    return [*command, *(f"--cohort={c}" for c in cohorts), "--bootstrap", "20", *extra]


def metrics(run: Path) -> pd.DataFrame:
    results = pd.read_csv(run / "results.csv")
    keys = [c for c in ("cohort", "model", "augment", "repeat", "fold", "seed", "transfer") if c in results]
    return results.sort_values(keys).reset_index(drop=True)[keys + METRICS]


def prepare_registrations(study_path: Path, cohorts: list[str], folder: Path) -> Path:
    """The study's T1 registrations, computed once on every core; returns the cache folder to copy into runs."""
    from pipeline.study.executor import Execution
    from pipeline.study.runner import register_subjects, registration_cache
    from pipeline.study.spec import load_study

    manifests = dict(cohort.split("=", 1) for cohort in cohorts)  # the runs' own experiment commands check them
    register_subjects(load_study(study_path, manifests), folder, Execution(), progress=False)
    return registration_cache(folder)


def job_stage_seconds(run: Path) -> float:
    """Seconds from a run's ``plan.csv`` being written to its last ``done.json``: the stage of its pool of jobs."""
    done = [path.stat().st_mtime for path in run.rglob("done.json")]
    return max(done) - (run / "plan.csv").stat().st_mtime


def compare_jobs(args: argparse.Namespace, out: Path) -> None:
    from pipeline.study.executor import available_cores

    study, cohorts = Path(args.study) if args.study else SMOKE, list(args.cohort)
    if not args.study:
        cohorts = [f"paired={tiny_cohort(out / 'cohort')}"]
    cores = available_cores()
    settings = args.jobs or sorted({1, cores})
    repeats = ["--repeats", str(args.repeats)] if args.repeats else []
    cache = prepare_registrations(study, cohorts, out / "registrations")
    rows, first = [], None
    for jobs in settings:
        run = out / f"jobs-{jobs}"
        shutil.rmtree(run, ignore_errors=True)
        shutil.copytree(cache, run / cache.relative_to(out / "registrations"))
        threads = str(max(1, cores // jobs))
        command = experiment(study, run, cohorts, "--jobs", str(jobs), "--threads-per-job", threads, *repeats)
        seconds, peak = measure(command, out / f"jobs-{jobs}.log")
        same = first is None or metrics(run).equals(metrics(first))
        first = first or run
        rows.append((jobs, threads, seconds, job_stage_seconds(run), peak, same))
    base, base_stage = rows[0][2:4]
    jobs_run = len(pd.read_csv(first / "plan.csv"))
    print(f"{study.name}, {jobs_run} fold jobs, {cores} cores; registrations done beforehand (copied into each run)")
    header = f"{'jobs':>4} {'threads/job':>11} {'wall s':>8} {'speed-up':>8} {'jobs s':>8} {'speed-up':>8}"
    print(f"{header} {'peak GiB':>8}  same metrics")
    for jobs, threads, seconds, stage, peak, same in rows:
        speed_ups = f"{base / seconds:7.2f}x {stage:8.1f} {base_stage / stage:7.2f}x"
        print(f"{jobs:4d} {threads:>11} {seconds:8.1f} {speed_ups} {peak:8.2f}  {'yes' if same else 'no'}")
    print(
        "jobs s: from the plan written to the last job done (the pool's stage); the rest of the wall time is the "
        "command's start-up (imports, checks of the cohort) and the report, the same in each run"
    )
    if len({threads for _, threads, *_ in rows}) > 1:
        print(
            "same metrics: against the first run. Runs with other threads per job round the 3D convolutions "
            "differently, and training can amplify that; with the same threads per job, jobs in parallel give the "
            "sequential run's metrics exactly"
        )


def tiny_cohort(folder: Path) -> Path:
    """The tests' tiny paired cohort (12 subjects), written once; returns its paired manifest."""
    from pipeline.synth import write_cohort

    if not (folder / "manifest_paired.csv").is_file():
        write_cohort(folder, n_cn=4, n_mci=4, n_ad=4, n_mri_only=3, seed=0, profile="tiny", progress=False)
    return folder / "manifest_paired.csv"


def nested_manifests(folder: Path, sizes: list[int], profile: str = "demo") -> dict[int, Path]:
    """One MRI-only synthetic cohort of the largest size and, for each size, a manifest of its first subjects
    (classes taken in turn, so each is balanced); returns size -> manifest (beside the cohort's own)."""
    from pipeline.synth import write_cohort

    largest = max(sizes)
    if not (folder / "manifest.csv").is_file():
        write_cohort(folder, n_cn=0, n_mci=0, n_ad=0, n_mri_only=largest, seed=0, profile=profile, progress=False)
    table = pd.read_csv(folder / "manifest.csv", dtype=str, keep_default_na=False)
    order = table.groupby("diagnosis").cumcount().sort_values(kind="stable").index
    manifests = {}
    for size in sizes:
        manifests[size] = folder / f"manifest_mri_only_{size}.csv"
        table.loc[order[:size]].sort_index().to_csv(manifests[size], index=False)
    return manifests


def scaling_study(folder: Path, args: argparse.Namespace) -> Path:
    study = folder / "scaling.yaml"
    study.write_text(
        "name: scaling\ncohorts:\n  mri_only: {manifest: manifest.csv, models: [mri_cnn3d]}\nmodels: [mri_cnn3d]\n"
        f"augmentation: [false]\ncv: {{folds: {args.folds}, repeats: 1, seed: 0, val_fraction: 0.2}}\n"
        f"overrides: {{epochs: {args.epochs}, batch_size: 8, mri_pixdim: [4.0, 4.0, 4.0], "
        f"mri_spatial_size: [36, 44, 36], mri_registration: {args.registration}}}\n"
    )
    return study


def scale(args: argparse.Namespace, out: Path) -> None:
    manifests = nested_manifests(out / "cohort", sorted(set(args.subjects)))
    study, largest = scaling_study(out, args), max(manifests)
    print(f"MRI-only 3D CNN study: {args.folds} folds x {args.epochs} epochs, mri_registration {args.registration}")
    cache = None
    if args.registration == "affine":  # once for all sizes, so each run times the same work per subject
        started = time.perf_counter()
        cache = prepare_registrations(study, [f"mri_only={manifests[largest]}"], out / "registrations")
        seconds = time.perf_counter() - started
        print(f"registering the {largest} T1s beforehand: {seconds:.0f} s ({seconds / largest:.2f} s a T1)")
    print(f"{'subjects':>8} {'wall s':>8} {'s/subject':>9} {'peak GiB':>8}  balanced accuracy")
    for size, manifest in manifests.items():
        run = out / f"subjects-{size}"
        shutil.rmtree(run, ignore_errors=True)
        if cache is not None:
            shutil.copytree(cache, run / cache.relative_to(out / "registrations"))
        seconds, peak = measure(experiment(study, run, [f"mri_only={manifest}"]), out / f"subjects-{size}.log")
        accuracy = pd.read_csv(run / "results.csv")["balanced_accuracy"].mean()
        print(f"{size:8d} {seconds:8.1f} {seconds / size:9.2f} {peak:8.2f}  {accuracy:.3f}")


def run(args: argparse.Namespace) -> int:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.subjects:
        scale(args, out)
    else:
        compare_jobs(args, out)
    return 0
