"""Image files refused before they reach a model: unreadable, truncated, absurd or blank scans, and their sidecars.

:func:`check_header` reads only the NIfTI header (and the file's size), so a corrupt header claiming a huge grid is
refused before anything is allocated; :func:`check_values` runs on the loaded array. Both raise :class:`ImageError`
with one line naming the file. The manifest validation, the MONAI chains (``pipeline.transforms.checks``) and the
commands use them, so a broken scan gets the same message wherever it enters. :func:`read_sidecar` reads a BIDS JSON
sidecar the same way (:class:`SidecarError`); :func:`fingerprint` and :func:`content_sha256` tell the same image
under two names.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import json
import math
import zlib
from pathlib import Path
from typing import Any

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
_GZIP_MAGIC = b"\x1f\x8b"
#: bytes of an image's (decompressed) start in its :func:`fingerprint`: the header and the first voxels
_PREFIX = 2**16
#: blocks of an uncompressed file sampled, evenly spaced, by :func:`fingerprint`
_SAMPLES = 16


class ImageError(ValueError):
    """An image file cannot be used; the message names the file and the problem."""


class SidecarError(ValueError):
    """A BIDS JSON sidecar cannot be read; the message names the file and the problem."""


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
        raise ImageError(f"{kind} file not found: {path}{_unfetched(path)}")
    if path.stat().st_size == 0:
        raise ImageError(f"{kind} file is empty: {path}")
    _check_compression(path, kind)
    try:
        image = nib.load(str(path))
    except Exception as err:  # nibabel raises many types for files that are not images
        raise ImageError(f"{kind} file is not a readable NIfTI: {path} ({type(err).__name__}: {err})") from None
    shape = tuple(int(s) for s in image.header.get_data_shape())
    _check_dimensions(shape, kind, path)
    if str(path).endswith((".nii", ".nii.gz")):
        _check_complete(path, image, shape, kind)
    return image.header


def _unfetched(path: Path) -> str:
    """A hint for a symbolic link to nothing: a DataLad / git-annex file whose content is not on this machine."""
    if path.is_symlink() and not path.exists():
        return " (a symbolic link to a missing file: a DataLad / git-annex file not fetched? `datalad get` it)"
    return ""


def _check_compression(path: Path, kind: str) -> None:
    """Refuse a NIfTI whose compression disagrees with its name (nibabel picks the reader by the name)."""
    gzipped = _gzipped(path)
    if gzipped and path.name.endswith(".nii") and _is_nifti(path):
        raise ImageError(f"{kind} file is gzip-compressed but named .nii: rename it to .nii.gz: {path}")
    if not gzipped and path.name.endswith(".nii.gz") and _is_nifti(path):
        raise ImageError(f"{kind} file is not gzip-compressed but named .nii.gz: rename it to .nii: {path}")


def _is_nifti(path: Path) -> bool:
    """Whether the (decompressed) content starts with a NIfTI-1 or NIfTI-2 header, by its magic string."""
    with contextlib.suppress(OSError, EOFError, zlib.error), _opened(path) as content:
        start = content.read(348)
        return start[344:348] == b"n+1\0" or start[4:8] == b"n+2\0"
    return False


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


def _gzipped(path: Path) -> bool:
    """Whether a file is gzip-compressed, by its first bytes (not its name)."""
    with open(path, "rb") as handle:
        return handle.read(2) == _GZIP_MAGIC


def _opened(path: Path):
    """The file's content, decompressed when it is gzipped."""
    return gzip.open(path, "rb") if _gzipped(path) else open(path, "rb")


def fingerprint(path: str | Path) -> str:
    """A cheap hash of an image file's header and data: equal for copies of one file, and for one ``.nii.gz``
    compressed at two levels (a ``.nii`` and a ``.nii.gz`` of one image differ).

    It hashes the first 64 KiB of the content (header and first voxels) and, for a gzip file, its trailer (the CRC-32
    and size of the whole content), else the file size and 16 evenly spaced 4 KiB blocks: a few reads per file. Files
    with different fingerprints differ; equal ones are most likely the same image (confirm with
    :func:`content_sha256`).
    """
    path = Path(path)
    digest = hashlib.sha256()
    with _opened(path) as content:
        digest.update(content.read(_PREFIX))
    with open(path, "rb") as handle:
        if _gzipped(path):
            handle.seek(-8, 2)
            digest.update(handle.read(8))
        else:
            size = path.stat().st_size
            digest.update(size.to_bytes(8, "little"))
            for index in range(_SAMPLES):
                handle.seek(index * size // _SAMPLES)
                digest.update(handle.read(2**12))
    return digest.hexdigest()


def content_sha256(path: str | Path) -> str:
    """SHA-256 of an image file's whole content (decompressed when gzipped): header, extensions and voxels."""
    digest = hashlib.sha256()
    with _opened(Path(path)) as content:
        while chunk := content.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def read_sidecar(path: str | Path) -> dict[str, Any]:
    """A BIDS JSON sidecar as a dict (UTF-8, a leading byte-order mark allowed).

    Raises:
        SidecarError: the file cannot be read (a git-annex link whose content is not fetched), is not UTF-8
            text, not valid JSON (empty, truncated, hand-edited) or not a JSON object; the message names the file.
    """
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as err:
        raise SidecarError(f"{path}: BIDS sidecar cannot be read ({err.strerror}){_unfetched(path)}") from None
    try:
        value = json.loads(raw.decode("utf-8-sig"))
    except UnicodeDecodeError as err:
        raise SidecarError(
            f"{path}: BIDS sidecar is not UTF-8 text (byte 0x{raw[err.start]:02x} at offset {err.start})"
        ) from None
    except json.JSONDecodeError as err:
        if not raw.strip():
            raise SidecarError(f"{path}: BIDS sidecar is empty") from None
        raise SidecarError(
            f"{path}: BIDS sidecar is not valid JSON ({err.msg} at line {err.lineno} column {err.colno}; truncated or "
            "hand-edited?)"
        ) from None
    if not isinstance(value, dict):
        kind = {list: "a list", str: "a string", type(None): "null"}.get(type(value), type(value).__name__)
        raise SidecarError(f'{path}: BIDS sidecar must hold a JSON object ({{"key": value, ...}}), not {kind}')
    return value
