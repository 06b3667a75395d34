"""``manifest check|from-bids|from-table``: check a manifest, or build one from BIDS or from a table."""

from __future__ import annotations

import argparse

from pipeline.errors import CommandError, ManifestError


def cmd_manifest_check(args: argparse.Namespace) -> int:
    from pipeline.data.manifest import read_manifest, validate_manifest

    frame = read_manifest(args.manifest)
    require = [m for m in (args.require or "").split(",") if m]
    problems = validate_manifest(
        frame, require_diagnosis=args.require_diagnosis, require=require, check_voxels=not args.headers_only
    )
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


def register(sub) -> None:
    p = sub.add_parser("manifest", help="check or build manifests", description="Check or build manifest CSVs.")
    msub = p.add_subparsers(dest="manifest_command", required=True, metavar="{check,from-bids,from-table}")
    check = msub.add_parser(
        "check",
        help="validate a manifest",
        description="Validate a manifest (CSV, or semicolon- or tab-delimited as spreadsheets export it): columns, "
        "diagnoses, duplicate subject/session rows, subjects in several partitions, subject IDs that differ only by "
        "case, one image under different subjects (the same file, or the same content); that every image exists, is "
        "readable NIfTI with the right dimensionality and a plausible grid, holds all the data its header promises "
        "(not truncated) and has usable voxels (no NaN or infinite values, not blank, a BOLD run changing over "
        "time); and that every fMRI run has a plausible TR in seconds (manifest, sidecar or header). Every problem is "
        "printed with its file, line and subject; the exit status is 1 if any is found.",
    )
    check.add_argument("manifest", help="manifest CSV")
    check.add_argument("--require-diagnosis", action="store_true", help="every row needs a diagnosis")
    check.add_argument("--require", help="comma-separated modalities every row needs, e.g. mri,fmri")
    check.add_argument(
        "--headers-only", action="store_true", help="check headers and file sizes only, without reading the voxels"
    )
    check.set_defaults(func=cmd_manifest_check)
    _add_manifest_builders(msub)


def _write_built(build, out: str) -> int:
    """Print unmapped labels or validation problems, or write the manifest and print its summary and notes."""
    from pipeline.data.tables import UnmappedLabelsError, summary, write_checked

    try:
        built = build()
    except UnmappedLabelsError as err:
        print("\n".join(err.lines()))
        raise
    try:
        write_checked(built, out)
    except ManifestError as err:
        print("\n".join(err.problems))
        raise CommandError(f"{out}: not written, {len(err.problems)} problem(s) found") from None
    print(f"wrote {out}: {summary(built.frame)}")
    for note in built.notes:
        print(f"note: {note}")
    return 0


def cmd_manifest_from_bids(args: argparse.Namespace) -> int:
    from pipeline.data.bids import DEFAULT_COVARIATES, bids_manifest
    from pipeline.data.tables import parse_covariates

    print(f"indexing {args.bids_dir} with pybids (large datasets take a while)", flush=True)
    return _write_built(
        lambda: bids_manifest(
            args.bids_dir,
            task=args.task,
            pick=args.pick,
            session=args.session,
            diagnosis_column=None if args.no_diagnosis else args.diagnosis_column,
            label_map=args.label_map,
            drop_unmapped=args.drop_unmapped,
            derivatives=args.derivatives or (),
            covariates=parse_covariates(args.covariates, DEFAULT_COVARIATES),
            space=args.space,
        ),
        args.out,
    )


def cmd_manifest_from_table(args: argparse.Namespace) -> int:
    from pipeline.data.tables import DEFAULT_TABLE_COVARIATES, parse_covariates, table_manifest

    return _write_built(
        lambda: table_manifest(
            args.table,
            args.images_root,
            subject_column=args.subject_column,
            visit_column=args.visit_column,
            diagnosis_column=None if args.no_diagnosis else args.diagnosis_column,
            pick=args.pick,
            label_map=args.label_map,
            drop_unmapped=args.drop_unmapped,
            covariates=parse_covariates(args.covariates, DEFAULT_TABLE_COVARIATES),
            mri_pattern=args.mri_pattern,
            fmri_pattern=args.fmri_pattern,
        ),
        args.out,
    )


_PICK_HELP = (
    "when several T1w or BOLD files qualify for one subject-session (runs, acquisitions, echoes, several pattern "
    "matches), ordered by file name with numbers compared as numbers (run-2 before run-10): take the first (default), "
    "the last, or all (one row per T1w x BOLD pair; session_id gets the name parts that tell the files apart, e.g. "
    "ses-01_bold-run-2; the subject stays one subject)"
)


