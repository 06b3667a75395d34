"""The ``neurofusion`` command.

Every sub-command exits 0 only on success; errors print one line naming the file, row or key at fault
(``--debug`` shows the traceback).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
PAPER_STUDY = REPO_ROOT / "bundles" / "experiments" / "paper_study.yaml"


class CommandError(Exception):
    """A user-facing failure: printed as one line, exit status 1."""


# --- synth ----------------------------------------------------------------------------------------------


def cmd_synth(args: argparse.Namespace) -> int:
    from pipeline.synth import write_cohort

    manifest = write_cohort(
        args.out,
        n_cn=args.n_cn,
        n_mci=args.n_mci,
        n_ad=args.n_ad,
        n_mri_only=args.n_mri_only,
        seed=args.seed,
        profile=args.profile,
        structural_effect=args.structural_effect,
        functional_effect=args.functional_effect,
        progress=not args.quiet,
    )
    print(f"wrote synthetic BIDS cohort to {args.out}; manifest: {manifest}")
    return 0


def _add_synth(sub) -> None:
    p = sub.add_parser(
        "synth",
        help="write a synthetic BIDS cohort (real MNI152 anatomy, AAL labels) and its manifest",
        description="Write a realistic SYNTHETIC cohort as a BIDS dataset plus OUT/manifest.csv. Anatomy comes from "
        "nilearn's MNI152 templates and the AAL atlas; disease effects (atrophy, weakened default-mode coupling) are "
        "known, so a pipeline can be checked against them. Not real patients.",
    )
    p.add_argument("out", help="output folder (must not exist or be empty)")
    p.add_argument("--n-cn", type=int, default=10, help="paired (MRI + fMRI) CN subjects (default 10)")
    p.add_argument("--n-mci", type=int, default=10, help="paired MCI subjects (default 10)")
    p.add_argument("--n-ad", type=int, default=9, help="paired AD subjects (default 9)")
    p.add_argument("--n-mri-only", type=int, default=0, help="extra MRI-only subjects, classes balanced (default 0)")
    p.add_argument("--seed", type=int, default=0, help="random seed; the same seed writes the same cohort")
    p.add_argument("--profile", choices=["tiny", "demo", "full"], default="demo", help="resolution/length profile")
    p.add_argument("--structural-effect", type=float, default=1.0, help="scale of atrophy effects (0 = none)")
    p.add_argument("--functional-effect", type=float, default=1.0, help="scale of fMRI coupling effects (0 = none)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_synth)


# --- manifest / split -----------------------------------------------------------------------------------


def cmd_manifest_check(args: argparse.Namespace) -> int:
    from pipeline.manifest import read_manifest, validate_manifest

    frame = read_manifest(args.manifest)
    require = [m for m in (args.require or "").split(",") if m]
    problems = validate_manifest(frame, require_diagnosis=args.require_diagnosis, require=require)
    for problem in problems:
        print(problem)
    if problems:
        raise CommandError(f"{args.manifest}: {len(problems)} problem(s) found")
    counts = frame.assign(
        mri=[bool(v) for v in frame.get("mri", [""] * len(frame))],
        fmri=[bool(v) for v in frame.get("fmri", [""] * len(frame))],
    )
    print(f"{args.manifest}: OK, {len(frame)} rows, {frame['subject_id'].nunique()} subjects")
    if "diagnosis" in frame.columns:
        table = counts.groupby("diagnosis")[["mri", "fmri"]].sum().astype(int)
        print(table.to_string())
    return 0


def cmd_split(args: argparse.Namespace) -> int:
    from pipeline.io import atomic_write_text
    from pipeline.manifest import assign_folds, fold_manifest, load_manifest, write_manifest

    frame = load_manifest(args.manifest, require_diagnosis=True)
    folds = assign_folds(frame, args.folds, args.repeats, args.seed)
    out = Path(args.out)
    atomic_write_text(out / "folds.csv", folds.to_csv(index=False))
    for repeat in range(args.repeats):
        for fold in range(args.folds):
            part = fold_manifest(frame, folds, repeat, fold, args.val_fraction, args.seed)
            write_manifest(part, out / f"repeat-{repeat}_fold-{fold}" / "manifest.csv")
    print(
        f"{frame['subject_id'].nunique()} subjects -> {args.repeats} x {args.folds} folds; "
        f"wrote {out / 'folds.csv'} and one manifest per fold under {out}"
    )
    return 0


def _add_manifest(sub) -> None:
    p = sub.add_parser("manifest", help="check or build manifests", description="Check or build manifest CSVs.")
    msub = p.add_subparsers(dest="manifest_command", required=True, metavar="{check}")
    check = msub.add_parser(
        "check",
        help="validate a manifest",
        description="Validate a manifest: columns, diagnoses, duplicate subject/session rows, subjects in several "
        "partitions, and that every image exists, is readable NIfTI and has the right dimensionality. Every problem "
        "is printed with its file, line and subject; the exit status is 1 if any is found.",
    )
    check.add_argument("manifest", help="manifest CSV")
    check.add_argument("--require-diagnosis", action="store_true", help="every row needs a diagnosis")
    check.add_argument("--require", help="comma-separated modalities every row needs, e.g. mri,fmri")
    check.set_defaults(func=cmd_manifest_check)

    s = sub.add_parser(
        "split",
        help="subject-level stratified repeated k-fold",
        description="Assign subject-level, diagnosis-stratified, repeated k-fold splits (all sessions of a subject "
        "share a fold). Writes OUT/folds.csv and OUT/repeat-R_fold-F/manifest.csv with a split column "
        "(test = the fold, val = a stratified fraction of the rest, train = the remainder) ready for the bundles.",
    )
    s.add_argument("manifest", help="manifest CSV with diagnoses")
    s.add_argument("--folds", type=int, default=5, help="k (default 5)")
    s.add_argument("--repeats", type=int, default=1, help="repetitions with new shuffles (default 1)")
    s.add_argument("--seed", type=int, default=0, help="seed of the shuffles (default 0)")
    s.add_argument("--val-fraction", type=float, default=0.2, help="validation share of training subjects (0.2)")
    s.add_argument("--out", required=True, help="output folder")
    s.set_defaults(func=cmd_split)


# --- roi ------------------------------------------------------------------------------------------------


def cmd_roi(args: argparse.Namespace) -> int:
    import numpy as np
    import pandas as pd
    from monai.transforms import LoadImage

    from pipeline.io import atomic_path, atomic_write_text
    from pipeline.transforms import ROISignals, TemporalClean, resolve_tr

    run = LoadImage(image_only=True, dtype=np.float32)(args.bold)
    signals = ROISignals(args.atlas)(run)
    if args.detrend or args.standardize or args.high_pass or args.low_pass:
        tr = resolve_tr(args.bold, args.tr) if (args.high_pass or args.low_pass) else None
        cleaned = TemporalClean(
            args.detrend, args.high_pass, args.low_pass, "zscore_sample" if args.standardize else False
        )
        signals = type(signals)(cleaned(signals, tr=tr), meta=signals.meta)
    table = pd.DataFrame(np.asarray(signals).T, columns=signals.meta["roi_names"])
    if args.out.endswith(".npy"):
        with atomic_path(args.out) as tmp, open(tmp, "wb") as handle:
            np.save(handle, np.asarray(signals))
    else:
        atomic_write_text(args.out, table.to_csv(sep="\t", index=False, float_format="%.6g"))
    empty = signals.meta["roi_empty"]
    note = f"; {len(empty)} ROI(s) outside the field of view are all-zero columns" if empty else ""
    print(f"wrote {table.shape[1]} ROIs x {table.shape[0]} volumes to {args.out}{note}")
    return 0


def _add_roi(sub) -> None:
    p = sub.add_parser(
        "roi",
        help="ROI time series of one BOLD run",
        description="Mean BOLD signal per atlas region of one 4D run (the atlas resampled, nearest neighbour, onto "
        "the run's grid). Without cleaning options the raw means are written (as nilearn's NiftiLabelsMasker gives). "
        "TSV: one row per volume, one column per ROI named after its label; or .npy [R, T].",
    )
    p.add_argument("bold", help="4D BOLD NIfTI")
    p.add_argument("atlas", nargs="?", default="AAL", help="atlas name (AAL, AAL3, HCPEx) or label NIfTI (default AAL)")
    p.add_argument("--out", required=True, help="output .tsv or .npy")
    p.add_argument("--detrend", action="store_true", help="remove linear trends")
    p.add_argument("--standardize", action="store_true", help="z-score each ROI")
    p.add_argument("--high-pass", type=float, help="high-pass cutoff (Hz)")
    p.add_argument("--low-pass", type=float, help="low-pass cutoff (Hz)")
    p.add_argument("--tr", type=float, help="repetition time in seconds (default: sidecar, then header)")
    p.set_defaults(func=cmd_roi)


# --- experiment / report / demo -------------------------------------------------------------------------


def _parse_cohort_overrides(items: Sequence[str] | None) -> dict[str, str]:
    result = {}
    for item in items or []:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            raise CommandError(f"--cohort expects NAME=MANIFEST, got {item!r}")
        result[name] = path
    return result


def _print_summary(out: Path) -> None:
    import pandas as pd

    summary = pd.read_csv(out / "summary.csv")
    columns = ["cohort", "model", "augment", "n_jobs", "accuracy_mean", "balanced_accuracy_mean", "auc_ovr_mean"]
    print(summary[columns].to_string(index=False, float_format=lambda v: f"{v:.3f}"))


def cmd_experiment(args: argparse.Namespace) -> int:
    from pipeline.study.report import render
    from pipeline.study.runner import run_study
    from pipeline.study.spec import load_study

    study = load_study(args.study, _parse_cohort_overrides(args.cohort))
    missing = run_study(study, args.out, shard=args.shard, progress=not args.quiet)
    paths = render(args.out)
    _print_summary(Path(args.out))
    state = "complete" if not missing else f"{len(missing)} job(s) of other shards still missing"
    print(f"study {study.name}: {state}; report: {paths['html']}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from pipeline.study.report import render
    from pipeline.study.runner import missing_jobs

    paths = render(args.run)
    _print_summary(Path(args.run))
    missing = missing_jobs(Path(args.run))
    if missing:
        print(f"{len(missing)} planned job(s) not finished, e.g. {missing[0].job_dir}")
    print(f"report: {paths['html']} and {paths['markdown']}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from pipeline.study.report import render
    from pipeline.study.runner import run_study
    from pipeline.study.spec import load_study
    from pipeline.synth import write_cohort

    out = Path(args.out)
    cohort = out / "cohort"
    started = time.perf_counter()
    if not (cohort / "manifest.csv").is_file():
        print(f"[1/3] synthesising the demo cohort (29 paired + {args.n_mri_only} MRI-only subjects) in {cohort}")
        write_cohort(cohort, n_mri_only=args.n_mri_only, seed=args.seed, profile="demo", progress=True)
    else:
        print(f"[1/3] reusing the synthetic cohort in {cohort}")
    manifests = {"paired": str(cohort / "manifest_paired.csv"), "mri_only": str(cohort / "manifest_mri_only.csv")}
    study = load_study(args.study, manifests)
    print(f"[2/3] running {args.study} ({study.name}) into {out / 'study'}")
    run_study(study, out / "study", progress=True)
    paths = render(out / "study")
    print("[3/3] summary (mean over folds; chance balanced accuracy 0.333):")
    _print_summary(out / "study")
    print(f"report: {paths['html']}  (also {paths['markdown']})")
    print(f"demo finished in {(time.perf_counter() - started) / 60:.1f} min. The cohort is synthetic: see README.")
    return 0


def _add_study(sub) -> None:
    e = sub.add_parser(
        "experiment",
        help="run a study YAML (cross-validated grid of bundles)",
        description="Run every cohort x model x augmentation x repeat x fold job of a study YAML (see "
        "bundles/experiments/README.md): train on the fold's training partition (validation carved from it), test on "
        "the held-out fold, then aggregate into RUN/results.csv, summary.csv, report.md and report.html. Re-running "
        "skips finished jobs.",
    )
    e.add_argument("study", help="study YAML")
    e.add_argument("--out", required=True, help="run folder (resumed if it exists)")
    e.add_argument("--shard", help="run only share i of n of the jobs, as i/n with 0 <= i < n (cluster arrays)")
    e.add_argument("--cohort", action="append", metavar="NAME=MANIFEST", help="replace a cohort's manifest")
    e.add_argument("--quiet", action="store_true", help="no progress bar")
    e.set_defaults(func=cmd_experiment)

    r = sub.add_parser(
        "report",
        help="re-render the report of a study run",
        description="Aggregate whatever fold jobs of a study run folder are finished (for example after sharded "
        "cluster jobs, or while a study is still running), say which planned jobs are missing, and write "
        "results.csv, predictions.csv, summary.csv, report.md and a self-contained report.html with figures.",
    )
    r.add_argument("run", help="run folder of `neurofusion experiment`")
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
    d.set_defaults(func=cmd_demo)


# --- entry point ----------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="neurofusion",
        description="Classify CN / MCI / AD from structural MRI and resting-state fMRI with MONAI bundles: "
        "synthesise or check data, run cross-validated studies, and report them.",
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in (_add_synth, _add_manifest, _add_roi, _add_study):
        add(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    os.environ.setdefault("PYTHONWARNINGS", "ignore")
    try:
        return args.func(args)
    except KeyboardInterrupt:
        print("neurofusion: interrupted", file=sys.stderr)
        return 130
    except Exception as err:  # one clear line unless --debug
        if args.debug:
            raise
        print(f"neurofusion {args.command}: error: {_one_line(err)}", file=sys.stderr)
        return 1


def _one_line(err: BaseException) -> str:
    # MONAI wraps errors raised inside config expressions; the root cause is what the user needs
    while err.__cause__ is not None and "Failed to evaluate" in str(err):
        err = err.__cause__
    text = str(err).strip().splitlines()
    return text[0] if text else type(err).__name__


if __name__ == "__main__":
    sys.exit(main())
