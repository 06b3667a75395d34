"""fMRI as a sequence: atlas ROI time series ``[R, T]``, TR-aware temporal cleaning, fixed length, augmentation.

Array transforms do the math; their ``...d`` twins apply them to dictionary keys. :func:`fmri_transforms` builds
the one chain used by training, evaluation, inference and the study runner.
"""

from __future__ import annotations

import functools
import json
import logging
import math
from collections.abc import Hashable, Mapping, Sequence
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import (
    Compose,
    EnsureTyped,
    LoadImaged,
    MapTransform,
    RandGaussianNoised,
    RandomizableTransform,
    RandScaleIntensityd,
    Transform,
)

from pipeline.atlas import Atlas, load_atlas
from pipeline.transforms.settings import merge_settings

logger = logging.getLogger(__name__)

PLAUSIBLE_TR_SECONDS = (0.1, 10.0)
_TIME_UNIT_SECONDS = {"sec": 1.0, "msec": 1e-3, "usec": 1e-6}


class TRError(ValueError):
    """The repetition time of a run is missing or implausible."""


# --- repetition time ------------------------------------------------------------------------------------


def _sidecar_of(bold_path: Path) -> Path:
    stem = bold_path.name.removesuffix(".gz").removesuffix(".nii")
    return bold_path.with_name(stem + ".json")


def _check_plausible(tr: float, source: str, bold_path: Path | str) -> float:
    low, high = PLAUSIBLE_TR_SECONDS
    if not (math.isfinite(tr) and low <= tr <= high):
        hint = f" (it looks like milliseconds: {tr / 1000:g} s?)" if 100 <= tr <= 10000 else ""
        raise TRError(
            f"{bold_path}: implausible TR {tr:g} s from {source}{hint}; expected {low:g}-{high:g} s. "
            "Give the TR in seconds in the manifest 'tr' column (or --tr)."
        )
    return float(tr)


def resolve_tr(bold_path: str | Path, manifest_tr: float | str | None = None) -> float:
    """Repetition time in seconds, from (in order) the manifest, the BIDS sidecar, the NIfTI header.

    The header's ``pixdim[4]`` is read with its time unit; a value outside 0.1-10 s (e.g. 2000 stored under a
    seconds unit) is refused rather than guessed.

    Args:
        bold_path: the 4D BOLD NIfTI.
        manifest_tr: the manifest's ``tr`` value, if any (blank / NaN means absent).

    Raises:
        TRError: no source gives a TR, or the TR found is implausible.
    """
    bold_path = Path(bold_path)
    if manifest_tr is not None and str(manifest_tr).strip() not in ("", "nan"):
        return _check_plausible(float(manifest_tr), "the manifest", bold_path)
    sidecar = _sidecar_of(bold_path)
    if sidecar.is_file():
        tr = json.loads(sidecar.read_text()).get("RepetitionTime")
        if tr is not None:
            return _check_plausible(float(tr), f"sidecar {sidecar.name}", bold_path)
    header = nib.load(str(bold_path)).header
    zooms = header.get_zooms()
    if len(zooms) < 4 or not zooms[3] > 0:
        raise TRError(f"{bold_path}: no TR in the manifest, the sidecar or the header; give 'tr' in the manifest")
    unit = header.get_xyzt_units()[1]
    scale = _TIME_UNIT_SECONDS.get(unit, 1.0)
    return _check_plausible(float(zooms[3]) * scale, f"the header (pixdim[4]={zooms[3]:g} {unit})", bold_path)


# --- ROI signals ----------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=32)
def _atlas_on_grid(atlas: Atlas, shape: tuple[int, ...], affine_bytes: bytes) -> tuple[np.ndarray, np.ndarray]:
    """Atlas resampled (nearest) onto a run's voxel grid: ROI index per voxel (-1 outside) and voxel counts."""
    from nilearn.image import resample_to_img

    affine = np.frombuffer(affine_bytes, dtype=np.float64).reshape(4, 4)
    target = nib.Nifti1Image(np.zeros(shape, dtype=np.int8), affine)
    labels = np.asarray(
        resample_to_img(atlas.image, target, interpolation="nearest", force_resample=True, copy_header=True).dataobj
    ).astype(np.int64)
    lookup = {label: i for i, label in enumerate(atlas.labels)}
    roi_index = np.vectorize(lambda v: lookup.get(int(v), -1), otypes=[np.int64])(labels).ravel()
    counts = np.bincount(roi_index[roi_index >= 0], minlength=len(atlas.labels))
    return roi_index, counts


