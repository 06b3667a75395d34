"""The structural MRI chain: one function, used by training, evaluation, inference, preprocess and the study runner.

By default a T1 is spatially normalised first: N4 bias correction and an ANTs affine registration to the MNI152
template, then one resample onto the model grid cut from template space
(:mod:`pipeline.transforms.registration`). With ``registration="none"`` (scans already in MNI space) geometry is
also resampled once: the steps that need voxel values (percentile scaling, the head's bounding box) run on the scan
as loaded; the spatial steps after them (foreground crop, world-aligned RAS grid at ``pixdim``, pad/crop to
``spatial_size``) are MONAI lazy transforms, so they accumulate as one matrix and the scan is interpolated once.
In training the random affine and flip are lazy too. With a cache, the deterministic part is resampled once per
subject and stored; the random affine then resamples the cached grid each epoch.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np
import torch
from monai.transforms import (
    Compose,
    CropForegroundd,
    EnsureTyped,
    LoadImaged,
    RandAdjustContrastd,
    RandAffined,
    RandBiasFieldd,
    RandFlipd,
    RandGaussianNoised,
    RandGibbsNoised,
    RandKSpaceSpikeNoised,
    RandRicianNoised,
    RandTorchIOd,
    ResizeWithPadOrCropd,
    ScaleIntensityRangePercentilesd,
    Spacingd,
)
from monai.utils import optional_import

from pipeline.transforms.checks import CheckImageFiled, CheckImageValuesd
from pipeline.transforms.registration import REGISTRATION_MODES, RegisterToTemplated
from pipeline.transforms.settings import merge_settings

_, HAS_TORCHIO = optional_import("torchio")

#: Probability and range of each training augmentation, in the order they apply; the bundle key
#: ``mri_augmentation`` overrides any of them (``{motion: {prob: 0.2}}``) and a transform with ``prob`` 0 is left
#: out. Left-right ``flip`` is off: atrophy in Alzheimer's disease is asymmetric, so a flip changes the anatomy the
#: classifier should learn. ``motion`` and ``ghosting`` run TorchIO through MONAI's bridge (``pip install
#: 'neurofusion[torchio]'``); their translations are in voxels of the model grid, and TorchIO draws from torch's
#: global generator (seeded by the bundles' ``seed``), not from ``Compose.set_random_state``. The random ``affine``
#: is off too: every input is spatially normalised, and on the registered MRI-only demo cohort it cost the 3D CNN
#: 0.19 balanced accuracy at these ranges (±0.1 rad, ±5%, ±3 voxels) and 0.05 at ±0.05 rad, ±2%, ±1 voxel, while
#: the intensity transforms alone cost nothing (``bundles/experiments/learnability_aug.yaml``); turn it on for
#: inputs that are not.
DEFAULT_MRI_AUGMENTATION: dict[str, dict] = {
    "affine": {"prob": 0.0, "rotate_range": 0.1, "scale_range": 0.05, "translate_range": 3},
    "flip": {"prob": 0.0},
    "bias_field": {"prob": 0.3, "coeff_range": [0.0, 0.1]},
    "motion": {"prob": 0.0, "degrees": 5.0, "translation": 2.0, "num_transforms": 2},
    "ghosting": {"prob": 0.0, "num_ghosts": [2, 6], "intensity": [0.2, 0.5]},
    "spike": {"prob": 0.0, "intensity_range": None},
    "gibbs": {"prob": 0.0, "alpha": [0.0, 0.5]},
    "noise": {"prob": 0.3, "std": 0.02},
    "rician_noise": {"prob": 0.0, "std": 0.02},
    "contrast": {"prob": 0.3, "gamma": [0.8, 1.25]},
}

#: How the accumulated lazy matrix is applied. MONAI 1.6 does not carry each transform's interpolation settings
#: into the lazy resample, so they are set here, once, for the whole chain. ``resample_mode`` other than "auto"
#: always interpolates: a scan already on the target grid would otherwise come back as a view into the whole loaded
#: array, which a cache then keeps (twice the memory and disk per subject at the demo resolution).
LAZY_RESAMPLE: dict = {"mode": "bilinear", "padding_mode": "zeros", "dtype": torch.float32, "resample_mode": "resample"}


def head_foreground(image: torch.Tensor) -> torch.Tensor:
    """Voxels brighter than 10% of the (already [0, 1]-scaled) intensity range: the head, not background noise."""
    return image > 0.1


def resample_overrides(keys: str | Sequence[str]) -> dict:
    """``Compose(overrides=...)`` applying :data:`LAZY_RESAMPLE` to the MRI ``keys``."""
    return {key: dict(LAZY_RESAMPLE) for key in ([keys] if isinstance(keys, str) else keys)}


def _torchio(keys, name: str, what: str, settings: Mapping, **kwargs) -> RandTorchIOd:
    if not HAS_TORCHIO:
        raise ImportError(
            f"MRI augmentation {what!r} needs TorchIO: pip install 'neurofusion[torchio]' (or set its prob to 0)"
        )
    return RandTorchIOd(keys=keys, name=name, p=settings["prob"], **kwargs)


def mri_augmentations(keys: str | Sequence[str], settings: Mapping[str, Mapping], lazy: bool = True) -> list:
    """The random MRI transforms (train partition only), in the order of :data:`DEFAULT_MRI_AUGMENTATION`.

    Args:
        keys: data keys of T1 volumes.
        settings: complete per-transform settings (see :func:`~pipeline.transforms.settings.merge_settings`).
        lazy: the affine and flip join the pending resample of the deterministic steps.
    """
    builders: dict[str, Callable[[Mapping], object]] = {
        "affine": lambda s: RandAffined(
            keys=keys,
            prob=s["prob"],
            rotate_range=[s["rotate_range"]] * 3,
            scale_range=[s["scale_range"]] * 3,
            translate_range=[s["translate_range"]] * 3,
            mode="bilinear",
            padding_mode="zeros",
            lazy=lazy,
        ),
        "flip": lambda s: RandFlipd(keys=keys, prob=s["prob"], spatial_axis=0, lazy=lazy),
        "bias_field": lambda s: RandBiasFieldd(keys=keys, prob=s["prob"], coeff_range=tuple(s["coeff_range"])),
        "motion": lambda s: _torchio(
            keys,
            "RandomMotion",
            "motion",
            s,
            degrees=s["degrees"],
            translation=s["translation"],
            num_transforms=s["num_transforms"],
        ),
        "ghosting": lambda s: _torchio(
            keys, "RandomGhosting", "ghosting", s, num_ghosts=tuple(s["num_ghosts"]), intensity=tuple(s["intensity"])
        ),
        "spike": lambda s: RandKSpaceSpikeNoised(keys=keys, prob=s["prob"], intensity_range=s["intensity_range"]),
        "gibbs": lambda s: RandGibbsNoised(keys=keys, prob=s["prob"], alpha=tuple(s["alpha"])),
        "noise": lambda s: RandGaussianNoised(keys=keys, prob=s["prob"], std=s["std"]),
        "rician_noise": lambda s: RandRicianNoised(keys=keys, prob=s["prob"], std=s["std"]),
        "contrast": lambda s: RandAdjustContrastd(keys=keys, prob=s["prob"], gamma=tuple(s["gamma"])),
    }
    return [build(settings[name]) for name, build in builders.items() if settings[name]["prob"] > 0]


def mri_steps(
    keys: str | Sequence[str] = "image",
    spatial_size: Sequence[int] = (48, 56, 48),
    pixdim: Sequence[float] = (3.0, 3.0, 3.0),
    train: bool = False,
    augment: bool = False,
    augmentation: Mapping[str, Mapping] | None = None,
    lazy: bool = True,
    registration: str = "affine",
    registration_options: Mapping | None = None,
) -> tuple[list, list]:
    """The MRI chain as (deterministic steps, random steps).

    With ``registration="affine"`` (the default) a loaded T1 is bias-corrected (N4) and affinely registered to the
    MNI152 template with ANTs, resampled once onto the model grid cut from template space (``spatial_size`` voxels
    of ``pixdim`` mm centred on the template's brain; :mod:`pipeline.transforms.registration`), and its 0.5th-99.5th
    intensity percentiles on that grid are mapped to [0, 1]. ``registration="none"`` is for scans already in MNI
    space (fMRIPrep, ClinicaDL outputs) and keeps the chain of scanner-space grids described next.

    Load a T1 (any orientation, datatype, byte order, NIfTI-1/2, ``scl_slope``/``scl_inter`` applied, a 4D file's
    single volume as the channel; a file that is not a T1, is truncated or claims an absurd grid is refused from its
    header, and NaN, infinite or blank voxels once loaded: :mod:`pipeline.transforms.checks`), map its 0.5th-99.5th
    intensity percentiles to [0, 1] (per image, so nothing is fitted across subjects), crop the head's bounding box,
    resample onto a world-aligned RAS grid at ``pixdim`` mm (``Spacingd(diagonal=True)``: it orients too, and an
    oblique scan loses its slab tilt) and pad/crop to ``spatial_size``. In training with ``augment`` the augmentations
    of :func:`mri_augmentations` follow.

    Compose the steps with ``lazy=None`` and ``overrides=resample_overrides(keys)`` (as :func:`mri_transforms` and
    :func:`~pipeline.transforms.subject_transforms` do) so the lazy steps resample once.

    Args:
        keys: data keys holding T1 paths.
        spatial_size: output grid in voxels.
        pixdim: output voxel size in mm.
        train: training chain (augmentation applies only when True).
        augment: train-only augmentation on.
        augmentation: per-transform settings overriding :data:`DEFAULT_MRI_AUGMENTATION`.
        lazy: defer the spatial steps into one resample (False: each step resamples on its own, MONAI's eager mode).
        registration: ``"affine"`` (spatial normalisation to MNI152) or ``"none"``.
        registration_options: arguments of :class:`~pipeline.transforms.registration.RegisterToTemplate`
            (``level_mm``, ``bias_correction``, ``brain_mask``, ``min_similarity``, ``cache_dir``).
    """
    if registration not in REGISTRATION_MODES:
        raise ValueError(f"mri_registration must be one of {list(REGISTRATION_MODES)}, got {registration!r}")
    settings = merge_settings(DEFAULT_MRI_AUGMENTATION, augmentation, "MRI")
    loading = [
        CheckImageFiled(keys=keys, kind="mri"),
        LoadImaged(keys=keys, image_only=True, ensure_channel_first=True, dtype=np.float32),
        CheckImageValuesd(keys=keys, kind="mri"),
    ]
    scaling = ScaleIntensityRangePercentilesd(keys=keys, lower=0.5, upper=99.5, b_min=0.0, b_max=1.0, clip=True)
    random = mri_augmentations(keys, settings, lazy) if train and augment else []
    if registration == "affine":
        register = RegisterToTemplated(
            keys=keys, spatial_size=spatial_size, pixdim=pixdim, **dict(registration_options or {})
        )
        return [*loading, register, scaling], random
    source = keys if isinstance(keys, str) else keys[0]
    deterministic = [
        *loading,
        scaling,
        CropForegroundd(
            keys=keys,
            source_key=source,
            select_fn=head_foreground,
            margin=2,
            allow_smaller=True,
            start_coord_key=None,  # the box is in the image's affine; stored coordinates would not collate
            end_coord_key=None,  # between cached (numpy) and fresh (tensor) items
            lazy=lazy,
        ),
        Spacingd(
            keys=keys,
            pixdim=tuple(pixdim),
            diagonal=True,
            mode="bilinear",
            padding_mode="zeros",
            dtype=torch.float32,
            lazy=lazy,
        ),
        ResizeWithPadOrCropd(keys=keys, spatial_size=tuple(spatial_size), lazy=lazy),
    ]
    return deterministic, random


def mri_transforms(keys: str | Sequence[str] = "image", track_meta: bool = False, **kwargs) -> Compose:
    """The MRI chain as one ``Compose`` (arguments of :func:`mri_steps`), deterministic steps first.

    Args:
        keys: data keys holding T1 paths.
        track_meta: return a ``MetaTensor`` carrying the output affine (to write what the model sees); False gives
            the plain float32 tensor the networks read.
        kwargs: arguments of :func:`mri_steps`.
    """
    deterministic, random = mri_steps(keys, **kwargs)
    final = EnsureTyped(keys=keys, dtype=torch.float32, track_meta=track_meta)
    return Compose(deterministic + random + [final], lazy=None, overrides=resample_overrides(keys))
