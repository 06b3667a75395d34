"""Data commands: ``synth``, ``manifest check``, ``split``."""

from __future__ import annotations

import argparse
from pathlib import Path

from pipeline.commands import CommandError


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


def register(sub) -> None:
    _add_synth(sub)
    _add_manifest(sub)
