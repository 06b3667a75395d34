"""``neurofusion bench infer``: warm latency of ``neurofusion predict`` for one subject at full resolution.

The fused bundle is loaded once (interpreter and bundle start-up are excluded, and reported apart); one subject, a
1 mm T1 and a 140-volume 3.3 mm BOLD run (the synthetic ADNI-like ``full`` profile) unless given, is then predicted
``--repeats`` times into a temporary folder, every output written as ``neurofusion predict`` writes it. The stages are
:class:`~pipeline.inference.Predictor`'s (QC, loading, the bundle's chain, the forward pass, saliency, ROI importance,
input hashes, output files); the total is the wall time of one prediction.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from pipeline.errors import CommandError

describe = (
    "clinical-style inference of the fused bundle on a full-resolution subject (1 mm T1, 140-volume BOLD): warm "
    "latency per stage and in total, bundle start-up apart (goal: at most 4 s on CPU, both registrations included)"
)
GOAL_SECONDS = 4.0  # with both registrations (N4 + ANTs affine of the T1, the mean EPI to MNI152)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--bundle", help="bundle folder (default: bundles/mri_fmri_fusion)")
    parser.add_argument(
        "--ckpt",
        help="weights (default: the bundle's models/model.pt, else the untrained network's: latency does not depend "
        "on the values)",
    )
    parser.add_argument("--t1", help="T1 NIfTI (default: a synthetic 1 mm T1 of the 'full' synth profile)")
    parser.add_argument("--bold", help="4D BOLD NIfTI (default: a synthetic 140-volume, 3.3 mm run, TR 3 s)")
    parser.add_argument("--tr", type=float, help="TR of --bold in seconds (default: sidecar, then header)")
    parser.add_argument("--repeats", type=int, default=5, help="warm predictions timed (default 5; median reported)")
    parser.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's choice)")


def synthetic_subject(folder: Path) -> tuple[Path, Path]:
    """Write a 1 mm T1 and a 140-volume, 3.3 mm, TR 3 s BOLD run of the synthetic ``full`` profile (an AD subject)."""
    import nibabel as nib

    from pipeline.synth.functional import sample_functional, synthesize_bold
    from pipeline.synth.profiles import PROFILES
    from pipeline.synth.structural import sample_structural, synthesize_t1

    profile = PROFILES["full"]
    rng = np.random.default_rng(0)
    t1, bold = folder / "sub-bench_T1w.nii.gz", folder / "sub-bench_task-rest_bold.nii.gz"
    nib.save(synthesize_t1(sample_structural(rng, 1.0, 1.0, "site01"), profile.t1_voxel_mm, rng), t1)
    params = sample_functional(rng, severity=0.7, effect=1.0, site="site01")
    nib.save(synthesize_bold(params, profile.fmri_voxel_mm, profile.n_volumes, profile.tr, rng), bold)
    return t1, bold


def untrained_weights(bundle_dir: Path, out: Path) -> Path:
    """The bundle network's initial weights, written as a training would write them."""
    import torch
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(bundle_dir / "configs" / "inference.yaml"))
    parser["bundle_root"] = str(bundle_dir)
    torch.save(parser.get_parsed_content("network_def").state_dict(), out)
    return out


def run(args: argparse.Namespace) -> int:
    import nibabel as nib
    import torch

    from pipeline.engine import bundle_root
    from pipeline.inference import InferenceBundle, Predictor, Subject

    if bool(args.t1) != bool(args.bold):
        raise CommandError("give both --t1 and --bold, or neither (a synthetic subject)")
    if args.ckpt and not Path(args.ckpt).is_file():
        raise CommandError(f"{args.ckpt}: no such weights file")
    if args.threads:
        torch.set_num_threads(args.threads)
    bundle_dir = Path(args.bundle or bundle_root("mri_fmri_fusion")).resolve()
    with tempfile.TemporaryDirectory(prefix="neurofusion-bench-infer-") as scratch:
        folder = Path(scratch)
        t1, bold = (Path(args.t1), Path(args.bold)) if args.t1 and args.bold else synthetic_subject(folder)
        weights = args.ckpt or bundle_dir / "models" / "model.pt"
        trained = Path(weights).is_file()
        if not trained:
            weights = untrained_weights(bundle_dir, folder / "untrained.pt")
        started = time.perf_counter()
        predictor = Predictor(InferenceBundle(bundle_dir, weights))
        startup = time.perf_counter() - started
        subject = Subject("sub-bench", t1, bold, args.tr, "--tr")
        started = time.perf_counter()
        predictor.predict(subject, folder / "cold")
        cold = time.perf_counter() - started
        stages: dict[str, list[float]] = {}
        totals = []
        for repeat in range(max(1, args.repeats)):
            started = time.perf_counter()
            record = predictor.predict(subject, folder / f"warm-{repeat}")
            totals.append(time.perf_counter() - started)
            for stage, seconds in record["timings_seconds"].items():
                stages.setdefault(stage, []).append(seconds)
        shapes = {name: tuple(nib.load(str(path)).shape) for name, path in (("T1", t1), ("BOLD", bold))}
        zooms = {name: nib.load(str(path)).header.get_zooms()[:3] for name, path in (("T1", t1), ("BOLD", bold))}
    print(
        f"bundle {bundle_dir.name}, weights: {'trained' if trained else 'untrained (same cost)'}, "
        f"torch threads {torch.get_num_threads()}, device {predictor.bundle.device}"
    )
    for name in shapes:
        voxel = " x ".join(f"{z:.3g}" for z in zooms[name])
        print(f"{name}: {' x '.join(str(n) for n in shapes[name])} voxels of {voxel} mm")
    print(f"start-up (bundle config, network, weights; excluded): {startup:.2f} s; first prediction {cold:.2f} s")
    print(f"warm prediction, median and best of {len(totals)}:")
    print(f"  {'stage':16} {'median ms':>10} {'best ms':>9}")
    for stage, values in stages.items():
        print(f"  {stage:16} {statistics.median(values) * 1000:10.0f} {min(values) * 1000:9.0f}")
    total = statistics.median(totals)
    print(f"  {'total':16} {total * 1000:10.0f} {min(totals) * 1000:9.0f}")
    verdict = "met" if total <= GOAL_SECONDS else "missed"
    print(f"goal: warm total <= {GOAL_SECONDS:g} s per subject: {verdict} ({total:.2f} s median)")
    return 0
