"""MONAI transform chains for structural MRI and resting-state fMRI.

One module per concern: the chains (:mod:`~pipeline.transforms.mri`, :mod:`~pipeline.transforms.fmri`), their
steps (:mod:`~pipeline.transforms.registration`, :mod:`~pipeline.transforms.fmri_registration`,
:mod:`~pipeline.transforms.roi`, :mod:`~pipeline.transforms.temporal`, :mod:`~pipeline.transforms.dfc`,
:mod:`~pipeline.transforms.fmri_augment`) and the input checks (:mod:`~pipeline.transforms.checks`). As in MONAI's
``monai/transforms/*/array.py`` and ``dictionary.py``, an array transform does the math and its ``...d`` dictionary
twin applies it to data keys; here each twin lives in the module of its array transform, right after it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from monai.transforms import Compose, EnsureTyped

from pipeline.transforms.checks import CheckImageFile, CheckImageFiled, CheckImageValues, CheckImageValuesd
from pipeline.transforms.dfc import SlidingWindowCorrelation, SlidingWindowCorrelationd
from pipeline.transforms.fmri import DEFAULT_FMRI_AUGMENTATION, fmri_steps, fmri_transforms
from pipeline.transforms.fmri_augment import (
    RandDrift,
    RandDriftd,
    RandROIDropout,
    RandROIDropoutd,
    RandTemporalCrop,
    RandTemporalCropd,
)
from pipeline.transforms.fmri_registration import RegisterBOLD, RegisterBOLDd
from pipeline.transforms.mri import DEFAULT_MRI_AUGMENTATION, mri_steps, mri_transforms, resample_overrides
from pipeline.transforms.roi import ROISignals, ROISignalsd
from pipeline.transforms.temporal import (
    DEFAULT_CONFOUNDS,
    TemporalClean,
    TemporalCleand,
    TemporalPadOrCrop,
    TemporalPadOrCropd,
    TemporalResample,
    TemporalResampled,
    load_confounds,
)


def subject_transforms(
    modalities: Sequence[str],
    train: bool = False,
    augment: bool = False,
    mri: Mapping | None = None,
    fmri: Mapping | None = None,
    keys: Mapping[str, str] | None = None,
) -> Compose:
    """The chain of one subject: the MRI and/or fMRI chains, all deterministic steps before any random one.

    Keeping the deterministic steps first lets ``CacheDataset`` / ``PersistentDataset`` cache both modalities'
    preprocessing while augmentation is drawn anew each epoch. The MRI steps come last among the deterministic ones
    and first among the random ones, so its lazy spatial steps stay adjacent and, uncached, resample once.

    Args:
        modalities: the inputs the model reads: ``["mri"]``, ``["fmri"]`` or ``["mri", "fmri"]``.
        train: training chain.
        augment: train-only augmentation on.
        mri: keyword arguments of :func:`mri_steps` (spatial_size, pixdim, augmentation).
        fmri: keyword arguments of :func:`fmri_steps` (atlas, timepoints, augmentation, ...).
        keys: data key per modality (default ``{"mri": "image", "fmri": "series"}``).
    """
    unknown = set(modalities) - {"mri", "fmri"}
    if unknown or not modalities:
        raise ValueError(f"modalities must be a non-empty subset of ['mri', 'fmri'], got {list(modalities)}")
    keys = {"mri": "image", "fmri": "series", **(keys or {})}
    steps = {"mri": mri_steps, "fmri": fmri_steps}
    options = {"mri": mri or {}, "fmri": fmri or {}}
    parts = {m: steps[m](keys=keys[m], train=train, augment=augment, **options[m]) for m in modalities}
    deterministic = [t for m in ("fmri", "mri") if m in parts for t in parts[m][0]]
    random = [t for m in ("mri", "fmri") if m in parts for t in parts[m][1]]
    used = [keys[m] for m in ("mri", "fmri") if m in modalities]
    final = EnsureTyped(keys=used, dtype=torch.float32, track_meta=False)
    return Compose(deterministic + random + [final], lazy=None, overrides=resample_overrides(keys["mri"]))


__all__ = [
    "CheckImageFile",
    "CheckImageFiled",
    "CheckImageValues",
    "CheckImageValuesd",
    "DEFAULT_CONFOUNDS",
    "DEFAULT_FMRI_AUGMENTATION",
    "DEFAULT_MRI_AUGMENTATION",
    "ROISignals",
    "ROISignalsd",
    "RegisterBOLD",
    "RegisterBOLDd",
    "RandDrift",
    "RandDriftd",
    "RandROIDropout",
    "RandROIDropoutd",
    "RandTemporalCrop",
    "RandTemporalCropd",
    "SlidingWindowCorrelation",
    "SlidingWindowCorrelationd",
    "TemporalClean",
    "TemporalCleand",
    "TemporalPadOrCrop",
    "TemporalPadOrCropd",
    "TemporalResample",
    "TemporalResampled",
    "fmri_steps",
    "fmri_transforms",
    "load_confounds",
    "mri_steps",
    "mri_transforms",
    "subject_transforms",
]