class ROISignals(Transform):
    """Mean BOLD signal of every atlas region: ``(X, Y, Z, T)`` run -> ``[R, T]``.

    The atlas is resampled with nearest-neighbour interpolation onto the run's own voxel grid through the two
    affines (as nilearn's ``NiftiLabelsMasker(resampling_target="data")`` does) and cached per grid. Rows follow
    the atlas label order. A region with no voxel in the run's field of view is handled by ``empty``:
    ``"zero"`` gives it an all-zero row and lists it in the metadata key ``roi_empty``; ``"error"`` refuses.

    Args:
        atlas: built-in atlas name (``"AAL"``) or path to an integer label NIfTI.
        empty: ``"zero"`` or ``"error"``, see above.
    """

    def __init__(self, atlas: str = "AAL", empty: str = "zero") -> None:
        if empty not in ("zero", "error"):
            raise ValueError(f"empty must be 'zero' or 'error', got {empty!r}")
        self.atlas = load_atlas(str(atlas))
        self.empty = empty

    def __call__(self, run: torch.Tensor | np.ndarray, affine: np.ndarray | None = None) -> MetaTensor:
        """Args:
        run: 4D array ``(X, Y, Z, T)``; a MetaTensor carries its affine.
        affine: voxel-to-world affine, needed when ``run`` is not a MetaTensor.
        """
        if affine is None:
            if not isinstance(run, MetaTensor):
                raise ValueError("ROISignals needs the run's affine (a MetaTensor or the affine argument)")
            affine = run.affine
        if run.ndim != 4:
            raise ValueError(f"ROISignals expects a 4D run (X, Y, Z, T), got shape {tuple(run.shape)}")
        affine = np.asarray(torch.as_tensor(affine, dtype=torch.float64).cpu(), dtype=np.float64)
        roi_index, counts = _atlas_on_grid(self.atlas, tuple(int(s) for s in run.shape[:3]), affine.tobytes())
        empty = [name for name, n in zip(self.atlas.names, counts) if n == 0]
        if empty and self.empty == "error":
            raise ValueError(f"{len(empty)} atlas regions have no voxel in the run's field of view: {', '.join(empty)}")
        series = torch.as_tensor(run).reshape(-1, run.shape[3])
        inside = torch.from_numpy(np.flatnonzero(roi_index >= 0))
        index = torch.from_numpy(roi_index)[inside]
        voxels = series.index_select(0, inside).to(torch.float32)
        sums = torch.zeros(len(counts), run.shape[3], dtype=torch.float32).index_add_(0, index, voxels)
        means = sums / torch.from_numpy(np.maximum(counts, 1)).to(torch.float32)[:, None]
        meta = {"roi_labels": list(self.atlas.labels), "roi_names": list(self.atlas.names), "roi_empty": empty}
        return MetaTensor(means, meta=meta)


class ROISignalsd(MapTransform):
    """Dictionary twin of :class:`ROISignals`; the run's affine comes from its MetaTensor.

    Args:
        keys: keys of the 4D runs.
        atlas: see :class:`ROISignals`.
        empty: see :class:`ROISignals`.
        allow_missing_keys: skip absent keys.
    """

    def __init__(self, keys: KeysCollection, atlas: str = "AAL", empty: str = "zero", allow_missing_keys: bool = False):
        super().__init__(keys, allow_missing_keys)
        self.signals = ROISignals(atlas=atlas, empty=empty)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.signals(d[key])
        return d


# --- temporal cleaning ----------------------------------------------------------------------------------


class TemporalClean(Transform):
    """Detrend, band-pass and z-score each ROI series of ``[R, T]`` with ``nilearn.signal.clean``.

    Args:
        detrend: remove the linear trend.
        high_pass: high-pass cutoff in Hz (None: off). Needs the run's TR.
        low_pass: low-pass cutoff in Hz (None: off). Needs the run's TR.
        standardize: ``"zscore_sample"`` (default), ``"psc"`` or False.
    """

    def __init__(
        self,
        detrend: bool = True,
        high_pass: float | None = None,
        low_pass: float | None = None,
        standardize: str | bool = "zscore_sample",
    ) -> None:
        self.detrend = detrend
        self.high_pass = high_pass
        self.low_pass = low_pass
        self.standardize = standardize

    def __call__(self, signals: torch.Tensor | np.ndarray, tr: float | None = None) -> torch.Tensor:
        """Args:
        signals: ``[R, T]`` ROI series.
        tr: repetition time in seconds (required when filtering).
        """
        from nilearn.signal import clean

        filtering = self.high_pass is not None or self.low_pass is not None
        if filtering and not tr:
            raise TRError("band-pass filtering needs the run's TR")
        array = np.asarray(torch.as_tensor(signals).detach().cpu(), dtype=np.float64).T
        try:
            cleaned = clean(
                array,
                detrend=self.detrend,
                standardize=self.standardize,
                filter="butterworth" if filtering else False,
                high_pass=self.high_pass,
                low_pass=self.low_pass,
                t_r=float(tr) if tr else None,
            )
        except ValueError as err:
            if "padlen" not in str(err):
                raise
            raise ValueError(
                f"a run of {array.shape[0]} volumes is too short to band-pass filter ({err}); "
                "use a longer run or disable the filter (high_pass/low_pass: null)"
            ) from None
        out = torch.from_numpy(np.ascontiguousarray(cleaned.T, dtype=np.float32))
        return MetaTensor(out, meta=dict(signals.meta)) if isinstance(signals, MetaTensor) else out


