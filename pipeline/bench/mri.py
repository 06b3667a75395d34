"""``neurofusion bench mri``: the MRI chain's one lazy resample against MONAI's eager chain, cached against uncached
epochs, and the memory a cache takes for a large MRI-only cohort.

Eager and lazy run the same steps (:func:`~pipeline.transforms.mri_steps` with ``lazy`` False / True and
``registration="none"``: a registered T1 is resampled once by construction) on the same loaded scan (file decoding
excluded) with the same random affine, so the ratio is the price of resampling at every spatial step. Epochs run the
bundles' training chain (registration included), with and without augmentation, over a synthetic demo-resolution
cohort and over the timed T1s.
Cache memory is measured in a fresh process per cache kind (peak resident set size above the process before caching).
"""

from __future__ import annotations

import argparse
import contextlib
import multiprocessing
import os
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

from pipeline.bench import best_time

describe = (
    "MRI chain: eager vs lazy (one resample) on full-resolution 1 mm T1s, cached vs uncached training epoch, and "
    "peak memory of the cache for 1,000 MRI-only subjects"
)

AFFINE_ONLY = {"affine": {"prob": 1.0}, "bias_field": {"prob": 0.0}, "noise": {"prob": 0.0}, "contrast": {"prob": 0.0}}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--t1",
        action="append",
        help="T1 NIfTI to time (repeatable; default: nilearn's MNI152 1 mm T1 stored RAS, LPS and 12-degree oblique)",
    )
    parser.add_argument("--cohort", type=int, default=12, help="demo-resolution subjects timed per epoch (default 12)")
    parser.add_argument(
        "--subjects", type=int, default=1000, help="MRI-only subjects cached for the memory figure (default 1000)"
    )
    parser.add_argument("--repeats", type=int, default=3, help="timed runs of each; the best is reported")
    parser.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's choice)")
    parser.add_argument(
        "--quick", action="store_true", help="2 mm template, no synthetic cohort, in-memory cache only: checks it runs"
    )


def _template_variants(folder: Path, resolution: int) -> list[Path]:
    """nilearn's MNI152 T1 written RAS, LPS and on a 12-degree oblique grid (the same head in world space)."""
    import nibabel as nib
    from nibabel.processing import resample_from_to
    from nilearn.datasets import load_mni152_template

    template = load_mni152_template(resolution=resolution)
    ras = nib.Nifti1Image(template.get_fdata().astype(np.float32), template.affine)
    to_lps = nib.orientations.ornt_transform(nib.io_orientation(ras.affine), nib.orientations.axcodes2ornt("LPS"))
    lps = ras.as_reoriented(to_lps)
    tilt = np.deg2rad(12)
    rotation = np.eye(4)
    rotation[1:3, 1:3] = [[np.cos(tilt), -np.sin(tilt)], [np.sin(tilt), np.cos(tilt)]]
    oblique = resample_from_to(ras, (ras.shape, rotation @ ras.affine), order=1)
    paths = []
    for name, image in (("ras", ras), ("lps", lps), ("oblique", oblique)):
        paths.append(folder / f"mni152_{resolution}mm_{name}.nii.gz")
        nib.save(nib.Nifti1Image(image.get_fdata(dtype=np.float32), image.affine), paths[-1])
    return paths


def _compare(path: Path, grid: dict, repeats: int) -> tuple[float, float, float, float]:
    """(eager seconds, lazy seconds, correlation, mean |difference|) of the training chain on one loaded scan."""
    from pipeline.transforms import mri_transforms

    chains = {
        lazy: mri_transforms(train=True, augment=True, augmentation=AFFINE_ONLY, lazy=lazy, registration="none", **grid)
        for lazy in (False, True)
    }
    loaded = chains[True].transforms[0]({"image": str(path)})

    def run(lazy: bool):
        chains[lazy].set_random_state(0)
        return chains[lazy](dict(loaded), start=1)["image"]

    eager, lazy = run(False).flatten(), run(True).flatten()
    correlation = float(np.corrcoef(eager.numpy(), lazy.numpy())[0, 1])
    mean = float((eager - lazy).abs().mean())
    return best_time(lambda: run(False), repeats), best_time(lambda: run(True), repeats), correlation, mean


