"""The fMRI chain: a BOLD run as a sequence, built by :func:`fmri_steps` from the steps of
:mod:`~pipeline.transforms.roi` (atlas ROI time series ``[R, T]``), :mod:`~pipeline.transforms.temporal` (TR-aware
cleaning, common TR, fixed length), :mod:`~pipeline.transforms.dfc` (sliding-window connectivity) and
:mod:`~pipeline.transforms.fmri_augment` (train-only augmentation).

Every sequence keeps time on its last axis, so the temporal steps (cleaning, TR resampling, crop / pad, noise)
apply unchanged to the three sequence modes of :func:`fmri_steps`:

- ``roi``: mean BOLD signal per atlas region, ``[R, T]`` (the default);
- ``dfc``: dynamic functional connectivity, the upper triangle of sliding-window ROI correlations, ``[P, W]``
  (``P = R (R - 1) / 2`` ROI pairs, ``W`` windows);
- ``volume``: the run itself, reoriented to RAS and downsampled, ``[X, Y, Z, T]`` (no atlas).

:func:`fmri_transforms` builds the one chain used by training, evaluation, inference and the study runner.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch
from monai.transforms import (
    Compose,
    EnsureChannelFirstd,
    EnsureTyped,
    LoadImaged,
    Orientationd,
    RandGaussianNoised,
    RandScaleIntensityd,
    ResizeWithPadOrCropd,
    Spacingd,
    Transposed,
)

from pipeline import SEQUENCES
from pipeline.transforms.checks import CheckImageFiled, CheckImageValuesd
from pipeline.transforms.dfc import SlidingWindowCorrelationd
from pipeline.transforms.fmri_augment import RandDriftd, RandROIDropoutd, RandTemporalCropd
from pipeline.transforms.fmri_registration import FMRI_REGISTRATION_MODES, RegisterBOLDd
from pipeline.transforms.roi import ROISignalsd
from pipeline.transforms.settings import merge_settings
from pipeline.transforms.temporal import (
    DEFAULT_CONFOUNDS,
    TemporalCleand,
    TemporalPadOrCropd,
    TemporalResampled,
)

__all__ = [
    "DEFAULT_FMRI_AUGMENTATION",
    "fmri_steps",
    "fmri_transforms",
]

#: Train-only fMRI augmentation, overridden key by key from the bundle YAML (``fmri_augmentation``). ``drift``
#: (MONAI's ``SignalRandAddSine``) is off by default; ``roi_dropout`` applies to the ``roi`` and ``dfc`` modes.
DEFAULT_FMRI_AUGMENTATION: dict[str, dict] = {
    "temporal_crop": {"prob": 1.0},
    "noise": {"prob": 0.5, "std": 0.2},
    "amplitude": {"prob": 0.5, "factors": 0.2},
    "roi_dropout": {"prob": 0.3, "fraction": 0.1},
    "drift": {"prob": 0.0, "boundaries": [0.1, 0.3], "frequencies": [0.01, 0.1]},
}


def _sequence_source(
    keys, sequence: str, atlas: str, volume_size: Sequence[int], volume_pixdim, registration: str, options: Mapping
) -> list:
    """Check and load the run (:mod:`pipeline.transforms.checks`) and turn it into the mode's series: ROI means (the
    run first given its transform to MNI152 unless ``registration`` is ``"none"``), or downsampled RAS frames
    ``[X, Y, Z, T]``."""
    load = [
        CheckImageFiled(keys=keys, kind="fmri"),
        LoadImaged(keys=keys, image_only=True, dtype=np.float32),
        CheckImageValuesd(keys=keys, kind="fmri"),
    ]
    if sequence != "volume":
        register = [] if registration == "none" else [RegisterBOLDd(keys=keys, mode=registration, **options)]
        return [*load, *register, ROISignalsd(keys=keys, atlas=atlas)]
    return [
        *load,
        EnsureChannelFirstd(keys=keys, channel_dim=-1),  # time as channels: the spatial steps move every frame alike
        Orientationd(keys=keys, axcodes="RAS", labels=(("L", "R"), ("P", "A"), ("I", "S"))),
        Spacingd(keys=keys, pixdim=tuple(volume_pixdim), mode="bilinear"),
        ResizeWithPadOrCropd(keys=keys, spatial_size=tuple(volume_size)),
        Transposed(keys=keys, indices=(1, 2, 3, 0)),
    ]


def _augmentations(keys, length: int, settings: Mapping[str, Mapping], sequence: str) -> list:
    """The random steps: window, noise, amplitude, ROI dropout (not in volume mode), drift."""
    steps = [
        RandTemporalCropd(keys=keys, length=length, **settings["temporal_crop"]),
        RandGaussianNoised(keys=keys, prob=settings["noise"]["prob"], std=settings["noise"]["std"]),
        RandScaleIntensityd(keys=keys, prob=settings["amplitude"]["prob"], factors=settings["amplitude"]["factors"]),
    ]
    if sequence != "volume":
        steps.append(RandROIDropoutd(keys=keys, **settings["roi_dropout"]))
    return steps + [RandDriftd(keys=keys, **settings["drift"])]


def fmri_steps(
    keys: str | Sequence[str] = "series",
    atlas: str = "AAL",
    timepoints: int = 96,
    train: bool = False,
    augment: bool = False,
    augmentation: Mapping[str, Mapping] | None = None,
    high_pass: float | None = 0.01,
    low_pass: float | None = 0.1,
    tr_key: str = "tr",
    sequence: str = "roi",
    common_tr: float | None = None,
    confounds_key: str = "confounds",
    confounds_columns: Sequence[str] = DEFAULT_CONFOUNDS,
    dfc_window: int = 30,
    dfc_step: int = 5,
    volume_size: Sequence[int] = (16, 20, 16),
    volume_pixdim: Sequence[float] = (10.0, 10.0, 10.0),
    registration: str = "auto",
    registration_options: Mapping | None = None,
) -> tuple[list, list]:
    """The fMRI chain as (deterministic steps, random steps): load 4D run (-> its transform to MNI152) -> sequence
    (ROI means or frames) -> clean (detrend, confounds, band-pass, z-score) -> common TR -> fixed length
    (-> augmentation) (-> dFC).

    In the atlas modes (``roi``, ``dfc``) a run not already in MNI space is given its transform to the MNI152
    template first (:class:`~pipeline.transforms.fmri_registration.RegisterBOLDd`: its mean EPI registered affinely,
    the run's affine replaced, the 4D run not resampled), so the atlas is taken at the right place in the run's own
    grid. ``volume`` frames stay in the run's own space.

    The time window is centred unless training with augmentation, where a random window
    (``RandTemporalCropd``) is one of the augmentations: a run with augmentation off is deterministic end to end.
    In ``dfc`` mode the correlations are computed from the fixed-length (and augmented) ROI series, so the
    ``W = (timepoints - dfc_window) // dfc_step + 1`` windows are the same for every run.

    Args:
        keys: data keys holding BOLD paths.
        atlas: atlas name or label NIfTI path (``roi`` and ``dfc`` modes).
        timepoints: fixed number of time points (at the common TR, when set) before the dFC windows.
        train: training chain (augmentation applies only when True).
        augment: random window, noise, amplitude scaling, ROI dropout, drift.
        augmentation: per-transform settings overriding :data:`DEFAULT_FMRI_AUGMENTATION`.
        high_pass, low_pass: band-pass cutoffs in Hz (None disables one side).
        tr_key: data key of the repetition time in seconds.
        sequence: ``"roi"`` ``[R, T]``, ``"dfc"`` ``[R (R - 1) / 2, W]`` or ``"volume"`` ``[X, Y, Z, T]``.
        common_tr: resample every cleaned run to this TR in seconds (None: keep each run's own TR).
        confounds_key: data key of an fMRIPrep-style confounds TSV (regressed when the item has one).
        confounds_columns: confound columns (names or patterns), see
            :func:`~pipeline.transforms.temporal.load_confounds`.
        dfc_window, dfc_step: sliding window length and step in time points (``dfc`` mode).
        volume_size: frame grid in voxels (``volume`` mode).
        volume_pixdim: frame voxel size in mm (``volume`` mode; frames are resampled bilinearly).
        registration: ``"auto"`` (register every run but fMRIPrep ``space-MNI...`` files) or ``"none"`` (the bundle
            key ``fmri_registration``; atlas modes).
        registration_options: arguments of :class:`~pipeline.transforms.fmri_registration.RegisterBOLD`
            (``level_mm``, ``min_similarity``, ``seed``, ``cache_dir``).
    """
    if sequence not in SEQUENCES:
        raise ValueError(f"fmri sequence must be one of {', '.join(SEQUENCES)}, got {sequence!r}")
    if registration not in FMRI_REGISTRATION_MODES:
        raise ValueError(f"fmri_registration must be one of {list(FMRI_REGISTRATION_MODES)}, got {registration!r}")
    settings = merge_settings(DEFAULT_FMRI_AUGMENTATION, augmentation, "fMRI")
    options = dict(registration_options or {})
    deterministic = _sequence_source(keys, sequence, atlas, volume_size, volume_pixdim, registration, options)
    deterministic.append(
        TemporalCleand(
            keys=keys,
            tr_key=tr_key,
            high_pass=high_pass,
            low_pass=low_pass,
            confounds_key=confounds_key,
            confounds_columns=confounds_columns,
        )
    )
    if common_tr:
        deterministic.append(TemporalResampled(keys=keys, target_tr=common_tr, tr_key=tr_key))
    dfc = [SlidingWindowCorrelationd(keys=keys, window=dfc_window, step=dfc_step)] if sequence == "dfc" else []
    if dfc and (timepoints - dfc_window) // dfc_step < 1:
        raise ValueError(f"dfc: {timepoints} time points give fewer than 2 windows of {dfc_window} (step {dfc_step})")
    if not (train and augment):
        return deterministic + [TemporalPadOrCropd(keys=keys, length=timepoints)] + dfc, []
    return deterministic, _augmentations(keys, timepoints, settings, sequence) + dfc


def fmri_transforms(keys: str | Sequence[str] = "series", **kwargs) -> Compose:
    """The fMRI chain as one ``Compose`` (arguments of :func:`fmri_steps`), deterministic steps first."""
    deterministic, random = fmri_steps(keys, **kwargs)
    return Compose(deterministic + random + [EnsureTyped(keys=keys, dtype=torch.float32, track_meta=False)])
