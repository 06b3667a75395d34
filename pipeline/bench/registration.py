"""``neurofusion bench registration``: T1 affine registration to MNI152, ANTs at several levels vs SimpleITK.

Synthetic T1s (``neurofusion synth`` anatomy, each with its own planted pose) at 1 mm and 3 mm are registered by
each method; reported per method and input resolution: the median seconds per subject on one thread (N4 included
where the method runs it), the residual against the planted pose at the hippocampi and lateral ventricles (mm),
and whether a second run gives the same matrix. Then N4 by its fitting levels against a known bias: a smooth field
planted on the MNI152 T1 (real anatomy, free of bias of its own), compared with the field N4 finds inside the brain.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import nibabel as nib
import numpy as np

describe = (
    "T1 registration to MNI152: ANTs affine (N4, 3/4/6 mm levels) vs SimpleITK, seconds per subject on one thread "
    "and residual against the synthetic cohort's planted pose; N4's fitting levels against a bias planted on the "
    "MNI152 T1"
)
#: peak strengths (log units) of the smooth fields planted on the MNI152 T1: a mild and a strong bias
BIAS_STRENGTHS = (0.1, 0.3)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--subjects", type=int, default=3, help="synthetic subjects per resolution (default 3)")
    parser.add_argument(
        "--resolutions", type=float, nargs="+", default=[3.0, 1.0], help="T1 voxel sizes in mm (default 3 1)"
    )
    parser.add_argument(
        "--what", nargs="+", choices=("pose", "bias"), default=["pose", "bias"], help="parts to run (default both)"
    )
    parser.add_argument("--bias-seeds", type=int, default=4, help="planted fields per strength (default 4)")


def planted_template_to_subject(truth: Mapping) -> np.ndarray:
    """The pose ``neurofusion synth`` planted in a T1 (a ``synth_truth.tsv`` row), as a template-mm -> subject-mm
    RAS affine: rotation and head size about the template's brain centre, then the translation."""
    from scipy.spatial.transform import Rotation

    from pipeline.synth.anatomy import template_space

    rotation = Rotation.from_euler("xyz", [truth[f"rotation_deg_{i}"] for i in range(3)], degrees=True).as_matrix()
    linear = rotation @ np.diag([truth[f"head_scale_{i}"] for i in range(3)])
    centre = template_space().brain_centre
    matrix = np.eye(4)
    matrix[:3, :3] = linear
    matrix[:3, 3] = centre + np.array([truth[f"translation_mm_{i}"] for i in range(3)]) - linear @ centre
    return matrix


def landmarks_mm() -> list[np.ndarray]:
    """Template mm of the left and right hippocampus and lateral ventricle centres."""
    from pipeline.synth.anatomy import template_space

    space = template_space()
    return [centre for centre, _ in space.hippocampi] + [centre for centre, _ in space.ventricles]


def residual_mm(found: np.ndarray, planted: np.ndarray) -> float:
    """Largest distance between where two template-to-subject affines put the landmarks."""
    return max(float(np.linalg.norm((found @ [*p, 1])[:3] - (planted @ [*p, 1])[:3])) for p in landmarks_mm())


def _ants(level_mm: float, bias_correction: bool = True, **options) -> Callable[[np.ndarray, np.ndarray], np.ndarray]:
    from pipeline.transforms.registration import register_t1

    return lambda array, affine: (
        register_t1(array, affine, level_mm=level_mm, bias_correction=bias_correction, **options).matrix
    )