def _eager_vs_lazy(paths: list[Path], grids: dict[str, dict], repeats: int) -> None:
    print("eager (a resample per spatial step) vs lazy (one resample): training chain with the random affine on,")
    print("timed from the loaded scan; agreement = correlation and mean |difference| of the outputs in [0, 1]")
    print(f"{'T1':34} {'grid':22} {'eager ms':>9} {'lazy ms':>8} {'ratio':>6}  agreement")
    for path in paths:
        for name, grid in grids.items():
            eager, lazy, correlation, mean = _compare(path, grid, repeats)
            print(
                f"{path.name[:34]:34} {name:22} {eager * 1000:9.0f} {lazy * 1000:8.0f} {eager / lazy:5.2f}x  "
                f"r={correlation:.4f}, {mean:.4f}"
            )


def _cohort(folder: Path, n: int) -> list[dict]:
    from pipeline.data.datasets import manifest_datalist
    from pipeline.synth import write_cohort

    manifest = write_cohort(folder / "cohort", n_cn=0, n_mci=0, n_ad=0, n_mri_only=n, profile="demo", progress=False)
    return manifest_datalist(manifest, None, ["mri"])


def _epoch(dataset) -> None:
    for index in range(len(dataset)):
        dataset[index]


def bundle_chain(augment: bool, registration_cache: str | Path):
    """The bundles' MRI training chain with each T1's registration cached in ``registration_cache``, as a study
    caches it: 'uncached' below means the chain's own cache is off, not that every epoch registers again."""
    from pipeline.transforms import subject_transforms

    options = {"registration_options": {"cache_dir": str(registration_cache)}}
    return subject_transforms(["mri"], train=True, augment=augment, mri=options)


def _epoch_times(data: list[dict], augment: bool, folder: Path, repeats: int) -> tuple[float, float, float]:
    """Seconds per subject of an uncached, in-memory-cached and disk-cached training epoch."""
    from pipeline.data.datasets import make_dataset

    chain = bundle_chain(augment, folder / "registration")
    uncached = best_time(lambda: _epoch(make_dataset(data, chain, cache_rate=0.0)), repeats)
    memory = make_dataset(data, chain, cache_rate=1.0)
    disk = make_dataset(data, chain, cache_dir=tempfile.mkdtemp(dir=folder))
    _epoch(disk)  # fills the disk cache
    cached, persistent = (best_time(lambda d=d: _epoch(d), repeats) for d in (memory, disk))
    return uncached / len(data), cached / len(data), persistent / len(data)


def _cached_vs_uncached(cohorts: dict[str, list[dict]], folder: Path, repeats: int) -> None:
    print(f"\ntraining epoch with the bundles' chain, ms/subject, best of {repeats}; ratio = uncached / cached")
    header = ("subjects", "augmentation", "uncached", "in memory", "ratio", "on disk", "ratio")
    print("{:30} {:13} {:>9} {:>10} {:>7} {:>8} {:>7}".format(*header))
    for name, data in cohorts.items():
        for augment in (False, True):
            uncached, cached, persistent = _epoch_times(data, augment, folder, repeats)
            print(
                f"{name:30} {'default' if augment else 'none':13} {uncached * 1000:9.2f} {cached * 1000:10.2f} "
                f"{uncached / cached:6.0f}x {persistent * 1000:8.2f} {uncached / persistent:6.0f}x"
            )
    print("(augmentation 'none' is the bundles' default, augment: false; 'default' is augment: true)")


def _memory_mib(field: str) -> float:
    """``VmRSS`` (resident now) or ``VmHWM`` (peak resident) of this process, in MiB (Linux ``/proc``)."""
    line = next(line for line in Path("/proc/self/status").read_text().splitlines() if line.startswith(field + ":"))
    return int(line.split()[1]) / 1024


