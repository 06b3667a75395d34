"""``split``: subject-level, diagnosis-stratified repeated k-fold manifests."""

from __future__ import annotations

import argparse
from pathlib import Path


def cmd_split(args: argparse.Namespace) -> int:
    from pipeline.data.manifest import assign_folds, fold_manifest, load_manifest, write_fold_manifest
    from pipeline.io import atomic_write_text

    frame = load_manifest(args.manifest, require_diagnosis=True)
    folds = assign_folds(frame, args.folds, args.repeats, args.seed)
    out = Path(args.out)
    parts = {  # every fold is built before anything is written: a refused split leaves no partial output
        out / f"repeat-{repeat}_fold-{fold}" / "manifest.csv": fold_manifest(
            frame, folds, repeat, fold, args.val_fraction, args.seed
        )
        for repeat in range(args.repeats)
        for fold in range(args.folds)
    }
    atomic_write_text(out / "folds.csv", folds.to_csv(index=False))
    for path, part in parts.items():
        write_fold_manifest(part, path)
    print(
        f"{frame['subject_id'].nunique()} subjects -> {args.repeats} x {args.folds} folds; "
        f"wrote {out / 'folds.csv'} and one manifest per fold under {out}"
    )
    return 0


def register(sub) -> None:
    p = sub.add_parser(
        "split",
        help="subject-level stratified repeated k-fold",
        description="Assign subject-level, diagnosis-stratified, repeated k-fold splits (all sessions of a subject "
        "share a fold). Writes OUT/folds.csv and OUT/repeat-R_fold-F/manifest.csv with a split column "
        "(test = the fold, val = a stratified fraction of the rest, train = the remainder) ready for the bundles: "
        "image paths absolute as the manifest gives them (symbolic links such as DataLad's kept, not resolved) and "
        "each run's TR (manifest, sidecar or header) in the tr column.",
    )
    p.add_argument("manifest", help="manifest CSV with diagnoses")
    p.add_argument("--folds", type=int, default=5, help="k (default 5)")
    p.add_argument("--repeats", type=int, default=1, help="repetitions with new shuffles (default 1)")
    p.add_argument("--seed", type=int, default=0, help="seed of the shuffles (default 0)")
    p.add_argument("--val-fraction", type=float, default=0.2, help="validation share of training subjects (0.2)")
    p.add_argument("--out", required=True, help="output folder")
    p.set_defaults(func=cmd_split)
