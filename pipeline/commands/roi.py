"""``roi``: ROI time series of one BOLD run."""

from __future__ import annotations

import argparse
import os


def _cleaning(args: argparse.Namespace):
    """The cleaning the flags ask for (detrend, confounds, band-pass, z-score) as a function of the ROI series
    (metadata kept), or None; the TR and the confounds are read here, before the run is registered."""
    from pipeline.data.timing import resolve_tr
    from pipeline.transforms import DEFAULT_CONFOUNDS, TemporalClean, load_confounds

    if not (args.detrend or args.standardize or args.high_pass or args.low_pass or args.confounds):
        return None
    tr = resolve_tr(args.bold, args.tr, given_by="--tr") if (args.high_pass or args.low_pass) else None
    columns = args.confound_columns or DEFAULT_CONFOUNDS
    confounds = load_confounds(args.confounds, columns) if args.confounds else None
    clean = TemporalClean(args.detrend, args.high_pass, args.low_pass, "zscore_sample" if args.standardize else None)
    return lambda signals: clean(signals, tr=tr, confounds=confounds)


def cmd_roi(args: argparse.Namespace) -> int:
    import numpy as np
    import pandas as pd
    from monai.transforms import LoadImage

    from pipeline.io import atomic_path, atomic_write_text, check_not_input
    from pipeline.transforms import CheckImageFile, CheckImageValues, ROISignals
    from pipeline.transforms.fmri_registration import RegisterBOLD

    atlas_file = args.atlas if os.path.isfile(args.atlas) else None
    check_not_input(args.out, {"the BOLD run": args.bold, "the atlas": atlas_file, "the confounds TSV": args.confounds})
    register = RegisterBOLD(args.registration, cache_dir=args.registration_cache or None)
    run = CheckImageValues("fmri")(LoadImage(image_only=True, dtype=np.float32)(CheckImageFile("fmri")(args.bold)))
    clean = _cleaning(args)
    signals = ROISignals(args.atlas, empty=args.empty)(register(run))
    if clean:
        signals = clean(signals)
    values = np.asarray(signals)
    if args.out.endswith(".npy"):
        with atomic_path(args.out) as tmp, open(tmp, "wb") as handle:
            np.save(handle, values)
    else:
        table = pd.DataFrame(values.T, columns=signals.meta["roi_names"])
        atomic_write_text(args.out, table.to_csv(sep="\t", index=False))
    empty = signals.meta["roi_empty"]
    what = "dropped" if args.empty == "drop" else "all-zero rows"
    note = f"; {len(empty)} ROI(s) outside the field of view are {what}" if empty else ""
    print(f"wrote {values.shape[0]} ROIs x {values.shape[1]} volumes to {args.out}{note}")
    return 0


def register(sub) -> None:
    p = sub.add_parser(
        "roi",
        help="ROI time series of one BOLD run",
        description="Mean BOLD signal per atlas region of one 4D run (the atlas resampled, nearest neighbour, onto "
        "the run's grid; the same values as nilearn's NiftiLabelsMasker(strategy='mean', resampling_target='data')). "
        "As in the bundles (fmri_registration), a run not already in MNI space is first given its transform to the "
        "MNI152 template (its mean EPI registered affinely with ANTs; the run itself is not resampled); "
        "--registration none takes the run's own affine as MNI coordinates. "
        "Without cleaning options the raw means are written; --detrend, --confounds, --high-pass/--low-pass and "
        "--standardize clean them with nilearn.signal.clean. TSV: one row per volume, one column per ROI named after "
        "its region (roi_<label> when the atlas has no region table), in ascending label order; or .npy [R, T].",
    )
    p.add_argument("bold", help="4D BOLD NIfTI")
    p.add_argument("atlas", nargs="?", default="AAL", help="atlas name (AAL, AAL3, HCPEx) or label NIfTI (default AAL)")
    p.add_argument("--out", required=True, help="output .tsv or .npy")
    p.add_argument(
        "--empty",
        choices=("zero", "drop", "error"),
        default="zero",
        help="regions with no voxel in the run's field of view: all-zero column (default), dropped (as nilearn), "
        "or an error",
    )
    p.add_argument(
        "--registration",
        choices=("auto", "none"),
        default="auto",
        help="auto (default): register the run's mean EPI to MNI152 unless its file name says space-MNI... "
        "(fMRIPrep); none: the run is in MNI space already",
    )
    p.add_argument(
        "--registration-cache",
        default=os.environ.get("NEUROFUSION_REGISTRATION_CACHE"),
        help="folder caching registrations (default: $NEUROFUSION_REGISTRATION_CACHE, as the bundles)",
    )
    p.add_argument("--detrend", action="store_true", help="remove linear trends")
    p.add_argument("--confounds", help="confounds TSV to regress out (e.g. fMRIPrep desc-confounds_timeseries.tsv)")
    p.add_argument(
        "--confound-columns",
        nargs="+",
        metavar="COLUMN",
        help="confound columns or patterns (default: the 6 motion parameters, csf, white_matter)",
    )
    p.add_argument("--high-pass", type=float, help="high-pass cutoff (Hz)")
    p.add_argument("--low-pass", type=float, help="low-pass cutoff (Hz)")
    p.add_argument("--standardize", action="store_true", help="z-score each ROI")
    p.add_argument("--tr", type=float, help="repetition time in seconds (default: sidecar, then header)")
    p.set_defaults(func=cmd_roi)