def _add_label_options(p, diagnosis_default: str, where: str) -> None:
    p.add_argument("--out", required=True, help="manifest CSV to write (image paths relative to its folder)")
    p.add_argument("--pick", choices=["first", "last", "all"], default="first", help=_PICK_HELP)
    p.add_argument(
        "--diagnosis-column",
        default=diagnosis_default,
        help=f"diagnosis column of {where} (default {diagnosis_default})",
    )
    p.add_argument("--no-diagnosis", action="store_true", help="unlabelled data (inference only): no diagnosis column")
    p.add_argument(
        "--label-map",
        help="diagnosis label -> CN/MCI/AD, replacing the ADNI-style default (CN, SMC -> CN; EMCI, LMCI, MCI -> MCI; "
        'AD, Dementia -> AD): inline \'LABEL=CLASS,LABEL=CLASS\' or a JSON file {"LABEL": "CLASS"}; labels match '
        "ignoring case; map a label to nothing ('SMC=') to leave it out on purpose",
    )
    p.add_argument(
        "--drop-unmapped",
        action="store_true",
        help="leave out subjects whose diagnosis the map lacks (listed) instead of failing (the default)",
    )


def _add_manifest_builders(msub) -> None:
    b = msub.add_parser(
        "from-bids",
        help="build a manifest from a BIDS dataset (pybids)",
        description="Build a manifest from a BIDS dataset: one row per subject and session with a T1w and/or a "
        "resting-state BOLD run (a row may lack one modality). Diagnosis and age/sex/site come from sessions.tsv "
        "(per session) or else participants.tsv; the TR from the BOLD sidecar with BIDS inheritance. With "
        "--derivatives, preprocessed images (space-SPACE_desc-preproc, e.g. fMRIPrep) are preferred session by "
        "session and the run's confounds TSV goes to a 'confounds' column. Diagnoses the label map cannot map are "
        "listed with their subjects and the command fails unless --drop-unmapped. The manifest is validated before "
        "it is written; a summary (subjects per diagnosis x modality availability) and notes on everything left out "
        "are printed. See data_manifests/README.md.",
    )
    b.add_argument("bids_dir", help="BIDS dataset folder")
    _add_label_options(b, "diagnosis", "sessions.tsv or participants.tsv")
    b.add_argument("--task", default="rest", help="BOLD task label (default rest)")
    b.add_argument(
        "--session",
        default="all",
        help="all (default), first (the first session with images, labels in natural order: M06 before M12), or "
        "one session label (M00 or ses-M00)",
    )
    b.add_argument(
        "--derivatives",
        action="append",
        metavar="PATH",
        help="BIDS-derivatives folder (e.g. fMRIPrep output) whose preprocessed images are preferred; repeatable",
    )
    b.add_argument("--space", help="space entity of the preprocessed images (default MNI152NLin2009cAsym)")
    b.add_argument(
        "--covariates",
        help="manifest covariate = TSV column, e.g. 'age=age_at_scan,sex=sex' (default age=age,sex=sex,site=site; "
        "columns not found are noted; '' carries none)",
    )
    b.set_defaults(func=cmd_manifest_from_bids)

    t = msub.add_parser(
        "from-table",
        help="build a manifest from an ADNIMERGE-like table and an image folder",
        description="Build a manifest from a table with one row per subject visit (ADNIMERGE-like CSV, or TSV when "
        "named .tsv) joined to image files by path patterns: globs relative to --images-root in which {subject}, "
        "{visit} and {COLUMN} (any table column) are replaced by the row's values; only .nii/.nii.gz files count. "
        "Rows matching no image are left out and counted; one image matching several rows is an error. The TR is "
        "left empty (read at load time from the BOLD's JSON sidecar or NIfTI header). See data_manifests/README.md.",
    )
    t.add_argument("table", help="table CSV/TSV, one row per subject visit")
    t.add_argument("--images-root", required=True, help="folder the path patterns are relative to")
    _add_label_options(t, "DX", "the table")
    t.add_argument("--subject-column", default="PTID", help="subject id column (default PTID)")
    t.add_argument(
        "--visit-column", default="VISCODE", help="visit column, becomes session_id (default VISCODE; '' for none)"
    )
    t.add_argument(
        "--mri-pattern",
        help="where a row's T1 is (default '{subject}/{visit}/anat/*T1w.nii*'; '' for no MRI)",
    )
    t.add_argument(
        "--fmri-pattern",
        help="where a row's BOLD run is (default '{subject}/{visit}/func/*bold.nii*'; '' for no fMRI)",
    )
    t.add_argument(
        "--covariates",
        help="manifest covariate = table column (default age=AGE,sex=PTGENDER,site=SITE; columns not found are "
        "noted; '' carries none)",
    )
    t.set_defaults(func=cmd_manifest_from_table)