class TemporalCleand(MapTransform):
    """Dictionary twin of :class:`TemporalClean`; the TR (seconds) is read from ``data[tr_key]``.

    Args:
        keys: keys of ``[R, T]`` series.
        tr_key: key of the repetition time.
        detrend, high_pass, low_pass, standardize: see :class:`TemporalClean`.
        allow_missing_keys: skip absent keys.
    """

    def __init__(
        self,
        keys: KeysCollection,
        tr_key: str = "tr",
        detrend: bool = True,
        high_pass: float | None = None,
        low_pass: float | None = None,
        standardize: str | bool = "zscore_sample",
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.tr_key = tr_key
        self.clean = TemporalClean(detrend, high_pass, low_pass, standardize)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.clean(d[key], tr=d.get(self.tr_key))
        return d


# --- fixed length ---------------------------------------------------------------------------------------


def _crop_or_pad(signals: torch.Tensor, length: int, start: int) -> torch.Tensor:
    """Take ``length`` steps from ``start``; shorter series are zero-padded equally on both ends."""
    steps = signals.shape[-1]
    if steps >= length:
        return signals[..., start : start + length]
    before = (length - steps) // 2
    return torch.nn.functional.pad(signals, (before, length - steps - before))


class TemporalPadOrCrop(Transform):
    """Deterministic centre crop / symmetric zero pad of ``[R, T]`` to ``length`` time points (evaluation).

    Args:
        length: output number of time points.
    """

    def __init__(self, length: int) -> None:
        self.length = int(length)

    def __call__(self, signals: torch.Tensor) -> torch.Tensor:
        return _crop_or_pad(signals, self.length, max(0, (signals.shape[-1] - self.length) // 2))


class RandTemporalCrop(RandomizableTransform):
    """Random window of ``length`` time points (training); series shorter than ``length`` are padded.

    With ``prob`` < 1 the other draws take the centre window, as :class:`TemporalPadOrCrop`.

    Args:
        length: output number of time points.
        prob: probability of a random (rather than centred) window.
    """

    def __init__(self, length: int, prob: float = 1.0) -> None:
        RandomizableTransform.__init__(self, prob)
        self.length = int(length)
        self.start = 0

    def randomize(self, steps: int) -> None:
        super().randomize(None)
        slack = max(0, steps - self.length)
        self.start = int(self.R.randint(0, slack + 1)) if self._do_transform else slack // 2

    def __call__(self, signals: torch.Tensor, randomize: bool = True) -> torch.Tensor:
        if randomize:
            self.randomize(signals.shape[-1])
        return _crop_or_pad(signals, self.length, self.start)


class RandROIDropout(RandomizableTransform):
    """Zero a random subset of ROI rows of ``[R, T]`` (robustness to missing or noisy regions).

    Args:
        prob: probability of applying the dropout to a sample.
        fraction: fraction of ROIs zeroed when applied.
    """

    def __init__(self, prob: float = 0.1, fraction: float = 0.1) -> None:
        RandomizableTransform.__init__(self, prob)
        self.fraction = fraction
        self.dropped: np.ndarray = np.zeros(0, dtype=np.int64)

    def randomize(self, rois: int) -> None:
        super().randomize(None)
        count = int(round(self.fraction * rois)) if self._do_transform else 0
        self.dropped = self.R.choice(rois, size=count, replace=False)

    def __call__(self, signals: torch.Tensor, randomize: bool = True) -> torch.Tensor:
        if randomize:
            self.randomize(signals.shape[0])
        if len(self.dropped) == 0:
            return signals
        out = signals.clone()
        out[torch.as_tensor(self.dropped)] = 0
        return out


class _RandMapd(RandomizableTransform, MapTransform):
    """Apply one random array transform, drawn once per sample, to every key."""

    backend_transform: RandomizableTransform

    def __init__(self, keys: KeysCollection, allow_missing_keys: bool) -> None:
        MapTransform.__init__(self, keys, allow_missing_keys)
        RandomizableTransform.__init__(self, 1.0)

    def set_random_state(self, seed: int | None = None, state: np.random.RandomState | None = None):
        super().set_random_state(seed, state)
        self.backend_transform.set_random_state(seed, state)
        return self

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        first = True
        for key in self.key_iterator(d):
            d[key] = self.backend_transform(d[key], randomize=first)
            first = False
        return d


class RandTemporalCropd(_RandMapd):
    """Dictionary twin of :class:`RandTemporalCrop` (same window for every key).

    Args:
        keys: keys of ``[R, T]`` series.
        length, prob: see :class:`RandTemporalCrop`.
        allow_missing_keys: skip absent keys.
    """

    def __init__(self, keys: KeysCollection, length: int, prob: float = 1.0, allow_missing_keys: bool = False):
        self.backend_transform = RandTemporalCrop(length, prob)
        super().__init__(keys, allow_missing_keys)


class RandROIDropoutd(_RandMapd):
    """Dictionary twin of :class:`RandROIDropout` (same ROIs for every key).

    Args:
        keys: keys of ``[R, T]`` series.
        prob, fraction: see :class:`RandROIDropout`.
        allow_missing_keys: skip absent keys.
    """

    def __init__(
        self, keys: KeysCollection, prob: float = 0.1, fraction: float = 0.1, allow_missing_keys: bool = False
    ):
        self.backend_transform = RandROIDropout(prob, fraction)
        super().__init__(keys, allow_missing_keys)


class TemporalPadOrCropd(MapTransform):
    """Dictionary twin of :class:`TemporalPadOrCrop`.

    Args:
        keys: keys of ``[R, T]`` series.
        length: output number of time points.
        allow_missing_keys: skip absent keys.
    """

    def __init__(self, keys: KeysCollection, length: int, allow_missing_keys: bool = False):
        super().__init__(keys, allow_missing_keys)
        self.fix = TemporalPadOrCrop(length)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.fix(d[key])
        return d


# --- the chain ------------------------------------------------------------------------------------------

DEFAULT_FMRI_AUGMENTATION: dict[str, dict[str, float]] = {
    "temporal_crop": {"prob": 1.0},
    "noise": {"prob": 0.5, "std": 0.2},
    "amplitude": {"prob": 0.5, "factors": 0.2},
    "roi_dropout": {"prob": 0.3, "fraction": 0.1},
}


def fmri_steps(
    keys: str | Sequence[str] = "series",
    atlas: str = "AAL",
    timepoints: int = 96,
    train: bool = False,
    augment: bool = False,
    augmentation: Mapping[str, Mapping[str, float]] | None = None,
    high_pass: float | None = 0.01,
    low_pass: float | None = 0.1,
    tr_key: str = "tr",
) -> tuple[list, list]:
    """The fMRI chain as (deterministic steps, random steps): load 4D run -> ROI series ``[R, T]`` -> clean ->
    fixed length (-> augmentation).

    The time window is centred unless training with augmentation, where a random window
    (``RandTemporalCropd``) is one of the augmentations: a run with augmentation off is deterministic end to end.

    Args:
        keys: data keys holding BOLD paths.
        atlas: atlas name or label NIfTI path.
        timepoints: fixed sequence length the network sees.
        train: training chain (augmentation applies only when True).
        augment: random window, noise, amplitude scaling and ROI dropout.
        augmentation: per-transform settings overriding :data:`DEFAULT_FMRI_AUGMENTATION`.
        high_pass, low_pass: band-pass cutoffs in Hz (None disables one side).
        tr_key: data key of the repetition time in seconds.
    """
    settings = merge_settings(DEFAULT_FMRI_AUGMENTATION, augmentation, "fMRI")
    deterministic: list = [
        LoadImaged(keys=keys, image_only=True, dtype=np.float32),
        ROISignalsd(keys=keys, atlas=atlas),
        TemporalCleand(keys=keys, tr_key=tr_key, high_pass=high_pass, low_pass=low_pass),
    ]
    if not (train and augment):
        return deterministic + [TemporalPadOrCropd(keys=keys, length=timepoints)], []
    random = [
        RandTemporalCropd(keys=keys, length=timepoints, **settings["temporal_crop"]),
        RandGaussianNoised(keys=keys, prob=settings["noise"]["prob"], std=settings["noise"]["std"]),
        RandScaleIntensityd(keys=keys, prob=settings["amplitude"]["prob"], factors=settings["amplitude"]["factors"]),
        RandROIDropoutd(keys=keys, **settings["roi_dropout"]),
    ]
    return deterministic, random


def fmri_transforms(keys: str | Sequence[str] = "series", **kwargs) -> Compose:
    """The fMRI chain as one ``Compose`` (arguments of :func:`fmri_steps`), deterministic steps first."""
    deterministic, random = fmri_steps(keys, **kwargs)
    return Compose(deterministic + random + [EnsureTyped(keys=keys, dtype=torch.float32, track_meta=False)])
