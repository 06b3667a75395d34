"""Helpers shared by the fMRI series transforms: the file a series came from, a NumPy view, metadata kept."""

from __future__ import annotations

from collections.abc import Hashable
from typing import Any

import numpy as np
import torch
from monai.data import get_track_meta
from monai.utils import convert_to_dst_type, convert_to_tensor

__all__ = ["as_numpy", "check_range", "source_of", "with_meta_of"]


def source_of(value: Any, fallback: Hashable = "fMRI") -> str:
    """The file a (Meta)tensor came from, for error messages."""
    meta = getattr(value, "meta", {}) or {}
    return str(meta.get("filename_or_obj") or fallback)


def as_numpy(array: torch.Tensor | np.ndarray) -> np.ndarray:
    """A CPU array view (no copy for CPU tensors)."""
    return np.asarray(array.detach().cpu()) if isinstance(array, torch.Tensor) else np.asarray(array)


def check_range(owner: str, name: str, value: float, low: float, high: float, high_open: bool = False) -> float:
    """``value`` when it lies in ``[low, high]`` (``[low, high)`` with ``high_open``), as TorchIO checks its
    constructor arguments; a ``ValueError`` naming ``owner`` and ``name`` otherwise (MONAI would clamp a ``prob``)."""
    inside = low <= value < high if high_open else low <= value <= high
    if not inside:
        interval = f"[{low:g}, {high:g}{')' if high_open else ']'}"
        raise ValueError(f"{owner}: {name} must be in {interval}, got {value!r}")
    return value


def with_meta_of(out: torch.Tensor, signals: Any) -> torch.Tensor:
    """``out`` (same dtype) carrying the metadata of ``signals`` while MONAI tracks metadata (``get_track_meta()``);
    a plain tensor otherwise, as MONAI's own transforms return."""
    source = convert_to_tensor(signals, track_meta=get_track_meta())
    return convert_to_dst_type(out, dst=source, dtype=out.dtype)[0]
