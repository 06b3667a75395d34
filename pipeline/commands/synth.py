"""``synth``: write a synthetic BIDS cohort and its manifest."""

from __future__ import annotations

import argparse

from pipeline.commands import positive_int


def cmd_synth(args: argparse.Namespace) -> int:
    from pipeline.study.executor import available_cores
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
        workers=args.workers or available_cores(),
    )
    print(f"wrote synthetic BIDS cohort to {args.out}; manifest: {manifest}")
    return 0


def register(sub) -> None:
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
    p.add_argument(
        "--workers",
        type=positive_int,
        metavar="N",
        help="processes synthesising subjects at once (default: the cores; the cohort does not depend on it)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_synth)
