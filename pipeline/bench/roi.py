"""``neurofusion bench roi``: ROI time series, nilearn's ``NiftiLabelsMasker`` vs :class:`ROISignals`.

Both read the same in-memory float32 run (file decoding is excluded from both); nilearn's masker resamples the
atlas on every call, ours caches it per grid, so our first (cold) call is reported apart from the best warm one.
"""

from __future__ import annotations

import argparse
import tempfile
import time
import tracemalloc
import warnings
from pathlib import Path

import numpy as np

from pipeline.bench import best_time

describe = (
    "ROI time series of a 140-volume ~3 mm run with AAL: nilearn's NiftiLabelsMasker vs neurofusion's ROISignals "
    "(times, ratio, agreement, peak memory)"
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--bold", help="4D BOLD NIfTI (default: a synthetic 140-volume, 3.3 mm run of the 'full' synth profile)"
    )
    parser.add_argument("--atlas", default="AAL", help="atlas name or label NIfTI (default AAL)")
    parser.add_argument("--repeats", type=int, default=3, help="timed calls of each; the best is reported")


def _synthetic_run(folder: Path) -> Path:
    """Write one resting-state run of the ADNI-like ``full`` profile (3.3 mm, 140 volumes, TR 3 s)."""
    import nibabel as nib

    from pipeline.synth.functional import sample_functional, synthesize_bold
    from pipeline.synth.profiles import PROFILES

    profile = PROFILES["full"]
    rng = np.random.default_rng(0)
    params = sample_functional(rng, severity=0.0, effect=1.0, site="site01")
    path = folder / "bold.nii"
    nib.save(synthesize_bold(params, profile.fmri_voxel_mm, profile.n_volumes, profile.tr, rng), path)
    return path


def _peak_mib(function) -> float:
    """Peak memory allocated by Python and NumPy during one call (MiB)."""
    tracemalloc.start()
    try:
        function()
        return tracemalloc.get_traced_memory()[1] / 2**20
    finally:
        tracemalloc.stop()


def _compare(path: Path, atlas_name: str, repeats: int) -> None:
    import nibabel as nib
    from monai.transforms import LoadImage
    from nilearn.maskers import NiftiLabelsMasker

    from pipeline.data.atlas import load_atlas
    from pipeline.transforms import ROISignals
    from pipeline.transforms.roi import labels_on_grid

    run = LoadImage(image_only=True, dtype=np.float32)(str(path))
    image = nib.Nifti1Image(run.numpy(), nib.load(str(path)).affine)
    atlas = load_atlas(atlas_name)
    signals = ROISignals(atlas_name, empty="drop")

    def masker() -> np.ndarray:
        return NiftiLabelsMasker(atlas.image, strategy="mean", resampling_target="data").fit_transform(image)

    labels_on_grid.cache_clear()
    started = time.perf_counter()
    ours = signals(run).numpy()
    cold = time.perf_counter() - started
    warm = best_time(lambda: signals(run), repeats)
    reference = masker().T
    theirs = best_time(masker, repeats)
    difference = np.abs(ours - reference).max() if ours.shape == reference.shape else float("nan")
    print(f"run: {tuple(run.shape)} float32 ({run.numel() * 4 / 2**20:.0f} MiB), atlas {atlas_name}: {len(ours)} ROIs")
    print(f"{'nilearn NiftiLabelsMasker.fit_transform':40} {theirs * 1000:8.1f} ms  best of {repeats}")
    print(f"{'neurofusion ROISignals, warm':40} {warm * 1000:8.1f} ms  best of {repeats}  ratio {theirs / warm:.1f}x")
    print(
        f"{'neurofusion ROISignals, cold (+ atlas)':40} {cold * 1000:8.1f} ms  first call  ratio {theirs / cold:.1f}x"
    )
    scale = np.abs(reference).max()
    print(f"max |ours - nilearn| = {difference:.2g}, signal up to {scale:.4g} (nilearn rounds to float32)")
    print(
        f"peak memory: ours {_peak_mib(lambda: signals(run)):.1f} MiB, nilearn {_peak_mib(masker):.1f} MiB "
        f"(a float64 copy of the run would be {run.numel() * 8 / 2**20:.0f} MiB)"
    )


def run(args: argparse.Namespace) -> int:
    warnings.filterwarnings("ignore")  # nilearn reports dropped labels and deprecations on every call
    with tempfile.TemporaryDirectory() as folder:
        path = Path(args.bold) if args.bold else _synthetic_run(Path(folder))
        _compare(path, args.atlas, max(1, args.repeats))
    return 0
