"""``preprocess``: write what the MRI model sees, a NIfTI that overlays on the template (or the input) in a viewer."""

from __future__ import annotations

import argparse
from pathlib import Path

from pipeline.errors import CommandError

#: bundle key -> argument of :func:`~pipeline.transforms.mri_steps`
BUNDLE_GRID_KEYS = {"mri_spatial_size": "spatial_size", "mri_pixdim": "pixdim"}
#: optional bundle keys (a bundle written before spatial normalisation lacks them) -> argument of ``mri_steps``
BUNDLE_REGISTRATION_KEYS = {"mri_registration": "registration", "mri_registration_options": "registration_options"}


def bundle_mri_grid(bundle: str) -> dict:
    """``spatial_size``, ``pixdim`` and the registration settings of a bundle's ``configs/train.yaml``, resolved by
    MONAI's ``ConfigParser``; those its trained ``models/model.pt`` was trained with, where it records them
    (:mod:`pipeline.engine.model_inputs`).

    Args:
        bundle: bundle folder, or the name of a bundle of this repository (``mri_cnn3d``).

    Raises:
        CommandError: no such bundle, or its train.yaml lacks a key.
    """
    from monai.bundle import ConfigParser

    from pipeline.engine import REPO_BUNDLES, recorded_inputs

    root = Path(bundle) if Path(bundle).is_dir() else REPO_BUNDLES / bundle
    config = root / "configs" / "train.yaml"
    if not config.is_file():
        raise CommandError(f"{bundle}: not a bundle folder or name (no configs/train.yaml)")
    parser = ConfigParser()
    parser.read_config(str(config))
    for key, value in (recorded_inputs(root / "models" / "model.pt") or {}).items():
        if key in parser:
            parser[key] = value
    missing = [key for key in BUNDLE_GRID_KEYS if key not in parser]
    if missing:
        raise CommandError(f"{config}: no key {missing[0]!r}")
    keys = {**BUNDLE_GRID_KEYS, **{k: v for k, v in BUNDLE_REGISTRATION_KEYS.items() if k in parser}}
    return {option: parser.get_parsed_content(key) for key, option in keys.items()}


def transform_path(out: str) -> Path:
    """Where ``preprocess`` writes the registration next to ``out``: ``<stem>_xfm.mat``."""
    name = Path(out).name
    stem = name[: -len(".nii.gz")] if name.endswith(".nii.gz") else name[: -len(".nii")]
    return Path(out).with_name(f"{stem}_xfm.mat")


def cmd_preprocess(args: argparse.Namespace) -> int:
    import numpy as np
    from monai.data import NibabelWriter

    from pipeline.io import atomic_path, check_not_input
    from pipeline.transforms import mri_transforms
    from pipeline.transforms.registration import TO_SUBJECT, write_transform

    if not args.out.endswith((".nii", ".nii.gz")):
        raise CommandError(f"{args.out}: the output must be .nii or .nii.gz")
    check_not_input(args.out, {"the input T1": args.mri})
    options = bundle_mri_grid(args.bundle) if args.bundle else {}
    given = (("spatial_size", args.spatial_size), ("pixdim", args.pixdim), ("registration", args.registration))
    options.update({k: v for k, v in given if v})
    image = mri_transforms(track_meta=True, **options)({"image": args.mri})["image"]
    writer = NibabelWriter(output_dtype=np.float32)
    writer.set_data_array(image, channel_dim=0)
    writer.set_metadata(image.meta, resample=False)
    registered = TO_SUBJECT in image.meta
    transform = transform_path(args.out)
    with atomic_path(args.out, suffix=".nii.gz" if args.out.endswith(".gz") else ".nii") as tmp:
        writer.write(str(tmp), verbose=False)
        if registered:
            with atomic_path(transform, suffix=".mat") as tmp_transform:
                write_transform(image.meta[TO_SUBJECT], tmp_transform)
    size = " x ".join(str(n) for n in image.shape[1:])
    zooms = " x ".join(f"{z:g}" for z in np.linalg.norm(image.affine.numpy()[:3, :3], axis=0))
    space = "in MNI152 template space" if registered else "RAS, in the input's space"
    print(f"wrote {args.out}: {size} voxels of {zooms} mm, {space}, intensities in [0, 1]")
    if registered:
        print(f"wrote {transform}: the affine from template to input mm (ANTs/ITK .mat)")
    return 0


def register(sub) -> None:
    p = sub.add_parser(
        "preprocess",
        help="write the T1 as the MRI model sees it (NIfTI with the right affine)",
        description="Run the MRI chain of the bundles on one T1 (evaluation mode: no augmentation) and write the "
        "result. With --registration affine (the default) the T1 is bias-corrected (N4) and affinely registered "
        "to the MNI152 template with ANTs, resampled onto the model grid cut from template space and mapped to "
        "[0, 1]; the output overlays on the template, and the transform is written beside it as <stem>_xfm.mat "
        "(ANTs/ITK). With --registration none (a T1 already in MNI space) the head is cropped and resampled onto "
        "a world-aligned RAS grid; the output overlays on the input. --spatial-size/--pixdim/--registration "
        "override --bundle's train.yaml (mri_spatial_size, mri_pixdim, mri_registration); without either, "
        "48 x 56 x 48 voxels of 3 mm, affine.",
    )
    p.add_argument("--mri", required=True, help="T1 NIfTI (.nii or .nii.gz, any orientation or datatype)")
    p.add_argument("--out", required=True, help="output .nii or .nii.gz")
    p.add_argument("--bundle", help="bundle folder or name (e.g. mri_cnn3d) whose train.yaml sets the grid")
    p.add_argument("--spatial-size", type=int, nargs=3, metavar=("X", "Y", "Z"), help="output grid in voxels")
    p.add_argument("--pixdim", type=float, nargs=3, metavar=("X", "Y", "Z"), help="output voxel size in mm")
    p.add_argument("--registration", choices=("affine", "none"), help="spatial normalisation (default: affine)")
    p.set_defaults(func=cmd_preprocess)
