"""Input quality control before any prediction: hard limits refuse a scan, soft ones become warnings.

The checks that every input of the pipeline gets (readable, not empty, not truncated, dimensionality, plausible grid;
finite, not blank, BOLD changing over time) are :mod:`pipeline.data.images`'s, the ones the bundles' chains run; this
module adds what inference needs on top, with thresholds from the bundle's ``inference.yaml`` (``qc#mri``,
``qc#fmri``): voxel size, field of view, orientation and obliquity, number of volumes, TR and its unit (header only),
and atlas coverage (on the arrays the bundle's chain loaded, so a scan is decompressed once).
"""

from __future__ import annotations

import functools
import math
import numbers
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from pipeline.data.atlas import Atlas, load_atlas
from pipeline.data.images import ImageError, check_header, check_values
from pipeline.data.timing import TIME_UNIT_SECONDS, TRError, resolve_tr

PASS, WARN, FAIL = "pass", "warn", "fail"
#: thresholds every ``qc#<modality>`` mapping of a bundle config needs
REQUIRED = {
    "mri": ("voxel_mm", "warn_voxel_mm", "fov_mm", "min_atlas_coverage", "warn_atlas_coverage", "warn_obliquity_deg"),
    "fmri": (
        "voxel_mm",
        "warn_voxel_mm",
        "fov_mm",
        "min_atlas_coverage",
        "warn_atlas_coverage",
        "warn_obliquity_deg",
        "min_volumes",
        "warn_volumes",
        "tr_seconds",
    ),
}
_RANGES = {"voxel_mm", "fov_mm", "tr_seconds"}  # [low, high]
_COUNTS = {"min_volumes", "warn_volumes"}
_SENTENCES = ("file", "values")  # checks failing with pipeline.data.images messages ("mri file is truncated: ...")
_ATLAS_STRIDE = 3  # every 3rd atlas voxel along each axis is enough to measure coverage (~55k AAL points)
_PERCENTILE_STRIDE = 4


class QCError(ValueError):
    """A scan failed a hard QC limit; the message is one line naming the file."""


@dataclass(frozen=True)
class Finding:
    """One QC check of one input.

    Attributes:
        modality: ``"mri"`` or ``"fmri"``.
        check: what was checked (``"voxel size"``).
        status: ``"pass"``, ``"warn"`` or ``"fail"``.
        value: what was measured.
        limit: the threshold and its bundle key, when one applies.
    """

    modality: str
    check: str
    status: str
    value: str
    limit: str = ""

    def as_dict(self) -> dict:
        return asdict(self)

    @property
    def message(self) -> str:
        """``"<check>: <value> (<limit>)"``; a refusal by :mod:`pipeline.data.images` is its own sentence."""
        head = "" if self.check in _SENTENCES and self.status == FAIL else f"{self.check}: "
        return head + self.value + (f" ({self.limit})" if self.limit else "")


def thresholds_of(qc: Mapping, modality: str, config: str) -> dict:
    """``qc#<modality>`` of a bundle config, with every required key.

    Args:
        qc: the parsed ``qc`` mapping.
        modality: ``"mri"`` or ``"fmri"``.
        config: the config file, for the error message.

    Raises:
        ValueError: the mapping or one of its keys is missing.
    """
    limits = dict((qc or {}).get(modality) or {})
    missing = [key for key in REQUIRED[modality] if key not in limits]
    if missing:
        raise ValueError(f"{config}: QC threshold qc#{modality}#{missing[0]} is missing")
    for key in REQUIRED[modality]:
        expected = _threshold_problem(key, limits[key])
        if expected:
            raise ValueError(f"{config}: QC threshold qc#{modality}#{key} must be {expected}, got {limits[key]!r}")
    return limits


