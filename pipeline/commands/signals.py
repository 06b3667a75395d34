"""``roi``: ROI time series of one BOLD run."""

from __future__ import annotations

import argparse


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


def register(sub) -> None:
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