def _simpleitk(level_mm: float) -> Callable[[np.ndarray, np.ndarray], np.ndarray] | None:
    """SimpleITK's ImageRegistrationMethod: Mattes MI, affine, a 3-level pyramid, centred initialisation."""
    try:
        import SimpleITK as sitk
    except ImportError:
        return None
    from pipeline.transforms.registration import mni_template, ras_affine

    def to_sitk(array: np.ndarray, affine: np.ndarray):
        lps = np.diag([-1.0, -1.0, 1.0, 1.0]) @ affine
        spacing = np.linalg.norm(lps[:3, :3], axis=0)
        image = sitk.GetImageFromArray(np.ascontiguousarray(array.transpose(2, 1, 0), dtype=np.float32))
        image.SetSpacing(spacing.tolist())
        image.SetOrigin(lps[:3, 3].tolist())
        image.SetDirection((lps[:3, :3] / spacing).ravel().tolist())
        return image

    def register(array: np.ndarray, affine: np.ndarray) -> np.ndarray:
        sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(1)
        template = mni_template(level_mm).image
        fixed = to_sitk(template.numpy(), ras_affine(template))
        moving = to_sitk(array, affine)
        start = sitk.CenteredTransformInitializer(
            fixed, moving, sitk.AffineTransform(3), sitk.CenteredTransformInitializerFilter.MOMENTS
        )
        method = sitk.ImageRegistrationMethod()
        method.SetMetricAsMattesMutualInformation(32)
        method.SetMetricSamplingStrategy(method.RANDOM)
        method.SetMetricSamplingPercentage(0.2, seed=1)
        method.SetInterpolator(sitk.sitkLinear)
        method.SetOptimizerAsRegularStepGradientDescent(1.0, 1e-4, 200)
        method.SetOptimizerScalesFromPhysicalShift()
        method.SetShrinkFactorsPerLevel([4, 2, 1])
        method.SetSmoothingSigmasPerLevel([2, 1, 0])
        method.SetInitialTransform(start, inPlace=False)
        found = method.Execute(fixed, moving)
        composite = sitk.CompositeTransform(found)
        flat = composite.GetNthTransform(composite.GetNumberOfTransforms() - 1)
        matrix = sitk.AffineTransform(flat)
        linear = np.asarray(matrix.GetMatrix()).reshape(3, 3)
        centre, translation = np.asarray(matrix.GetCenter()), np.asarray(matrix.GetTranslation())
        lps = np.eye(4)
        lps[:3, :3] = linear
        lps[:3, 3] = translation + centre - linear @ centre
        flip = np.diag([-1.0, -1.0, 1.0, 1.0])
        return flip @ lps @ flip

    return register


def _methods() -> dict[str, Callable]:
    from pipeline.transforms.registration import AFFINE_ITERATIONS

    methods = {f"ANTs affine, N4, {level:g} mm": _ants(level) for level in (3.0, 4.0, 6.0)}
    methods["ANTs affine, all levels, N4, 4 mm"] = _ants(4.0, affine_iterations=AFFINE_ITERATIONS)
    methods["ANTs affine, no N4, 4 mm"] = _ants(4.0, bias_correction=False)
    simpleitk = _simpleitk(4.0)
    if simpleitk is not None:
        methods["SimpleITK affine (Mattes MI), 4 mm"] = simpleitk
    return methods


def synthetic_t1s(folder: Path, voxel_mm: float, count: int) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """(voxels, affine, planted pose) of ``count`` synthetic T1s at ``voxel_mm``."""
    import dataclasses

    import pandas as pd
    from monai.transforms import LoadImage

    from pipeline.synth import write_cohort
    from pipeline.synth.profiles import PROFILES

    profile = dataclasses.replace(PROFILES["demo"], name=f"bench-{voxel_mm:g}", t1_voxel_mm=voxel_mm)
    out = folder / f"t1-{voxel_mm:g}mm"
    write_cohort(out, n_cn=0, n_mci=0, n_ad=0, n_mri_only=count, seed=7, profile=profile, progress=False)
    truth = pd.read_csv(out / "synth_truth.tsv", sep="\t")
    subjects = []
    for _, row in truth.iterrows():
        sid = row["participant_id"]
        image = LoadImage(image_only=True, ensure_channel_first=True)(str(out / sid / "anat" / f"{sid}_T1w.nii.gz"))
        subjects.append((image[0].numpy(), image.affine.numpy(), planted_template_to_subject(row)))
    return subjects


def _measure(register: Callable, subjects: list) -> tuple[float, float, float, float]:
    """Median seconds a registration (the scan already in memory), median and worst residual, and the largest
    matrix change on a second run."""
    seconds, residuals = [], []
    for array, affine, planted in subjects:
        started = time.perf_counter()
        found = register(array, affine)
        seconds.append(time.perf_counter() - started)
        residuals.append(residual_mm(found, planted))
    array, affine, _ = subjects[0]
    repeat = float(np.abs(register(array, affine) - register(array, affine)).max())
    return statistics.median(seconds), statistics.median(residuals), max(residuals), repeat


