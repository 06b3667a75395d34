"""neurofusion: MONAI pipelines that classify CN / MCI / AD from structural MRI and resting-state fMRI."""

from __future__ import annotations

__version__ = "0.1.0"

CLASS_NAMES: tuple[str, ...] = ("CN", "MCI", "AD")
