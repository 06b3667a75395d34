"""A DICOM series folder -> NIfTI with ``dcm2niix`` (Rorden's converter, the ``dcm2niix`` wheel's binary): geometry
from the slices' patient position and orientation, localisers and mixed series reported rather than stacked."""

from __future__ import annotations

import os
import subprocess
import tempfile
from pathlib import Path


def dicom_series_to_nifti(folder: str | Path, out: str | Path) -> Path:
    """Convert the one DICOM series in ``folder`` to the NIfTI file ``out`` (``.nii.gz``).

    The conversion's scratch files live next to ``out``.

    Args:
        folder: a folder holding the slices of one series.
        out: the ``.nii.gz`` written.

    Raises:
        ValueError: ``dcm2niix`` found no series, or more than one.
    """
    from dcm2niix import bin as dcm2niix

    folder, out = Path(folder), Path(out)
    with tempfile.TemporaryDirectory(prefix=".dcm2niix-", dir=out.parent) as work:
        command = [dcm2niix, "-z", "y", "-b", "n", "-f", "series_%s", "-o", work, str(folder)]
        result = subprocess.run(command, capture_output=True, text=True)
        converted = sorted(Path(work).glob("*.nii.gz"))
        if result.returncode != 0 or not converted:
            reason = (result.stderr or result.stdout).strip().splitlines()
            detail = f": {reason[-1]}" if reason else ""
            raise ValueError(f"{folder}: no DICOM series converted (dcm2niix exit {result.returncode}{detail})")
        if len(converted) > 1:
            raise ValueError(f"{folder}: holds {len(converted)} DICOM series or volumes; give the folder of one series")
        os.replace(converted[0], out)
    return out
