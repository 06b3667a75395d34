"""fMRI as a sequence: atlas ROI time series ``[R, T]``, TR-aware temporal cleaning, fixed length, augmentation.

Every sequence keeps time on its last axis, so the temporal steps (cleaning, TR resampling, crop / pad, noise)
apply unchanged to the three sequence modes of :func:`fmri_steps`:

- ``roi``: mean BOLD signal per atlas region, ``[R, T]`` (the default);
- ``dfc``: dynamic functional connectivity, the upper triangle of sliding-window ROI correlations, ``[P, W]``
  (``P = R (R - 1) / 2`` ROI pairs, ``W`` windows);
- ``volume``: the run itself, reoriented to RAS and downsampled, ``[X, Y, Z, T]`` (no atlas).

Array transforms do the math; their ``...d`` twins apply them to dictionary keys. :func:`fmri_transforms` builds
the one chain used by training, evaluation, inference and the study runner.
"""

from __future__ import annotations

import fnmatch
import functools
import logging
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pandas as pd
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import (
    Compose,
    EnsureChannelFirstd,
    EnsureTyped,
    LoadImaged,
    MapTransform,
    Orientationd,
    RandGaussianNoised,
    RandomizableTransform,
    RandScaleIntensityd,
    ResizeWithPadOrCropd,
    SignalRandAddSine,
    Spacingd,
    Transform,
    Transposed,
)
from scipy import sparse

from pipeline import SEQUENCES
from pipeline.data.atlas import Atlas, load_atlas
from pipeline.data.timing import PLAUSIBLE_TR_SECONDS, TRError
from pipeline.transforms.checks import CheckImageFiled, CheckImageValuesd
from pipeline.transforms.fmri_registration import FMRI_REGISTRATION_MODES, RegisterBOLDd
from pipeline.transforms.settings import merge_settings

logger = logging.getLogger(__name__)

#: fMRIPrep confound columns regressed by default: 6 motion parameters, mean CSF and white-matter signals
#: (nilearn's ``load_confounds`` "simple" strategy without its cosine drift terms, which the band-pass replaces)
DEFAULT_CONFOUNDS = ("trans_?", "rot_?", "csf", "white_matter")
#: float64 values converted at a time while averaging ROI voxels (8 MiB): the run is never copied to float64
_CHUNK_VALUES = 2**20


def _source(value: Any, fallback: Hashable = "fMRI") -> str:
    """The file a (Meta)tensor came from, for error messages."""
    meta = getattr(value, "meta", {}) or {}
    return str(meta.get("filename_or_obj") or fallback)


# --- ROI signals ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _GridLabels:
    """An atlas on one voxel grid: the voxels inside a region (flat indices in the run's memory order) and the
    sparse ``[R, voxels]`` averaging matrix (1 / region size)."""

    voxels: np.ndarray
    averaging: sparse.csr_array
    counts: np.ndarray


@functools.lru_cache(maxsize=32)
def _labels_on_grid(atlas: Atlas, shape: tuple[int, ...], affine_bytes: bytes, order: str) -> _GridLabels:
    """The atlas resampled (nearest) onto a run's grid through the two affines, as nilearn's masker does."""
    from nilearn.image import resample_to_img

    affine = np.frombuffer(affine_bytes, dtype=np.float64).reshape(4, 4)
    target = nib.Nifti1Image(np.zeros(shape, dtype=np.int8), affine)
    resampled = resample_to_img(atlas.image, target, interpolation="nearest", force_resample=True, copy_header=True)
    flat = np.asarray(resampled.dataobj).ravel(order=order)
    labels = np.asarray(atlas.labels)
    rows = np.minimum(np.searchsorted(labels, flat), len(labels) - 1)
    voxels = np.flatnonzero(labels[rows] == flat)
    rows = rows[voxels]
    counts = np.bincount(rows, minlength=len(labels))
    averaging = sparse.csr_array((1.0 / counts[rows], (rows, np.arange(len(voxels)))), shape=(len(labels), len(voxels)))
    return _GridLabels(voxels, averaging, counts)