def bias_left_over(n4_iterations: Sequence[int], strength: float, seed: int) -> tuple[float, float]:
    """Plant a smooth field (``seed``, peak ``strength`` log units) on the MNI152 T1 and register it as the T1 chain
    does, with N4 fitting ``n4_iterations`` (none: no N4); returns the spread of (N4's log field - the planted one)
    inside the brain over the planted field's spread (0: recovered exactly; 1: no better than leaving it), and the
    registration's seconds."""
    from nibabel.processing import resample_from_to
    from nilearn.datasets import load_mni152_brain_mask, load_mni152_template

    from pipeline.synth.structural import bias_field
    from pipeline.transforms.registration import register_t1

    t1, brain = load_mni152_template(resolution=1), load_mni152_brain_mask(resolution=1)
    planted = bias_field(np.random.default_rng(seed).normal(size=9), strength, t1.shape, t1.affine)
    scan = np.asarray(t1.dataobj, dtype=np.float32) * 1000 * planted  # a scanner's intensity range
    started = time.perf_counter()
    found = register_t1(scan, t1.affine, bias_correction=bool(n4_iterations), n4_iterations=n4_iterations)
    seconds = time.perf_counter() - started
    shape = t1.shape if found.bias is None else found.bias.shape
    grid = (shape, t1.affine if found.bias is None else found.bias_affine)
    truth = np.asarray(resample_from_to(nib.Nifti1Image(np.log(planted), t1.affine), grid, order=1).dataobj)
    inside = np.asarray(resample_from_to(brain, grid, order=0).dataobj) > 0
    estimate = np.zeros(shape) if found.bias is None else np.log(found.bias)
    return float(np.std((estimate - truth)[inside]) / np.std(truth[inside])), seconds


def _bias_table(seeds: int) -> None:
    from pipeline.transforms.registration import N4_ITERATIONS

    schedules = [(25,), (50,), (50,) * 2, (50,) * 4]  # the last: ANTsPy's default
    methods = {
        f"N4, {len(s)} level{'s' * (len(s) > 1)} of {s[0]} iterations" + " (default)" * (s == N4_ITERATIONS): s
        for s in schedules
    }
    print(f"\nN4 against a smooth bias planted on the MNI152 T1 (1 mm), {seeds} fields a strength, 4 mm level")
    print(f"{'method':42} {'s/subject':>10} " + " ".join(f"{f'left ±{s:g}':>20}" for s in BIAS_STRENGTHS))
    for name, iterations in [*methods.items(), ("no N4", ())]:
        rows = [[bias_left_over(iterations, s, seed) for seed in range(seeds)] for s in BIAS_STRENGTHS]
        seconds = statistics.median(t for row in rows for _, t in row)
        cells = [
            f"{statistics.mean(r for r, _ in row):.2f} ({min(r for r, _ in row):.2f}-{max(r for r, _ in row):.2f})"
            for row in rows
        ]
        print(f"{name:42} {seconds:10.2f} " + " ".join(f"{cell:>20}" for cell in cells), flush=True)
    print(
        "left: spread of N4's log field minus the planted one inside the brain, over the planted field's (mean, range)"
    )


def _pose_table(args: argparse.Namespace) -> None:
    methods = _methods()
    if not any(name.startswith("SimpleITK") for name in methods):
        print("SimpleITK is not installed (pip install SimpleITK): ANTs only")
    print(f"{'method':36} {'T1':>6} {'s/subject':>10} {'residual median':>16} {'worst':>7} {'rerun change':>13}")
    with tempfile.TemporaryDirectory() as folder:
        for voxel_mm in args.resolutions:
            subjects = synthetic_t1s(Path(folder), voxel_mm, max(1, args.subjects))
            for name, register in methods.items():
                seconds, median, worst, repeat = _measure(register, subjects)
                print(
                    f"{name:36} {voxel_mm:4g}mm {seconds:10.2f} {median:13.2f} mm {worst:5.2f} mm {repeat:13.2g}",
                    flush=True,
                )
    print("one thread (ITK and torch); residual: largest distance over hippocampi and lateral ventricles")


def run(args: argparse.Namespace) -> int:
    import torch

    if "bias" in args.what and args.bias_seeds < 1:
        raise ValueError(f"--bias-seeds must be at least 1, got {args.bias_seeds}")
    torch.set_num_threads(1)
    if "pose" in args.what:
        _pose_table(args)
    if "bias" in args.what:
        _bias_table(args.bias_seeds)
    return 0
