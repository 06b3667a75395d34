"""Train-only fMRI augmentation of ``[..., T]`` series: a random time window, ROI dropout, slow drift.

Each random transform draws its parameters in ``randomize()`` and then applies them deterministically; its ``...d``
twin draws once per sample and applies the same draw to every key."""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform, RandomizableTransform, SignalRandAddSine

from pipeline.transforms.temporal import crop_or_pad
from pipeline.transforms.utils import check_range

__all__ = [
    "RandDrift",
    "RandDriftd",
    "RandROIDropout",
    "RandROIDropoutd",
    "RandTemporalCrop",
    "RandTemporalCropd",
]


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


class RandTemporalCrop(RandomizableTransform):
    """Random window of ``length`` time points of ``[..., T]`` (training); shorter series are padded.

    With ``prob`` < 1 the other draws take the centre window, as
    :class:`~pipeline.transforms.temporal.TemporalPadOrCrop`.

    Args:
        length: output number of time points.
        prob: probability of a random (rather than centred) window.
    """

    def __init__(self, length: int, prob: float = 1.0) -> None:
        RandomizableTransform.__init__(self, check_range("RandTemporalCrop", "prob", prob, 0.0, 1.0))
        self.length = int(check_range("RandTemporalCrop", "length", length, 1, math.inf))
        self.start = 0

    def randomize(self, steps: int) -> None:
        super().randomize(None)
        slack = max(0, steps - self.length)
        self.start = int(self.R.randint(0, slack + 1)) if self._do_transform else slack // 2

    def __call__(self, signals: torch.Tensor, randomize: bool = True) -> torch.Tensor:
        if randomize:
            self.randomize(signals.shape[-1])
        return crop_or_pad(signals, self.length, self.start)


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


class RandROIDropout(RandomizableTransform):
    """Zero a random subset of ROI rows of ``[R, T]`` (robustness to missing or noisy regions).

    Args:
        prob: probability of applying the dropout to a sample, in [0, 1].
        fraction: fraction of ROIs zeroed when applied, in [0, 1) (every ROI zeroed would leave no signal).
    """

    def __init__(self, prob: float = 0.1, fraction: float = 0.1) -> None:
        RandomizableTransform.__init__(self, check_range("RandROIDropout", "prob", prob, 0.0, 1.0))
        self.fraction = check_range("RandROIDropout", "fraction", fraction, 0.0, 1.0, high_open=True)
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
        RandomizableTransform.__init__(self, check_range("RandDrift", "prob", prob, 0.0, 1.0))
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