def _float64_block(voxels_by_time: np.ndarray, voxels: np.ndarray, columns: slice, finite: bool) -> np.ndarray:
    """Some time points of the region voxels in float64 (a temporary: one block is alive at a time)."""
    block = voxels_by_time[voxels, columns].astype(np.float64)
    return np.nan_to_num(block, copy=False, posinf=0, neginf=0) if finite else block


def _as_numpy(array: torch.Tensor | np.ndarray) -> np.ndarray:
    """A CPU array view (no copy for CPU tensors)."""
    return np.asarray(array.detach().cpu()) if isinstance(array, torch.Tensor) else np.asarray(array)


class ROISignals(Transform):
    """Mean BOLD signal of every atlas region: ``(X, Y, Z, T)`` run -> ``[R, T]`` (float64).

    The atlas is resampled with nearest-neighbour interpolation onto the run's own voxel grid through the two
    affines (as nilearn's ``NiftiLabelsMasker(strategy="mean", resampling_target="data")`` does) and cached per
    grid. Rows follow the atlas label order (ascending label values); the metadata carries ``roi_labels``,
    ``roi_names`` and ``roi_empty``. Non-finite voxel values count as 0, as in nilearn.

    The means are sums accumulated in float64 over a few time points at a time, so they match nilearn to float64
    precision while the 4D run is never copied to float64.

    A region partly outside the run's field of view is averaged over its voxels inside it. A region with no voxel
    inside is never silently skipped (which would shift every later row); ``empty`` decides:
    ``"zero"`` keeps an all-zero row (a fixed ``R`` for the network), ``"drop"`` removes the row (nilearn's
    output), ``"error"`` refuses. Either way it is listed in ``roi_empty``.

    Args:
        atlas: built-in atlas name (``"AAL"``) or path to an integer label NIfTI.
        empty: ``"zero"``, ``"drop"`` or ``"error"``, see above.
    """

    def __init__(self, atlas: str = "AAL", empty: str = "zero") -> None:
        if empty not in ("zero", "drop", "error"):
            raise ValueError(f"empty must be 'zero', 'drop' or 'error', got {empty!r}")
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
            raise ValueError(f"{_source(run)}: ROISignals expects a 4D run (X, Y, Z, T), got {tuple(run.shape)}")
        array = _as_numpy(run)
        order = "F" if array.flags.f_contiguous and not array.flags.c_contiguous else "C"
        affine = np.ascontiguousarray(_as_numpy(torch.as_tensor(affine, dtype=torch.float64)))
        grid = _labels_on_grid(self.atlas, array.shape[:3], affine.tobytes(), order)
        means = self._means(array.reshape(-1, array.shape[3], order=order), grid)
        return self._with_empty_rows(means, grid.counts == 0, run)

    @staticmethod
    def _means(voxels_by_time: np.ndarray, grid: _GridLabels, finite: bool = False) -> np.ndarray:
        """Region means ``[R, T]``; ``finite`` zeroes non-finite voxel values first (only needed when a mean is
        not finite: any NaN or infinity in a region makes its sum non-finite)."""
        steps = voxels_by_time.shape[1]
        means = np.empty((grid.averaging.shape[0], steps))
        chunk = max(1, _CHUNK_VALUES // max(len(grid.voxels), 1))
        for start in range(0, steps, chunk):
            columns = slice(start, start + chunk)
            means[:, columns] = grid.averaging @ _float64_block(voxels_by_time, grid.voxels, columns, finite)
        if not finite and not np.isfinite(means).all():
            return ROISignals._means(voxels_by_time, grid, finite=True)
        return means

    def _with_empty_rows(self, means: np.ndarray, empty: np.ndarray, run: Any) -> MetaTensor:
        names = np.asarray(self.atlas.names)
        if empty.any() and self.empty == "error":
            raise ValueError(
                f"{_source(run)}: {empty.sum()} atlas regions have no voxel in the run's field of view: "
                + ", ".join(names[empty])
            )
        keep = ~empty if self.empty == "drop" else np.ones_like(empty)
        meta = {
            "roi_labels": [int(v) for v in np.asarray(self.atlas.labels)[keep]],
            "roi_names": names[keep].tolist(),
            "roi_empty": names[empty].tolist(),
            "filename_or_obj": _source(run, ""),
        }
        return MetaTensor(torch.from_numpy(np.ascontiguousarray(means[keep])), meta=meta)


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


def load_confounds(path: str | Path, columns: Sequence[str] = DEFAULT_CONFOUNDS) -> np.ndarray:
    """Confound regressors ``[T, C]`` from a TSV (e.g. fMRIPrep's ``desc-confounds_timeseries.tsv``).

    ``columns`` are names or shell patterns (``trans_?``), each of which must match a column. Derivative columns
    start with ``n/a``; as nilearn's ``load_confounds`` does, leading missing values take the first value after
    them. Any other missing value is refused.

    Args:
        path: tab-separated table with a header line.
        columns: columns to regress, in order (names or patterns).

    Raises:
        ValueError: a pattern matches no column, or a column has missing values after its first value.
    """
    table = pd.read_csv(path, sep="\t")
    selected = []
    for pattern in columns:
        matches = fnmatch.filter(table.columns, pattern)
        if not matches:
            raise ValueError(f"{path}: no confound column matches {pattern!r}")
        selected += [m for m in matches if m not in selected]
    frame = table[selected].astype(float)
    leading = frame.isna().cummin()
    frame = frame.mask(leading, frame.bfill())
    missing = frame.columns[frame.isna().any()].tolist()
    if missing:
        raise ValueError(f"{path}: confound column(s) {', '.join(missing)} have missing values")
    return frame.to_numpy()


class TemporalClean(Transform):
    """Detrend, regress confounds, band-pass and z-score each series of ``[..., T]`` with ``nilearn.signal.clean``.

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

    def __call__(
        self, signals: torch.Tensor | np.ndarray, tr: float | None = None, confounds: np.ndarray | None = None
    ) -> torch.Tensor:
        """Args:
        signals: ``[..., T]`` series (ROIs, ROI pairs or voxels before the time axis).
        tr: repetition time in seconds (required when filtering).
        confounds: ``[T, C]`` regressors removed from every series (see :func:`load_confounds`).
        """
        from nilearn.signal import clean

        filtering = self.high_pass is not None or self.low_pass is not None
        if filtering and not tr:
            raise TRError(f"{_source(signals)}: band-pass filtering needs the run's TR")
        steps = signals.shape[-1]
        if confounds is not None and len(confounds) != steps:
            raise ValueError(f"{_source(signals)}: {len(confounds)} confound rows for a run of {steps} volumes")
        array = np.asarray(_as_numpy(signals), dtype=np.float64).reshape(-1, steps).T
        try:
            cleaned = clean(
                array,
                detrend=self.detrend,
                standardize=self.standardize,
                confounds=confounds,
                filter="butterworth" if filtering else False,
                high_pass=self.high_pass,
                low_pass=self.low_pass,
                t_r=float(tr) if tr else None,
            )
        except ValueError as err:
            if "padlen" not in str(err):
                raise
            raise ValueError(
                f"{_source(signals)}: a run of {steps} volumes is too short to band-pass filter ({err}); "
                "use a longer run or disable the filter (high_pass/low_pass: null)"
            ) from None
        out = torch.from_numpy(np.ascontiguousarray(cleaned.T.reshape(signals.shape), dtype=np.float32))
        return MetaTensor(out, meta=dict(signals.meta)) if isinstance(signals, MetaTensor) else out


class TemporalCleand(MapTransform):
    """Dictionary twin of :class:`TemporalClean`; the TR (seconds) is read from ``data[tr_key]`` and the confounds
    TSV, when the item has one, from ``data[confounds_key]`` (an empty value means none).

    Args:
        keys: keys of ``[..., T]`` series.
        tr_key: key of the repetition time.
        detrend, high_pass, low_pass, standardize: see :class:`TemporalClean`.
        confounds_key: key of the confounds TSV path.
        confounds_columns: columns regressed, see :func:`load_confounds`.
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
        confounds_key: str = "confounds",
        confounds_columns: Sequence[str] = DEFAULT_CONFOUNDS,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.tr_key = tr_key
        self.confounds_key = confounds_key
        self.confounds_columns = tuple(confounds_columns)
        self.clean = TemporalClean(detrend, high_pass, low_pass, standardize)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        path = d.get(self.confounds_key)
        confounds = load_confounds(path, self.confounds_columns) if path else None
        for key in self.key_iterator(d):
            d[key] = self.clean(d[key], tr=d.get(self.tr_key), confounds=confounds)
        return d


# --- common time base -----------------------------------------------------------------------------------


class TemporalResample(Transform):
    """Resample ``[..., T]`` series from the run's TR to ``target_tr`` (polyphase filter, anti-aliased).

    Runs acquired with different TRs then share one time base before the fixed-length step. The output covers the
    run's duration ``T x TR``: ``ceil(T x TR / target_tr)`` steps, the first at the run's first volume. The TR
    ratio is approximated by a fraction with a denominator of at most ``max_denominator``.

    Args:
        target_tr: common repetition time in seconds.
        max_denominator: largest up/down sampling factor.
    """

    def __init__(self, target_tr: float, max_denominator: int = 100) -> None:
        low, high = PLAUSIBLE_TR_SECONDS
        if not low <= float(target_tr) <= high:
            raise TRError(f"common TR {target_tr} s is outside {low:g}-{high:g} s (fmri_common_tr is in seconds)")
        self.target_tr = float(target_tr)
        self.max_denominator = max_denominator

    def __call__(self, signals: torch.Tensor, tr: float | None) -> torch.Tensor:
        """Args:
        signals: ``[..., T]`` series.
        tr: the run's repetition time in seconds.
        """
        from scipy.signal import resample_poly

        if not tr:
            raise TRError(f"{_source(signals)}: resampling to a common TR needs the run's TR")
        ratio = Fraction(float(tr) / self.target_tr).limit_denominator(self.max_denominator)
        if ratio == 1:
            return signals
        array = np.asarray(_as_numpy(signals), dtype=np.float64)
        resampled = resample_poly(array, ratio.numerator, ratio.denominator, axis=-1, padtype="line")
        out = torch.from_numpy(np.ascontiguousarray(resampled, dtype=np.float32))
        return MetaTensor(out, meta=dict(signals.meta)) if isinstance(signals, MetaTensor) else out


class TemporalResampled(MapTransform):
    """Dictionary twin of :class:`TemporalResample`; reads the TR from ``data[tr_key]`` and sets it to the target.

    Args:
        keys: keys of ``[..., T]`` series.
        target_tr: common repetition time in seconds.
        tr_key: key of the repetition time.
        allow_missing_keys: skip absent keys.
    """

    def __init__(self, keys: KeysCollection, target_tr: float, tr_key: str = "tr", allow_missing_keys: bool = False):
        super().__init__(keys, allow_missing_keys)
        self.resample = TemporalResample(target_tr)
        self.tr_key = tr_key

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.resample(d[key], tr=d.get(self.tr_key))
        d[self.tr_key] = self.resample.target_tr
        return d


# --- dynamic functional connectivity --------------------------------------------------------------------


class SlidingWindowCorrelation(Transform):
    """Dynamic functional connectivity: ``[R, T]`` ROI series -> ``[R (R - 1) / 2, W]``.

    Each of the ``W = (T - window) // step + 1`` windows gives the Pearson correlations of every ROI pair (upper
    triangle, row-major order of ``torch.triu_indices``); a series constant over a window (an all-zero ROI or
    padding) correlates 0 with everything.

    Args:
        window: window length in time points.
        step: time points between window starts.
    """

    def __init__(self, window: int = 30, step: int = 5) -> None:
        if window < 2 or step < 1:
            raise ValueError(f"dfc window must be >= 2 and step >= 1, got window={window}, step={step}")
        self.window = int(window)
        self.step = int(step)

    def __call__(self, signals: torch.Tensor) -> torch.Tensor:
        series = torch.as_tensor(signals).as_subclass(torch.Tensor).to(torch.float32)
        if series.shape[-1] < self.window:
            raise ValueError(f"dfc window of {self.window} time points is longer than the series ({series.shape[-1]})")
        windows = series.unfold(-1, self.window, self.step)  # [R, W, window]
        centred = windows - windows.mean(dim=-1, keepdim=True)
        unit = centred / centred.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        correlations = torch.einsum("rwl,swl->wrs", unit, unit)
        rows, cols = torch.triu_indices(series.shape[0], series.shape[0], offset=1)
        return correlations[:, rows, cols].T.contiguous()


class SlidingWindowCorrelationd(MapTransform):
    """Dictionary twin of :class:`SlidingWindowCorrelation`.

    Args:
        keys: keys of ``[R, T]`` series.
        window, step: see :class:`SlidingWindowCorrelation`.
        allow_missing_keys: skip absent keys.
    """

    def __init__(self, keys: KeysCollection, window: int = 30, step: int = 5, allow_missing_keys: bool = False):
        super().__init__(keys, allow_missing_keys)
        self.correlation = SlidingWindowCorrelation(window, step)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.correlation(d[key])
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
    """Deterministic centre crop / symmetric zero pad of ``[..., T]`` to ``length`` time points (evaluation).

    Args:
        length: output number of time points.
    """

    def __init__(self, length: int) -> None:
        self.length = int(length)

    def __call__(self, signals: torch.Tensor) -> torch.Tensor:
        return _crop_or_pad(signals, self.length, max(0, (signals.shape[-1] - self.length) // 2))


class RandTemporalCrop(RandomizableTransform):
    """Random window of ``length`` time points of ``[..., T]`` (training); shorter series are padded.

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


class RandDrift(RandomizableTransform):
    """Add one slow sinusoid to every series of ``[..., T]`` (residual scanner drift), with MONAI's
    ``SignalRandAddSine``.

    Args:
        prob: probability of adding a drift to a sample.
        boundaries: range of the sinusoid's amplitude (in units of the z-scored series).
        frequencies: range of its angular frequency in radians per time point.
    """

    def __init__(
        self, prob: float = 0.0, boundaries: Sequence[float] = (0.1, 0.3), frequencies: Sequence[float] = (0.01, 0.1)
    ) -> None:
        RandomizableTransform.__init__(self, prob)
        self.sine = SignalRandAddSine(boundaries=tuple(boundaries), frequencies=tuple(frequencies))

    def set_random_state(self, seed: int | None = None, state: np.random.RandomState | None = None):
        super().set_random_state(seed, state)
        self.sine.set_random_state(state=self.R)
        return self

    def __call__(self, signals: torch.Tensor, randomize: bool = True) -> torch.Tensor:
        if randomize:
            self.randomize(None)
        if not self._do_transform:
            return signals
        drifted = self.sine(torch.as_tensor(signals).reshape(-1, signals.shape[-1]))
        return drifted.reshape(signals.shape).to(signals.dtype)


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
        keys: keys of ``[..., T]`` series.
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


class RandDriftd(_RandMapd):
    """Dictionary twin of :class:`RandDrift` (whether to add a drift is drawn once per sample).

    Args:
        keys: keys of ``[..., T]`` series.
        prob, boundaries, frequencies: see :class:`RandDrift`.
        allow_missing_keys: skip absent keys.
    """

    def __init__(
        self,
        keys: KeysCollection,
        prob: float = 0.0,
        boundaries: Sequence[float] = (0.1, 0.3),
        frequencies: Sequence[float] = (0.01, 0.1),
        allow_missing_keys: bool = False,
    ):
        self.backend_transform = RandDrift(prob, boundaries, frequencies)
        super().__init__(keys, allow_missing_keys)


class TemporalPadOrCropd(MapTransform):
    """Dictionary twin of :class:`TemporalPadOrCrop`.

    Args:
        keys: keys of ``[..., T]`` series.
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
        confounds_columns: confound columns (names or patterns), see :func:`load_confounds`.
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
