"""``predict``: clinical-style inference with a trained bundle: QC, prediction, explanations, a report per subject."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

from pipeline.errors import CommandError

#: a BIDS subject (and session) in a file name: ``sub-001_ses-bl_T1w.nii.gz`` -> ``sub-001_ses-bl``
_BIDS_NAME = re.compile(r"sub-[A-Za-z0-9]+(_ses-[A-Za-z0-9]+)?")


def parse_overrides(pairs: list[str]) -> dict:
    """``KEY=VALUE`` bundle overrides (values read as YAML, keys as MONAI config ids such as ``qc#mri#voxel_mm``)."""
    from pipeline.io import load_yaml

    overrides = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise CommandError(f"--set {pair!r}: expected KEY=VALUE (e.g. mri_pixdim=[2,2,2])")
        overrides[key.strip()] = load_yaml(value)
    return overrides


def subject_name(args: argparse.Namespace) -> str:
    """``--subject``, else the BIDS subject (and session) of the input's file name, else its stem."""
    if args.subject:
        return args.subject
    source = Path(args.mri or args.fmri)
    found = _BIDS_NAME.search(source.name)
    return found.group(0) if found else source.name.removesuffix(".gz").removesuffix(".nii")


def manifest_subjects(path: str, modalities: list[str]) -> list:
    """Every manifest row as a subject, with the columns of the ``modalities`` the bundle reads (others are ignored,
    as the bundle's own ``inference.yaml`` ignores them, the ``diagnosis`` column included).

    The output folder is ``<subject_id>`` or ``<subject_id>_<session_id>`` made a plain folder name
    (:func:`~pipeline.inference.outputs.folder_name`); the outputs keep the ids as the manifest spells them. The
    images are checked by the predictor's QC (which also accepts a DICOM folder as ``mri``), not here.
    """
    from pipeline.data.datasets import read_rows
    from pipeline.inference import Subject
    from pipeline.inference.outputs import folder_name

    frame = read_rows(path, labelled=False, check_files=False)

    def column(row, name: str) -> Path | None:
        return Path(row[name]) if name in modalities and row.get(name) else None

    subjects = []
    for _, row in frame.iterrows():
        session = str(row.get("session_id", "") or "")
        subjects.append(
            Subject(
                name=folder_name(row["subject_id"] + (f"_{session}" if session else "")),
                mri=column(row, "mri"),
                fmri=column(row, "fmri"),
                tr=row.get("tr") or None,
                confounds=Path(row["confounds"]) if "fmri" in modalities and row.get("confounds") else None,
                subject_id=row["subject_id"],
                session_id=session,
            )
        )
    return subjects


def cmd_predict(args: argparse.Namespace) -> int:
    from pipeline.inference import InferenceBundle, Predictor, Subject, predict_subjects

    if not args.manifest and not (args.mri or args.fmri):
        raise CommandError("give --mri (and --fmri) for one subject, or --manifest for a batch")
    if args.manifest and (args.mri or args.fmri):
        raise CommandError("give either --manifest or --mri/--fmri, not both")
    for given in (args.mri, args.fmri, args.confounds, args.ckpt, args.manifest):
        if given and not Path(given).exists():
            raise CommandError(f"{given}: no such file or folder")
    bundle = InferenceBundle(args.bundle, args.ckpt, parse_overrides(args.set))
    if args.manifest:
        subjects = manifest_subjects(args.manifest, bundle.modalities)
    else:
        subjects = [
            Subject(subject_name(args), _path(args.mri), _path(args.fmri), args.tr, "--tr", _path(args.confounds))
        ]
    predictor = Predictor(bundle, allow_missing_fmri=args.allow_missing_fmri)
    records = predict_subjects(
        predictor, subjects, args.out, args.force, table=bool(args.manifest), progress=bool(args.manifest)
    )
    for subject, record in zip(subjects, records):
        notes = f" ({len(record['warnings'])} warnings)" if record["warnings"] else ""
        probability = record["probabilities"][record["predicted_class"]]
        print(
            f"{subject.name}: {record['predicted_class']} (p={probability:.2f}){notes} -> "
            f"{Path(args.out) / subject.name}"
        )
    if args.manifest:
        print(f"wrote {Path(args.out) / 'predictions.csv'}")
    return 0


def _path(value: str | None) -> Path | None:
    return Path(value) if value else None


def register(sub) -> None:
    p = sub.add_parser(
        "predict",
        help="predict subjects with a trained bundle: QC, probabilities, saliency, report",
        description="Run one trained bundle on one subject (--mri, --fmri) or a manifest (--manifest; weights loaded "
        "once). Each input is checked first (readable, dimensions, voxel size, field of view, orientation, atlas "
        "coverage, volumes, TR and its unit, finite and varying values; thresholds: the bundle's "
        "configs/inference.yaml, key qc): a hard failure refuses the subject with one line naming the file and "
        "writes nothing; soft findings become warnings. Per subject, OUT/<subject>/ gets prediction.json "
        "(probabilities, class, model, weights and input sha256, QC, warnings, timings), saliency.nii.gz (in the "
        "input MRI's space) and report.html; a batch also writes OUT/predictions.csv. The probabilities are those "
        "of `python -m monai.bundle run --config_file configs/inference.yaml`, with the input keys the weights were "
        "trained with (model_inputs.json beside them). Nothing is overwritten without --force, nothing is written "
        "outside OUT, and an OUT holding an input or inside an input BIDS dataset (derivatives/ excepted) is refused. "
        "A research tool: not for diagnosis.",
    )
    p.add_argument("--bundle", required=True, help="bundle folder (e.g. bundles/mri_fmri_fusion)")
    p.add_argument("--mri", help="T1 NIfTI, or a folder holding one DICOM series")
    p.add_argument("--fmri", help="4D resting-state BOLD NIfTI (the fused and fMRI bundles)")
    p.add_argument("--tr", type=float, help="repetition time of --fmri in seconds (default: sidecar, then header)")
    p.add_argument("--confounds", help="fMRIPrep-style confounds TSV of --fmri (regressed as in training)")
    p.add_argument("--subject", help="subject name, the output folder (default: sub-XX[_ses-YY] of the file name)")
    p.add_argument("--manifest", help="manifest CSV for a batch (columns subject_id, session_id, mri, fmri, tr, ...)")
    p.add_argument("--ckpt", help="weights (default: <bundle>/models/model.pt)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument(
        "--allow-missing-fmri",
        action="store_true",
        help="let the fused bundle predict from the MRI alone (flagged in every output; see the bundle's docs for "
        "the accuracy cost)",
    )
    p.add_argument(
        "--force",
        action="store_true",
        help="replace earlier outputs of predict: predictions.csv and subject folders holding only its own files "
        "(a folder holding anything else is never replaced)",
    )
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a key of the bundle's inference.yaml, as `monai.bundle run --KEY VALUE` does (repeatable; "
        "e.g. --set qc#fmri#min_volumes=40 --set mri_pixdim=[2,2,2])",
    )
    p.set_defaults(func=cmd_predict)
