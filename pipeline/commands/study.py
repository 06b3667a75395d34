"""Study commands: ``experiment``, ``report``, ``demo``."""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from pathlib import Path

from pipeline.commands import positive_int
from pipeline.errors import CommandError

REPO_ROOT = Path(__file__).resolve().parents[2]
PAPER_STUDY = REPO_ROOT / "bundles" / "experiments" / "paper_study.yaml"


def _parse_cohort_overrides(items: Sequence[str] | None) -> dict[str, str]:
    result = {}
    for item in items or []:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            raise CommandError(f"--cohort expects NAME=MANIFEST, got {item!r}")
        result[name] = path
    return result


def _print_report(out: Path, n_resamples: int) -> None:
    """Render the run's report and print its summary, the answers and what is missing."""
    import pandas as pd

    from pipeline.study.report import render

    report = render(out, n_resamples)
    summary = pd.read_csv(report.paths["summary"])
    columns = ["cohort", "model", "augment", *(["transfer"] if (summary["transfer"] != "none").any() else [])]
    columns += ["n_jobs", "balanced_accuracy_mean"]
    columns += ["balanced_accuracy_ci_low", "balanced_accuracy_ci_high", "auc_ovr_mean"]
    columns += [c for c in ["share_of_ceiling"] if c in summary]
    print(summary[columns].to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    print("\n".join(report.answers))
    if report.missing:
        print(f"{len(report.missing)} planned job(s) not finished, e.g. {report.missing[0].job_dir}")
    print(f"report: {report.paths['html']} and {report.paths['markdown']}")


def _execution(args: argparse.Namespace):
    """The :class:`~pipeline.study.executor.Execution` of the ``--jobs`` / ``--executor`` / ``--slurm-*`` flags."""
    from pipeline.study.executor import Execution

    slurm = {
        "partition": getattr(args, "slurm_partition", None),
        "time_min": getattr(args, "slurm_time", None),
        "mem_gb": getattr(args, "slurm_mem", None),
        "cpus": getattr(args, "slurm_cpus", None),
    }
    try:
        return Execution(
            executor=getattr(args, "executor", "process"),
            jobs=args.jobs,
            threads_per_job=args.threads_per_job,
            wait=not getattr(args, "no_wait", False),
            slurm=slurm,
        )
    except ValueError as err:
        raise CommandError(str(err)) from None


def cmd_experiment(args: argparse.Namespace) -> int:
    from pipeline.study.runner import run_study
    from pipeline.study.spec import load_study, with_repeats

    execution = _execution(args)
    study = with_repeats(load_study(args.study, _parse_cohort_overrides(args.cohort)), args.repeats)
    missing = run_study(study, args.out, shard=args.shard, progress=not args.quiet, execution=execution)
    if missing and not execution.wait:
        print(f"study {study.name}: {len(missing)} job(s) submitted or still missing; when they have finished, run")
        print(f"`neurofusion report {args.out}`, or re-run this command to submit failed jobs again and fit the")
        print("baselines.")
        return 0
    if missing:  # other shards' jobs: the report is rendered once, by whoever asks for it
        print(f"study {study.name}: this shard is done; {len(missing)} job(s) of other shards still missing.")
        print(f"run `neurofusion report {args.out}` to aggregate whatever is finished.")
        return 0
    print(f"study {study.name}: complete")
    _print_report(Path(args.out), args.bootstrap)
    return 0


def cmd_variants(args: argparse.Namespace) -> int:
    from pipeline.study.variants import load_variants, markdown, run_variants, variant_table

    variants = load_variants(args.variants, _parse_cohort_overrides(args.cohort))
    out = Path(args.out)
    run_variants(variants, out, progress=not args.quiet, n_resamples=args.bootstrap)
    table = variant_table(variants, out)
    table.to_csv(out / "variants.csv", index=False)
    text = markdown(table, variants.reference)
    (out / "variants.md").write_text(text + "\n")
    print(text)
    print(f"table: {out / 'variants.csv'} and {out / 'variants.md'}; each variant's report in {out}/<variant>/")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    _print_report(Path(args.run), args.bootstrap)
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from pipeline.study.runner import run_study
    from pipeline.study.spec import load_study, with_repeats
    from pipeline.synth import write_cohort

    out = Path(args.out)
    cohort = out / "cohort"
    started = time.perf_counter()
    execution = _execution(args)
    if not (cohort / "manifest.csv").is_file():
        print(f"[1/3] synthesising the demo cohort (29 paired + {args.n_mri_only} MRI-only subjects) in {cohort}")
        workers = 1 if execution.submitted else execution.at_once
        write_cohort(cohort, n_mri_only=args.n_mri_only, seed=args.seed, profile="demo", workers=workers)
    else:
        print(f"[1/3] reusing the synthetic cohort in {cohort}")
    manifests = {"paired": str(cohort / "manifest_paired.csv"), "mri_only": str(cohort / "manifest_mri_only.csv")}
    study = with_repeats(load_study(args.study, manifests), args.repeats)
    print(f"[2/3] running {args.study} ({study.name}) into {out / 'study'}")
    run_study(study, out / "study", progress=True, execution=execution)
    print("[3/3] summary (mean over folds and 95% CI; chance balanced accuracy 0.333):")
    _print_report(out / "study", args.bootstrap)
    print(f"demo finished in {(time.perf_counter() - started) / 60:.1f} min. The cohort is synthetic: see README.")
    return 0


def _add_bootstrap(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--bootstrap",
        type=positive_int,
        default=1000,
        metavar="N",
        help="subject-bootstrap resamples per model for the pooled-prediction CIs (default 1000; about 0.3 ms each)",
    )


def _add_repeats(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--repeats",
        type=positive_int,
        metavar="R",
        help="repeats of the cross-validation, in place of the study's cv.repeats; a finished run re-run with more "
        "keeps its jobs and adds the new repeats'",
    )


def _add_jobs(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--jobs",
        type=positive_int,
        metavar="N",
        help="fold jobs at once, each in its own process (default: the cores this process may use; 1 runs them in "
        "this process). With --executor slurm: the job array's parallelism (default: no limit)",
    )
    parser.add_argument(
        "--threads-per-job",
        type=positive_int,
        metavar="N",
        help="torch / OpenMP / MKL threads of each job (default: the cores divided by --jobs; --slurm-cpus on a "
        "cluster)",
    )


def _add_cluster(parser: argparse.ArgumentParser) -> None:
    from pipeline.study.executor import EXECUTORS

    parser.add_argument(
        "--executor",
        choices=EXECUTORS,
        default="process",
        help="process: local worker processes (default); slurm: a Slurm job array through submitit (pip install "
        "'neurofusion[slurm]'), logs in RUN/logs/slurm/; local: the same submitit code path without Slurm",
    )
    parser.add_argument("--slurm-partition", metavar="P", help="Slurm partition (required with --executor slurm)")
    parser.add_argument("--slurm-time", type=positive_int, metavar="MIN", help="time limit of a job (default 60)")
    parser.add_argument(
        "--slurm-mem", type=positive_int, metavar="GB", help="memory of a job (default: the partition's)"
    )
    parser.add_argument(
        "--slurm-cpus", type=positive_int, metavar="N", help="CPUs of a job (default: --threads-per-job, or 1)"
    )
    parser.add_argument(
        "--no-wait",
        action="store_true",
        help="return once the fold jobs are submitted (registration is awaited); `neurofusion report RUN` renders "
        "them when they finish, and re-running submits failed ones again and fits the baselines",
    )


def register(sub) -> None:
    e = sub.add_parser(
        "experiment",
        help="run a study YAML (cross-validated grid of bundles)",
        description="Run every cohort x model x augmentation x repeat x fold job of a study YAML (see "
        "bundles/experiments/README.md): train on the fold's training partition (validation carved from it), test on "
        "the held-out fold, then aggregate into RUN/results.csv, summary.csv (means with CIs), comparisons.csv "
        "(corrected paired tests), report.md and report.html. Re-running skips finished jobs. With --shard i/n "
        "(cluster array jobs) only every n-th job runs and the report is left to `neurofusion report RUN` until "
        "every shard is done.",
    )
    e.add_argument("study", help="study YAML")
    e.add_argument("--out", required=True, help="run folder (resumed if it exists)")
    e.add_argument("--shard", help="run only share i of n of the jobs, as i/n with 0 <= i < n (cluster arrays)")
    e.add_argument("--cohort", action="append", metavar="NAME=MANIFEST", help="replace a cohort's manifest")
    e.add_argument("--quiet", action="store_true", help="no progress bar")
    _add_repeats(e)
    _add_jobs(e)
    _add_cluster(e)
    _add_bootstrap(e)
    e.set_defaults(func=cmd_experiment)

    v = sub.add_parser(
        "variants",
        help="run a study once per recipe variant on the same folds and compare them",
        description="Run the study a variants YAML names once per variant (bundle keys added to the study's "
        "overrides; bundles/experiments/learnability.yaml), each into OUT/<variant>/ with its own report, on the same "
        "folds and one shared registration cache; then write OUT/variants.csv and variants.md: every variant's "
        "balanced accuracy with its CI over splits, AUC, collapsed jobs, and its paired difference from the reference "
        "variant (corrected resampled t-test). Re-running skips finished jobs.",
    )
    v.add_argument("variants", help="variants YAML")
    v.add_argument("--out", required=True, help="folder of the variants' runs (resumed if it exists)")
    v.add_argument("--cohort", action="append", metavar="NAME=MANIFEST", help="replace a cohort's manifest")
    v.add_argument("--quiet", action="store_true", help="no progress bar")
    _add_bootstrap(v)
    v.set_defaults(func=cmd_variants)

    r = sub.add_parser(
        "report",
        help="re-render the report of a study run",
        description="Aggregate whatever fold jobs of a study run folder are finished (for example after sharded "
        "cluster jobs, or while a study is still running), say which planned jobs are missing, and write "
        "results.csv, predictions.csv, summary.csv (means, CIs over folds, subject-bootstrap CIs, stability), "
        "comparisons.csv (corrected resampled t-tests), figures/*.png, report.md and a self-contained report.html.",
    )
    r.add_argument("run", help="run folder of `neurofusion experiment`")
    _add_bootstrap(r)
    r.set_defaults(func=cmd_report)

    d = sub.add_parser(
        "demo",
        help="synthetic cohort -> paper study -> report (what `make demo` runs)",
        description="Synthesise the demo cohort (29 paired subjects, 10 CN / 10 MCI / 9 AD, plus an MRI-only "
        "cohort), run the paper's study grid on it with cross-validation, print the summary and write the report. "
        "Re-running resumes.",
    )
    d.add_argument("--out", default="runs/demo", help="output folder (default runs/demo)")
    d.add_argument("--study", default=str(PAPER_STUDY), help="study YAML (default: the paper study)")
    d.add_argument("--n-mri-only", type=int, default=300, help="size of the MRI-only cohort (default 300)")
    d.add_argument("--seed", type=int, default=0, help="cohort seed (default 0)")
    _add_repeats(d)
    _add_jobs(d)
    _add_bootstrap(d)
    d.set_defaults(func=cmd_demo)
