"""Repetition time of a BOLD run: from the manifest, the BIDS sidecar or the NIfTI header, refused when implausible."""

from __future__ import annotations

import contextlib
import math
from pathlib import Path
from typing import Any

import nibabel as nib

from pipeline.data.images import SidecarError, read_sidecar

__all__ = ["PLAUSIBLE_TR_SECONDS", "TIME_UNIT_SECONDS", "TRError", "resolve_tr"]

PLAUSIBLE_TR_SECONDS = (0.1, 10.0)
#: seconds per NIfTI time unit (``unknown`` is taken as seconds)
TIME_UNIT_SECONDS = {"sec": 1.0, "msec": 1e-3, "usec": 1e-6, "unknown": 1.0}


class TRError(ValueError):
    """The repetition time of a run is missing or implausible."""


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


def _seconds(value: Any, sidecar: Path) -> float:
    """A sidecar's ``RepetitionTime`` as a number of seconds (a number, or text holding one)."""
    if not isinstance(value, bool):
        with contextlib.suppress(TypeError, ValueError):
            return float(value)
    raise TRError(f"{sidecar}: RepetitionTime {value!r} is not a number of seconds")


def resolve_tr(bold_path: str | Path, manifest_tr: float | str | None = None, given_by: str = "the manifest") -> float:
    """Repetition time in seconds, from (in order) the manifest, the BIDS sidecar, the NIfTI header.

    The header's ``pixdim[4]`` is read with its time unit (``sec``, ``msec``, ``usec``; ``unknown`` is taken as
    seconds). A value outside 0.1-10 s is refused rather than guessed: a TR of 2000 stored under a seconds unit
    (a scanner writing milliseconds, e.g. nibabel's ``example4d.nii.gz``) is reported as "looks like
    milliseconds", and the manifest's ``tr`` overrides it.

    Args:
        bold_path: the 4D BOLD NIfTI.
        manifest_tr: the manifest's ``tr`` value, if any (blank / NaN means absent).
        given_by: where ``manifest_tr`` came from, for messages (e.g. ``"--tr"``).

    Raises:
        TRError: no source gives a TR, the TR found is implausible, or the sidecar cannot be read (named).
    """
    bold_path = Path(bold_path)
    if manifest_tr is not None and str(manifest_tr).strip() not in ("", "nan"):
        return _check_plausible(float(manifest_tr), given_by, bold_path)
    sidecar = _sidecar_of(bold_path)
    if sidecar.is_file() or sidecar.is_symlink():  # a link to nothing (a git-annex file not fetched) is refused
        try:
            tr = read_sidecar(sidecar).get("RepetitionTime")
        except SidecarError as err:
            raise TRError(str(err)) from None
        if tr is not None:
            return _check_plausible(_seconds(tr, sidecar), f"sidecar {sidecar.name}", bold_path)
    header = nib.load(str(bold_path)).header
    zooms = header.get_zooms()
    unit = header.get_xyzt_units()[1]
    if len(zooms) < 4 or not zooms[3] > 0 or unit not in TIME_UNIT_SECONDS:
        raise TRError(f"{bold_path}: no TR in the manifest, the sidecar or the header; give 'tr' in the manifest")
    scale = TIME_UNIT_SECONDS[unit]
    return _check_plausible(float(zooms[3]) * scale, f"the header (pixdim[4]={zooms[3]:g} {unit})", bold_path)