def _threshold_problem(key: str, value: Any) -> str | None:
    """What a threshold must be, when ``value`` is not that (None: fine)."""

    def number(v: Any) -> bool:
        return isinstance(v, numbers.Real) and not isinstance(v, bool)

    if key in _RANGES:
        ok = isinstance(value, (list, tuple)) and len(value) == 2 and all(map(number, value)) and value[0] <= value[1]
        return None if ok else "a range [low, high] of two numbers"
    if key in _COUNTS:
        return None if isinstance(value, numbers.Integral) and not isinstance(value, bool) else "an integer"
    return None if number(value) else "a number"


def raise_on_failure(findings: list[Finding], sources: Mapping[str, str]) -> None:
    """Raise :class:`QCError` for the first failed check, naming the file of its modality.

    Args:
        findings: the QC findings.
        sources: the file (or DICOM folder) the user gave, per modality.
    """
    failed = [f for f in findings if f.status == FAIL]
    if failed:
        raise QCError(f"{sources[failed[0].modality]}: refused by QC: {failed[0].message}")


def warnings_of(findings: list[Finding]) -> list[str]:
    """The soft findings as messages."""
    return [f"{f.modality} {f.message}" for f in findings if f.status == WARN]


def _range(modality: str, check: str, value: float, text: str, limits: Mapping, key: str) -> Finding:
    low, high = limits[key]
    ok = low <= value <= high
    return Finding(modality, check, PASS if ok else FAIL, text, f"allowed {low:g}-{high:g}, qc#{modality}#{key}")


def _at_most(modality: str, check: str, value: float, text: str, limits: Mapping, key: str) -> Finding:
    ok = value <= limits[key]
    return Finding(modality, check, PASS if ok else WARN, text, f"warns above {limits[key]:g}, qc#{modality}#{key}")


# --- header checks --------------------------------------------------------------------------------------


def _refusal(modality: str, check: str, path: str | Path, err: ImageError) -> Finding:
    """A refusal of :func:`~pipeline.data.images.check_header` (``check="file"``) or
    :func:`~pipeline.data.images.check_values` (``"values"``) as a finding; the file is named once, by
    :func:`raise_on_failure`."""
    return Finding(modality, check, FAIL, str(err).replace(f": {path}", "").replace(f" {path}", "").strip())


def header_checks(
    modality: str, path: str | Path, limits: Mapping, tr: float | str | None = None, tr_source: str = "the manifest"
) -> list[Finding]:
    """Checks that need only the NIfTI header.

    The checks every input of the pipeline gets (exists, not empty, readable, dimensionality, plausible grid, not
    truncated) are :func:`pipeline.data.images.check_header`'s; added here: voxel size, field of view, orientation and,
    for fMRI, the number of volumes and the TR, against the bundle's thresholds.

    Args:
        modality: ``"mri"`` (T1) or ``"fmri"`` (BOLD).
        path: the NIfTI file.
        limits: ``qc#<modality>`` thresholds (see :func:`thresholds_of`).
        tr: TR in seconds given by the user or the manifest (fMRI; None: sidecar or header).
        tr_source: where ``tr`` came from, for messages (``"--tr"``, ``"the manifest"``).
    """
    try:
        header = check_header(path, modality)
    except ImageError as err:
        return [_refusal(modality, "file", path, err)]
    shape = tuple(int(n) for n in header.get_data_shape())
    dims = " x ".join(str(n) for n in shape)
    findings = [Finding(modality, "file", PASS, f"{type(header).__name__.removesuffix('Header')}, {dims}")]
    affine = header.get_best_affine()
    findings += _geometry(modality, affine, shape[:3], limits)
    findings.append(_orientation(modality, header, affine, limits))
    if modality == "fmri":
        findings += _volumes(shape[3], limits)
        findings += _tr(path, header, tr, limits, tr_source)
    return findings


