"""Image files refused before they reach a model: unreadable, truncated, absurd or blank scans.

:func:`check_header` reads only the NIfTI header (and the file's size), so a corrupt header claiming a huge grid is
refused before anything is allocated; :func:`check_values` runs on the loaded array. Both raise :class:`ImageError`
with one line naming the file. The manifest validation, the MONAI chains (``pipeline.transforms.checks``) and the
commands use them, so a broken scan gets the same message wherever it enters.
"""

from __future__ import annotations

import math
import zlib
from pathlib import Path

import nibabel as nib
import numpy as np

#: largest plausible extent of one spatial axis, in voxels (a 0.2 mm whole-head T1 is ~1300)
MAX_AXIS_VOXELS = 4096
#: largest plausible number of values in one file (16 GiB as float32): a 1 mm T1 has 1.7e7, a long
#: high-resolution BOLD run ~1e9
MAX_VALUES = 2**32
_KINDS = ("mri", "fmri")
_CHUNK = 2**20
_GZIP = 16 + zlib.MAX_WBITS  # zlib window bits that read a gzip header and trailer


class ImageError(ValueError):
    """An image file cannot be used; the message names the file and the problem."""


def check_header(path: str | Path, kind: str) -> nib.Nifti1Header:
    """The header of a T1 (``kind="mri"``) or BOLD (``"fmri"``) file, refused when the file cannot be used.

    Checks, without reading the voxels: the file exists and is not empty, nibabel reads its header, the
    dimensionality fits the kind (3D T1, or 4D with one volume; 4D BOLD with at least 2 volumes), the grid is
    plausible (at most :data:`MAX_AXIS_VOXELS` per axis and :data:`MAX_VALUES` values), and a ``.nii`` /
    ``.nii.gz`` file holds all the data its header promises (truncated downloads and copies).

    Args:
        path: the image file.
        kind: ``"mri"`` or ``"fmri"``.

    Raises:
        ImageError: the first problem found, naming the file.
    """
    if kind not in _KINDS:
        raise ValueError(f"kind must be one of {', '.join(_KINDS)}, got {kind!r}")
    path = Path(path)
    if not path.is_file():
        raise ImageError(f"{kind} file not found: {path}")
    if path.stat().st_size == 0:
        raise ImageError(f"{kind} file is empty: {path}")
    try:
        image = nib.load(str(path))
    except Exception as err:  # nibabel raises many types for files that are not images
        raise ImageError(f"{kind} file is not a readable NIfTI: {path} ({type(err).__name__}: {err})") from None
    shape = tuple(int(s) for s in image.header.get_data_shape())
    _check_dimensions(shape, kind, path)
    if str(path).endswith((".nii", ".nii.gz")):
        _check_complete(path, image, shape, kind)
    return image.header


def _check_dimensions(shape: tuple[int, ...], kind: str, path: Path) -> None:
    if kind == "mri" and not (len(shape) == 3 or (len(shape) == 4 and shape[3] == 1)):
        raise ImageError(f"mri must be a 3D T1 image, got shape {shape}: {path}")
    if kind == "fmri" and (len(shape) != 4 or shape[3] < 2):
        raise ImageError(f"fmri must be a 4D BOLD run, got shape {shape}: {path}")
    values = math.prod(shape)
    if min(shape) < 1 or max(shape[:3]) > MAX_AXIS_VOXELS or values > MAX_VALUES:
        raise ImageError(
            f"{kind} header claims an implausible grid {shape} ({values:.3g} values; at most {MAX_AXIS_VOXELS} "
            f"voxels per axis and {MAX_VALUES:.3g} values): corrupt header? {path}"
        )


def _check_complete(path: Path, image, shape: tuple[int, ...], kind: str) -> None:
    """Refuse a file shorter than its data block (where nibabel reads it from + shape x item size)."""
    expected = int(image.dataobj.offset) + math.prod(shape) * image.header.get_data_dtype().itemsize
    if str(path).endswith(".gz"):
        held = _gzip_size(path, expected)
    else:
        held = path.stat().st_size
    if held < expected:
        raise ImageError(f"{kind} file is truncated: its header promises {expected} bytes, it holds {held}: {path}")


def _gzip_size(path: Path, expected: int) -> int:
    """Uncompressed size of a gzip file: the trailer's size field (size mod 2**32) when it agrees with
    ``expected``, else by decompressing it (a truncated, corrupt or multi-member file): the bytes it yields."""
    with open(path, "rb") as handle:
        handle.seek(-4, 2)
        if int.from_bytes(handle.read(4), "little") == expected % 2**32:
            return expected
        handle.seek(0)
        held, stream = 0, zlib.decompressobj(_GZIP)
        while chunk := handle.read(_CHUNK):
            try:
                held += len(stream.decompress(chunk))
                while stream.eof and stream.unused_data:  # the next member of a multi-member file
                    chunk, stream = stream.unused_data, zlib.decompressobj(_GZIP)
                    held += len(stream.decompress(chunk))
            except zlib.error:
                break
    return held


def check_values(array: np.ndarray, kind: str, source: str | Path) -> None:
    """Refuse a loaded image whose voxels cannot be used: NaN or infinite values, every voxel equal (a blank or
    all-zero scan), or, for a BOLD run (time last), no voxel changing over time.

    Only the minimum and maximum are computed unless a problem is found, so no copy of the image is made.

    Args:
        array: the voxels (a numpy array or CPU tensor; time on the last axis for ``"fmri"``).
        kind: ``"mri"`` or ``"fmri"``.
        source: the file, for the message.

    Raises:
        ImageError: naming the file and the problem.
    """
    data = np.asarray(array)
    low, high = float(data.min()), float(data.max())
    if not (math.isfinite(low) and math.isfinite(high)):
        bad = data.size - int(np.count_nonzero(np.isfinite(data)))
        raise ImageError(
            f"{kind} image has {bad} NaN or infinite voxel value(s): {source}; replace them (e.g. by 0) before use"
        )
    if low == high:
        raise ImageError(f"{kind} image is blank: every voxel is {low:g}: {source}")
    if kind == "fmri" and np.array_equal(data.max(axis=-1), data.min(axis=-1)):
        raise ImageError(f"fmri run has no signal over time: every voxel is constant across volumes: {source}")
