"""Steps along the time axis of ``[..., T]`` series: confound regression, detrending, band-pass and z-scoring,
resampling to a common TR, and a fixed length (centre crop or symmetric zero pad)."""

from __future__ import annotations

import fnmatch
import math
from collections.abc import Hashable, Mapping, Sequence
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform, Transform

from pipeline.data.timing import PLAUSIBLE_TR_SECONDS, TRError
from pipeline.transforms.utils import as_numpy, check_range, source_of, with_meta_of

__all__ = [
    "DEFAULT_CONFOUNDS",
    "TemporalClean",
    "TemporalCleand",
    "TemporalPadOrCrop",
    "TemporalPadOrCropd",
    "TemporalResample",
    "TemporalResampled",
    "crop_or_pad",
    "load_confounds",
]

#: fMRIPrep confound columns regressed by default: 6 motion parameters, mean CSF and white-matter signals
#: (nilearn's ``load_confounds`` "simple" strategy without its cosine drift terms, which the band-pass replaces)
DEFAULT_CONFOUNDS = ("trans_?", "rot_?", "csf", "white_matter")


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
            raise TRError(f"{source_of(signals)}: band-pass filtering needs the run's TR")
        steps = signals.shape[-1]
        if confounds is not None and len(confounds) != steps:
            raise ValueError(f"{source_of(signals)}: {len(confounds)} confound rows for a run of {steps} volumes")
        array = np.asarray(as_numpy(signals), dtype=np.float64).reshape(-1, steps).T
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
                f"{source_of(signals)}: a run of {steps} volumes is too short to band-pass filter ({err}); "
                "use a longer run or disable the filter (high_pass/low_pass: null)"
            ) from None
        out = torch.from_numpy(np.ascontiguousarray(cleaned.T.reshape(signals.shape), dtype=np.float32))
        return with_meta_of(out, signals)


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
            raise TRError(f"{source_of(signals)}: resampling to a common TR needs the run's TR")
        ratio = Fraction(float(tr) / self.target_tr).limit_denominator(self.max_denominator)
        if ratio == 1:
            return signals
        array = np.asarray(as_numpy(signals), dtype=np.float64)
        resampled = resample_poly(array, ratio.numerator, ratio.denominator, axis=-1, padtype="line")
        out = torch.from_numpy(np.ascontiguousarray(resampled, dtype=np.float32))
        return with_meta_of(out, signals)


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


def crop_or_pad(signals: torch.Tensor, length: int, start: int) -> torch.Tensor:
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
        self.length = int(check_range("TemporalPadOrCrop", "length", length, 1, math.inf))

    def __call__(self, signals: torch.Tensor) -> torch.Tensor:
        return crop_or_pad(signals, self.length, max(0, (signals.shape[-1] - self.length) // 2))


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