def _geometry(modality: str, affine: np.ndarray, shape: tuple[int, ...], limits: Mapping) -> list[Finding]:
    voxel = np.linalg.norm(affine[:3, :3], axis=0)
    voxel_text = " x ".join(f"{v:.3g}" for v in voxel) + " mm"
    fov = voxel * np.asarray(shape)
    fov_text = " x ".join(f"{v:.0f}" for v in fov) + " mm"
    smallest = _range(modality, "voxel size", voxel.min(), voxel_text, limits, "voxel_mm")
    largest = _range(modality, "voxel size", voxel.max(), voxel_text, limits, "voxel_mm")
    size = smallest if smallest.status == FAIL else largest
    if size.status == PASS:
        size = _at_most(modality, "voxel size", voxel.max(), voxel_text, limits, "warn_voxel_mm")
    narrow = _range(modality, "field of view", fov.min(), fov_text, limits, "fov_mm")
    wide = _range(modality, "field of view", fov.max(), fov_text, limits, "fov_mm")
    return [size, narrow if narrow.status == FAIL else wide]


def _orientation(modality: str, header, affine: np.ndarray, limits: Mapping) -> Finding:
    codes = "".join(nib.aff2axcodes(affine))
    sform, qform = int(header["sform_code"]), int(header["qform_code"])
    oblique = math.degrees(float(np.max(nib.affines.obliquity(affine))))
    text = f"{codes}, {oblique:.1f} deg oblique (sform code {sform}, qform code {qform})"
    return _at_most(modality, "orientation", oblique, text, limits, "warn_obliquity_deg")


def _volumes(count: int, limits: Mapping) -> list[Finding]:
    if count < limits["min_volumes"]:
        return [Finding("fmri", "volumes", FAIL, str(count), f"needs >= {limits['min_volumes']}, qc#fmri#min_volumes")]
    padded = count < limits["warn_volumes"]
    limit = f"fewer than {limits['warn_volumes']} are zero padded, qc#fmri#warn_volumes"
    return [Finding("fmri", "volumes", WARN if padded else PASS, str(count), limit)]


def _tr(path, header, tr, limits: Mapping, tr_source: str) -> list[Finding]:
    try:
        seconds = resolve_tr(path, tr, tr_source)
    except TRError as err:
        return [Finding("fmri", "TR", FAIL, str(err).removeprefix(f"{path}: "))]
    zooms, unit = header.get_zooms(), header.get_xyzt_units()[1]
    stored = zooms[3] * TIME_UNIT_SECONDS.get(unit, math.nan) if len(zooms) > 3 else math.nan
    text = f"{seconds:g} s (header pixdim[4] {zooms[3]:g} {unit})" if len(zooms) > 3 else f"{seconds:g} s"
    finding = _range("fmri", "TR", seconds, text, limits, "tr_seconds")
    if finding.status == PASS and not math.isclose(stored, seconds, rel_tol=0.01):
        finding = Finding("fmri", "TR", WARN, text + f"; the header says {stored:g} s", "the given TR is used")
    return [finding]


# --- data checks ----------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=4)
def _atlas_points(atlas: Atlas) -> tuple[np.ndarray, np.ndarray]:
    """World coordinates ``[N, 4]`` (homogeneous) and ROI indices of a regular subsample of the atlas voxels."""
    data = np.asarray(atlas.image.dataobj)[::_ATLAS_STRIDE, ::_ATLAS_STRIDE, ::_ATLAS_STRIDE]
    voxels = np.argwhere(data > 0)
    labels = data[tuple(voxels.T)]
    world = atlas.image.affine @ np.c_[voxels * _ATLAS_STRIDE, np.ones(len(voxels))].T
    return world.T, np.searchsorted(np.asarray(atlas.labels), labels)


def _covered(volume: np.ndarray, affine: np.ndarray, atlas: Atlas) -> tuple[np.ndarray, np.ndarray]:
    """Per atlas point: inside the field of view and on foreground (> 10% of the 99.5th intensity percentile);
    and the voxel index of each point inside."""
    world, _ = _atlas_points(atlas)
    index = np.rint((np.linalg.inv(affine) @ world.T)[:3].T).astype(np.int64)
    inside = np.all((index >= 0) & (index < np.asarray(volume.shape[:3])), axis=1)
    sample = volume[(slice(None, None, _PERCENTILE_STRIDE),) * 3]
    threshold = 0.1 * float(np.percentile(sample, 99.5))
    covered = inside.copy()
    covered[inside] = volume[tuple(index[inside].T)] > threshold
    return covered, index