def cache_memory(
    files: list[str], n: int, cache_dir: str | None, registration_cache: str
) -> tuple[float, float, float]:
    """In a fresh process: (peak RSS above the warmed-up process's RSS in MiB, seconds, MiB on disk) of caching ``n``
    subjects cycling over ``files`` with the bundles' training chain (an in-memory cache without ``cache_dir``; each
    file registered once, into ``registration_cache``)."""
    warnings.filterwarnings("ignore")
    from pipeline.data.datasets import make_dataset

    chain = bundle_chain(True, registration_cache)
    data = [{"image": files[i % len(files)], "subject_id": f"sub-{i:05d}"} for i in range(n)]
    make_dataset(data[:1], chain, cache_rate=0.0)[0]  # imports, allocator and template warm-up
    Path("/proc/self/clear_refs").write_text("5")  # peak resident size := resident size now
    before = _memory_mib("VmRSS")
    started = time.perf_counter()
    dataset = make_dataset(data, chain, cache_rate=1.0, cache_dir=cache_dir)
    if cache_dir:
        _epoch(dataset)
    seconds = time.perf_counter() - started
    disk = sum(p.stat().st_size for p in Path(cache_dir).glob("*.pt")) / 2**20 if cache_dir else 0.0
    return _memory_mib("VmHWM") - before, seconds, disk


def _cache_memory_report(files: list[str], n: int, folder: Path, quick: bool) -> None:
    print(f"\ncache of {n} MRI-only subjects (cycling over {len(files)} T1s) on the model grid, 48x56x48 float32 =")
    print("504 KiB a volume; each cache is built in a fresh process:")
    kinds = (
        ("in memory (CacheDataset)", None, {}),
        ("  same, MALLOC_MMAP_THRESHOLD_=131072", None, {"MALLOC_MMAP_THRESHOLD_": "131072"}),
        ("on disk (PersistentDataset)", str(folder / "persistent"), {}),
    )
    for name, cache_dir, environment in kinds[:1] if quick else kinds:
        with _environment(environment), multiprocessing.get_context("spawn").Pool(1) as pool:
            grown, seconds, disk = pool.apply(cache_memory, (files, n, cache_dir, str(folder / "registration")))
        on_disk = f", {disk:.0f} MiB on disk" if cache_dir else ""
        print(
            f"{name:38} peak RSS +{grown:6.0f} MiB = {grown * 1024 / n:5.0f} KiB/subject{on_disk} "
            f"({seconds:.0f} s to fill)"
        )
    print("(glibc keeps the freed per-subject temporaries between cached volumes unless its mmap threshold is fixed)")


@contextlib.contextmanager
def _environment(variables: dict[str, str]):
    """Environment variables set while a child process starts."""
    saved = {name: os.environ.get(name) for name in variables}
    os.environ.update(variables)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name)
            else:
                os.environ[name] = value


def run(args: argparse.Namespace) -> int:
    import torch

    warnings.filterwarnings("ignore")
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} intra-op thread(s)\n")
    repeats = max(1, args.repeats)
    resolution = 2 if args.quick else 1
    grids = {
        "model 48x56x48 @ 3 mm": {"spatial_size": (48, 56, 48), "pixdim": (3.0, 3.0, 3.0)},
        f"full {'80x96x80' if args.quick else '160x192x160'} @ {resolution} mm": {
            "spatial_size": (80, 96, 80) if args.quick else (160, 192, 160),
            "pixdim": (float(resolution),) * 3,
        },
    }
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        paths = [Path(p) for p in args.t1] if args.t1 else _template_variants(folder, resolution)
        _eager_vs_lazy(paths, grids, repeats)
        cohorts = {"the T1s above": [{"image": str(p)} for p in paths]}
        if not args.quick:
            cohorts = {f"{args.cohort} synthetic demo (3 mm)": _cohort(folder, args.cohort), **cohorts}
        _cached_vs_uncached(cohorts, folder, repeats)
        memory_cohort = next(iter(cohorts.values()))
        _cache_memory_report([item["image"] for item in memory_cohort], args.subjects, folder, args.quick)
    return 0
