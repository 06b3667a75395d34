"""Dynamic functional connectivity: sliding-window correlations of every ROI pair, ``[R, T]`` -> ``[P, W]``."""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from typing import Any

import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform, Transform

__all__ = [
    "SlidingWindowCorrelation",
    "SlidingWindowCorrelationd",
]


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
