"""``preprocess``: write what the MRI model sees, as a NIfTI that overlays on the input in a viewer."""

from __future__ import annotations

import argparse
from pathlib import Path

from pipeline.commands import CommandError

#: bundle key -> argument of :func:`~pipeline.transforms.mri_steps`
BUNDLE_GRID_KEYS = {"mri_spatial_size": "spatial_size", "mri_pixdim": "pixdim"}


def bundle_mri_grid(bundle: str) -> dict:
    """``spatial_size`` and ``pixdim`` of a bundle's ``configs/train.yaml``, resolved by MONAI's ``ConfigParser``.

    Args:
        bundle: bundle folder, or the name of a bundle of this repository (``mri_cnn3d``).

    Raises:
        CommandError: no such bundle, or its train.yaml lacks a key.
    """
    from monai.bundle import ConfigParser

    from pipeline.engine import REPO_BUNDLES

    root = Path(bundle) if Path(bundle).is_dir() else REPO_BUNDLES / bundle
    config = root / "configs" / "train.yaml"
    if not config.is_file():
        raise CommandError(f"{bundle}: not a bundle folder or name (no configs/train.yaml)")
    parser = ConfigParser()
    parser.read_config(str(config))
    missing = [key for key in BUNDLE_GRID_KEYS if key not in parser]
    if missing:
        raise CommandError(f"{config}: no key {missing[0]!r}")
    return {option: parser.get_parsed_content(key) for key, option in BUNDLE_GRID_KEYS.items()}


def cmd_preprocess(args: argparse.Namespace) -> int:
    import numpy as np
    from monai.data import NibabelWriter

    from pipeline.io import atomic_path
    from pipeline.transforms import mri_transforms

    if not args.out.endswith((".nii", ".nii.gz")):
        raise CommandError(f"{args.out}: the output must be .nii or .nii.gz")
    grid = bundle_mri_grid(args.bundle) if args.bundle else {}
    grid.update({k: v for k, v in (("spatial_size", args.spatial_size), ("pixdim", args.pixdim)) if v})
    image = mri_transforms(track_meta=True, **grid)({"image": args.mri})["image"]
    writer = NibabelWriter(output_dtype=np.float32)
    writer.set_data_array(image, channel_dim=0)
    writer.set_metadata(image.meta, resample=False)
    with atomic_path(args.out, suffix=".nii.gz" if args.out.endswith(".gz") else ".nii") as tmp:
        writer.write(str(tmp), verbose=False)
    size = " x ".join(str(n) for n in image.shape[1:])
    zooms = " x ".join(f"{z:g}" for z in np.linalg.norm(image.affine.numpy()[:3, :3], axis=0))
    print(f"wrote {args.out}: {size} voxels of {zooms} mm, RAS, intensities in [0, 1]")
    return 0


def register(sub) -> None:
    p = sub.add_parser(
        "preprocess",
        help="write the T1 as the MRI model sees it (NIfTI with the right affine)",
        description="Run the MRI chain of the bundles on one T1 (evaluation mode: no augmentation) and write the "
        "result: intensities mapped to [0, 1], the head cropped, resampled onto a world-aligned RAS grid and "
        "padded/cropped to the model's size. The affine is the one the chain computed, so the output overlays on "
        "the input in a viewer. --spatial-size/--pixdim override the grid of --bundle's train.yaml "
        "(mri_spatial_size, mri_pixdim); without either, 48 x 56 x 48 voxels of 3 mm.",
    )
    p.add_argument("--mri", required=True, help="T1 NIfTI (.nii or .nii.gz, any orientation or datatype)")
    p.add_argument("--out", required=True, help="output .nii or .nii.gz")
    p.add_argument("--bundle", help="bundle folder or name (e.g. mri_cnn3d) whose train.yaml sets the grid")
    p.add_argument("--spatial-size", type=int, nargs=3, metavar=("X", "Y", "Z"), help="output grid in voxels")
    p.add_argument("--pixdim", type=float, nargs=3, metavar=("X", "Y", "Z"), help="output voxel size in mm")
    p.set_defaults(func=cmd_preprocess)