def data_checks(
    modality: str, array: np.ndarray, affine: np.ndarray, limits: Mapping, atlas: str, source: str | Path
) -> list[Finding]:
    """Checks of the loaded voxels.

    Finite, not blank and (fMRI) changing over time are :func:`~pipeline.data.images.check_values`'s, as everywhere in
    the pipeline; added here: the atlas coverage and, for fMRI, the share of covered atlas voxels whose signal changes
    and the ROIs left without signal.

    Args:
        modality: ``"mri"`` or ``"fmri"``.
        array: the T1 ``(X, Y, Z)`` or the run ``(X, Y, Z, T)``.
        affine: voxel-to-world affine of ``array``.
        limits: ``qc#<modality>`` thresholds.
        atlas: the bundle's atlas (name or label NIfTI).
        source: the file, for the messages.
    """
    try:
        check_values(array, modality, source)
    except ImageError as err:
        return [_refusal(modality, "values", source, err)]
    findings = [
        Finding(modality, "values", PASS, "finite, not blank" + (", varying over time" if array.ndim == 4 else ""))
    ]
    first = array if array.ndim == 3 else array[..., 0]
    atlas_image = load_atlas(str(atlas))
    covered, index = _covered(first, affine, atlas_image)
    if modality == "fmri":
        findings.append(_temporal(array, index[covered]))
    findings += _coverage(modality, covered, atlas_image, limits)
    return findings


#: the check name of :func:`registration_finding`
REGISTRATION_CHECK = "registration similarity"


def registration_finding(similarity: float, limits: Mapping) -> Finding:
    """The T1's similarity to the MNI152 template after registration (correlation inside its brain mask).

    A similarity below ``min_registration_similarity`` never gets here: the chain refuses the scan. Below
    ``warn_registration_similarity`` (optional key) the prediction carries a warning.
    """
    warn = limits.get("warn_registration_similarity")
    status = WARN if warn is not None and similarity < warn else PASS
    limit = f"warns below {warn:.2f}, qc#mri#warn_registration_similarity" if warn is not None else ""
    return Finding("mri", REGISTRATION_CHECK, status, f"{similarity:.3f}", limit)


def _temporal(run: np.ndarray, index: np.ndarray) -> Finding:
    series = run[tuple(index.T)]  # [points, T]
    changing = float(np.mean(series.max(axis=1) > series.min(axis=1))) if len(series) else 0.0
    status = PASS if changing >= 0.9 else (WARN if changing > 0 else FAIL)
    return Finding("fmri", "signal over time", status, f"changes in {changing:.0%} of covered atlas voxels")


def _coverage(modality: str, covered: np.ndarray, atlas: Atlas, limits: Mapping) -> list[Finding]:
    fraction = float(covered.mean())
    text = f"{fraction:.0%} of {atlas.name} atlas voxels inside the field of view on signal"
    key = "min_atlas_coverage" if fraction < limits["min_atlas_coverage"] else "warn_atlas_coverage"
    status = FAIL if key == "min_atlas_coverage" else (WARN if fraction < limits[key] else PASS)
    limit = f"{'refused' if status == FAIL else 'warns'} below {limits[key]:.0%}, qc#{modality}#{key}"
    findings = [Finding(modality, "atlas coverage", status, text, limit)]
    if modality == "fmri":
        _, rois = _atlas_points(atlas)
        hits = np.bincount(rois[covered], minlength=len(atlas.labels))
        empty = [atlas.names[i] for i in np.flatnonzero(hits == 0)]
        shown = ", ".join(empty[:5]) + (f" and {len(empty) - 5} more" if len(empty) > 5 else "")
        text = f"{len(empty)} of {len(atlas.labels)} ROIs without signal" + (f": {shown}" if empty else "")
        findings.append(Finding("fmri", "ROI coverage", WARN if empty else PASS, text, "such ROIs are all-zero rows"))
    return findings
