"""The structural MRI chain: one function, used by training, evaluation, inference and the study runner."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch
from monai.transforms import (
    Compose,
    CropForegroundd,
    EnsureTyped,
    LoadImaged,
    Orientationd,
    RandAdjustContrastd,
    RandAffined,
    RandBiasFieldd,
    RandGaussianNoised,
    ResizeWithPadOrCropd,
    ScaleIntensityRangePercentilesd,
    Spacingd,
)

from pipeline.transforms.settings import merge_settings

# Left-right flipping is deliberately absent: atrophy in Alzheimer's disease is asymmetric, so a flip changes
# the anatomy the classifier should learn.
DEFAULT_MRI_AUGMENTATION: dict[str, dict] = {
    "affine": {"prob": 0.5, "rotate_range": 0.1, "scale_range": 0.05, "translate_range": 3},
    "bias_field": {"prob": 0.3, "coeff_range": [0.0, 0.1]},
    "noise": {"prob": 0.3, "std": 0.02},
    "contrast": {"prob": 0.3, "gamma": [0.8, 1.25]},
}


def head_foreground(image: torch.Tensor) -> torch.Tensor:
    """Voxels brighter than 10% of the (already [0, 1]-scaled) intensity range: the head, not background noise."""
    return image > 0.1


def mri_augmentations(keys: str | Sequence[str], settings: Mapping[str, Mapping]) -> list:
    """The random MRI transforms (train partition only), configured by ``settings`` (see the defaults)."""
    affine = dict(settings["affine"])
    return [
        RandAffined(
            keys=keys,
            prob=affine["prob"],
            rotate_range=[affine["rotate_range"]] * 3,
            scale_range=[affine["scale_range"]] * 3,
            translate_range=[affine["translate_range"]] * 3,
            mode="bilinear",
            padding_mode="zeros",
        ),
        RandBiasFieldd(
            keys=keys, prob=settings["bias_field"]["prob"], coeff_range=tuple(settings["bias_field"]["coeff_range"])
        ),
        RandGaussianNoised(keys=keys, prob=settings["noise"]["prob"], std=settings["noise"]["std"]),
        RandAdjustContrastd(keys=keys, prob=settings["contrast"]["prob"], gamma=tuple(settings["contrast"]["gamma"])),
    ]


def mri_steps(
    keys: str | Sequence[str] = "image",
    spatial_size: Sequence[int] = (48, 56, 48),
    pixdim: Sequence[float] = (3.0, 3.0, 3.0),
    train: bool = False,
    augment: bool = False,
    augmentation: Mapping[str, Mapping] | None = None,
) -> tuple[list, list]:
    """The MRI chain as (deterministic steps, random steps).

    Load a T1, bring it to RAS at ``pixdim`` mm, map the 0.5th-99.5th intensity percentiles to [0, 1] (per image,
    so nothing is fitted across subjects), crop the head's bounding box and pad/crop it to ``spatial_size``.
    In training with ``augment``, random affine, bias field, noise and gamma contrast follow.

    Args:
        keys: data keys holding T1 paths.
        spatial_size: output grid in voxels.
        pixdim: output voxel size in mm.
        train: training chain (augmentation applies only when True).
        augment: train-only augmentation on.
        augmentation: per-transform settings overriding :data:`DEFAULT_MRI_AUGMENTATION`.
    """
    settings = merge_settings(DEFAULT_MRI_AUGMENTATION, augmentation, "MRI")
    source = keys if isinstance(keys, str) else keys[0]
    deterministic = [
        LoadImaged(keys=keys, image_only=True, ensure_channel_first=True, dtype=np.float32),
        Orientationd(keys=keys, axcodes="RAS", labels=(("L", "R"), ("P", "A"), ("I", "S"))),
        Spacingd(keys=keys, pixdim=tuple(pixdim), mode="bilinear"),
        ScaleIntensityRangePercentilesd(keys=keys, lower=0.5, upper=99.5, b_min=0.0, b_max=1.0, clip=True),
        CropForegroundd(keys=keys, source_key=source, select_fn=head_foreground, margin=2),
        ResizeWithPadOrCropd(keys=keys, spatial_size=tuple(spatial_size)),
    ]
    return deterministic, (mri_augmentations(keys, settings) if train and augment else [])


def mri_transforms(keys: str | Sequence[str] = "image", **kwargs) -> Compose:
    """The MRI chain as one ``Compose`` (arguments of :func:`mri_steps`), deterministic steps first."""
    deterministic, random = mri_steps(keys, **kwargs)
    return Compose(deterministic + random + [EnsureTyped(keys=keys, dtype=torch.float32, track_meta=False)])
