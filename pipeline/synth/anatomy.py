"""Template-space anatomy: MNI152 tissue maps, AAL regions, ventricles and output grids.

Everything here is computed from real offline data (nilearn's MNI152 2009 templates and the AAL atlas) once
per resolution and cached; per-subject synthesis only samples these arrays.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import nibabel as nib
import numpy as np
from scipy import ndimage

#: MNI bounding box (mm) of every synthetic image: the classic 181 x 217 x 181 MNI grid at 1 mm.
BBOX_MIN_MM = (-90.0, -126.0, -72.0)
BBOX_MAX_MM = (90.0, 90.0, 108.0)

#: Atrophy weight per AAL region stem: medial temporal regions atrophy first, lateral temporal later.
MEDIAL_TEMPORAL_WEIGHTS = {"Hippocampus": 1.0, "Amygdala": 0.9, "ParaHippocampal": 0.7}
LATERAL_TEMPORAL_WEIGHTS = {
    "Temporal_Inf": 0.6,
    "Temporal_Mid": 0.4,
    "Temporal_Pole_Sup": 0.5,
    "Temporal_Pole_Mid": 0.6,
}

#: AAL regions whose grey matter the structural disease model removes.
ATROPHY_REGIONS: tuple[str, ...] = tuple(
    f"{stem}_{hemi}" for stem in (*MEDIAL_TEMPORAL_WEIGHTS, *LATERAL_TEMPORAL_WEIGHTS) for hemi in ("L", "R")
)


def output_grid(voxel_mm: float) -> tuple[tuple[int, int, int], np.ndarray]:
    """Shape and affine of the MNI bounding box sampled at an isotropic voxel size.

    Args:
        voxel_mm: voxel size in mm.

    Returns:
        ``(shape, affine)``; the affine is RAS (positive diagonal) with the first voxel at the box corner.
    """
    lo, hi = np.asarray(BBOX_MIN_MM), np.asarray(BBOX_MAX_MM)
    shape = tuple(int(n) for n in np.floor((hi - lo) / voxel_mm + 1e-6).astype(int) + 1)
    affine = np.diag([voxel_mm, voxel_mm, voxel_mm, 1.0])
    affine[:3, 3] = lo
    return shape, affine


def resample_nearest(data: np.ndarray, affine: np.ndarray, shape, target_affine: np.ndarray) -> np.ndarray:
    """Nearest-neighbour resampling of a label array onto another grid through the affines.

    Args:
        data: 3D source array (labels or a mask).
        affine: source voxel-to-mm affine.
        shape: target 3D shape.
        target_affine: target voxel-to-mm affine.
    """
    matrix = np.linalg.inv(affine) @ target_affine
    return ndimage.affine_transform(data, matrix, output_shape=tuple(shape[:3]), order=0, mode="constant", cval=0)


def _world_coords(shape, affine: np.ndarray) -> list[np.ndarray]:
    """Per-axis mm coordinates of an axis-aligned grid (broadcastable 1D arrays)."""
    axes = []
    for c in range(3):
        view = [1, 1, 1]
        view[c] = shape[c]
        axes.append((np.arange(shape[c]) * affine[c, c] + affine[c, 3]).reshape(view))
    return axes


@functools.lru_cache(maxsize=1)
def aal_atlas():
    """The AAL atlas (116 regions, cached)."""
    from pipeline.data.atlas import load_atlas

    return load_atlas("AAL")


def region_mask(reference_img: nib.Nifti1Image, regions) -> np.ndarray:
    """Boolean mask of AAL regions resampled (nearest neighbour) onto a reference image grid.

    Args:
        reference_img: any 3D or 4D NIfTI; its first three dimensions and affine define the grid.
        regions: AAL region names, e.g. ``("Hippocampus_L", "Hippocampus_R")``.
    """
    atlas = aal_atlas()
    unknown = [name for name in regions if name not in atlas.names]
    if unknown:
        raise ValueError(f"unknown AAL region(s): {', '.join(unknown)}")
    labels = [atlas.labels[atlas.index_of(name)] for name in regions]
    selected = np.isin(np.asarray(atlas.image.dataobj), labels).astype(np.uint8)
    return resample_nearest(selected, atlas.image.affine, reference_img.shape, reference_img.affine) > 0


def atrophy_mask(reference_img: nib.Nifti1Image, regions=None) -> np.ndarray:
    """Boolean mask of the atrophied AAL regions on a reference image grid.

    Args:
        reference_img: any 3D or 4D NIfTI; its first three dimensions and affine define the grid.
        regions: a subset of ``ATROPHY_REGIONS`` (default: all of them).
    """
    regions = ATROPHY_REGIONS if regions is None else tuple(regions)
    outside = sorted(set(regions) - set(ATROPHY_REGIONS))
    if outside:
        raise ValueError(f"not atrophy regions: {', '.join(outside)}; see ATROPHY_REGIONS")
    return region_mask(reference_img, regions)


@dataclass(frozen=True)
class TemplateSpace:
    """MNI152 arrays on the template's 1 mm grid, cropped around the brain.

    Attributes:
        affine: template voxel-to-mm affine.
        t1: T1 intensity, float32, white matter median = 1.
        brain: brain mask (float32 in [0, 1], for linear sampling).
        medial_weight: medial temporal atrophy weight (region weight x GM probability, smooth).
        lateral_weight: lateral temporal atrophy weight.
        csf_level: T1 intensity of ventricular CSF.
        ventricles: ``(centre_mm, sd_mm)`` pairs of the left and right lateral ventricles.
        ventricle_push: ``(3, X, Y, Z)`` unit-peak field into the lateral ventricles (see ``_outward_field``).
        ventricle_push_affine: voxel-to-mm affine of ``ventricle_push``.
        hippocampi: ``(centre_mm, sd_mm)`` of the left and right hippocampus.
        brain_centre: centre (mm) of the brain mask.
        brain_box_mm: ``(lo, hi)`` mm corners of the box holding all nonzero template intensity.
        atrophy_box_mm: ``(lo, hi)`` mm corners of the box holding the atrophy weights.
    """

    affine: np.ndarray
    t1: np.ndarray
    brain: np.ndarray
    medial_weight: np.ndarray
    lateral_weight: np.ndarray
    csf_level: float
    ventricles: tuple[tuple[np.ndarray, np.ndarray], ...]
    ventricle_push: np.ndarray
    ventricle_push_affine: np.ndarray
    hippocampi: tuple[tuple[np.ndarray, np.ndarray], ...]
    brain_centre: np.ndarray
    brain_box_mm: tuple[np.ndarray, np.ndarray]
    atrophy_box_mm: tuple[np.ndarray, np.ndarray]


def _region_weights(labels: np.ndarray, weights: dict[str, float]) -> np.ndarray:
    """Float map with each region stem's weight on its AAL voxels (both hemispheres)."""
    atlas = aal_atlas()
    lut = np.zeros(max(atlas.labels) + 1, dtype=np.float32)
    for stem, weight in weights.items():
        for hemi in ("L", "R"):
            lut[atlas.labels[atlas.index_of(f"{stem}_{hemi}")]] = weight
    return lut[labels]


def _blob(mask: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Centre and per-axis SD (mm) of a voxel set on an axis-aligned grid."""
    mm = np.argwhere(mask) * np.diag(affine)[:3] + affine[:3, 3]
    return mm.mean(axis=0), mm.std(axis=0)


def _box_mm(mask: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """mm corners (lo, hi) of the bounding box of a mask on an axis-aligned grid."""
    idx = np.argwhere(mask)
    corners = np.stack([idx.min(axis=0), idx.max(axis=0)]) * np.diag(affine)[:3] + affine[:3, 3]
    return corners.min(axis=0), corners.max(axis=0)


def _lateral_ventricles(t1, brain, shape, affine):
    """Locate the lateral ventricles: dark CSF blobs deep in the brain, left and right of the midline.

    Returns:
        ``(ventricles, csf_level, mask)``: ``(centre_mm, sd_mm)`` per ventricle (left first), the CSF intensity
        and the voxel mask of both ventricles.
    """
    x, y, z = _world_coords(shape, affine)
    central = (np.abs(x) < 35) & (y > -60) & (y < 40) & (z > -5) & (z < 40)
    deep = ndimage.binary_erosion(brain > 0.5, iterations=8)
    csf = deep & central & (t1 < 0.5)  # WM = 1, GM ~ 0.8, CSF ~ 0.4; stricter keeps blobs apart
    csf_level = float(np.median(t1[csf])) if csf.any() else 0.35
    components, n = ndimage.label(csf)
    sizes = ndimage.sum_labels(csf, components, np.arange(1, n + 1))
    found, mask = [], np.zeros(shape, dtype=bool)
    for k in np.argsort(sizes)[::-1]:
        if sizes[k] * abs(np.linalg.det(affine[:3, :3])) < 1000:  # smaller than 1 ml: not a ventricle
            break
        centre, sd = _blob(components == k + 1, affine)
        if abs(centre[0]) > 5:  # skip the midline fissure / third ventricle
            found.append((centre, sd))
            mask |= components == k + 1
        if len(found) == 2:
            break
    if len(found) < 2:
        raise RuntimeError("could not locate the lateral ventricles in the MNI152 template")
    return tuple(sorted(found, key=lambda c: c[0][0])), csf_level, mask


def _outward_field(mask: np.ndarray, affine: np.ndarray, sigma_mm: float = 3.0) -> tuple[np.ndarray, np.ndarray]:
    """Unit-peak field pointing into a structure, strongest at its wall: the gradient of the smoothed mask.

    Sampling the template at ``q + d * field(q)`` moves the wall outward by about ``d`` mm (enlargement); the field
    is kept on a box around the structure.

    Returns:
        ``(field, box_affine)``: field ``(3, X, Y, Z)`` in mm per mm of displacement, and its voxel-to-mm affine.
    """
    margin = int(np.ceil(4 * sigma_mm))
    idx = np.argwhere(mask)
    start = np.maximum(idx.min(axis=0) - margin, 0)
    stop = np.minimum(idx.max(axis=0) + margin + 1, mask.shape)
    box = mask[tuple(slice(a, b) for a, b in zip(start, stop))].astype(np.float32)
    voxel = np.abs(np.diag(affine)[:3])
    smooth = ndimage.gaussian_filter(box, sigma_mm / voxel)
    field = np.stack(np.gradient(smooth, *voxel)).astype(np.float32)
    field /= float(np.sqrt((field**2).sum(axis=0)).max())
    box_affine = affine.copy()
    box_affine[:3, 3] = affine[:3, :3] @ start + affine[:3, 3]
    return field, box_affine


@functools.lru_cache(maxsize=1)
def _template_raw() -> dict:
    """Unsmoothed MNI152 arrays (1 mm), atrophy weights and landmarks."""
    from nilearn import datasets

    t1_img = datasets.load_mni152_template(resolution=1)
    affine = t1_img.affine.copy()
    t1 = t1_img.get_fdata(dtype=np.float32)
    gm = datasets.load_mni152_gm_template(resolution=1).get_fdata(dtype=np.float32)
    wm = datasets.load_mni152_wm_template(resolution=1).get_fdata(dtype=np.float32)
    brain = (datasets.load_mni152_brain_mask(resolution=1).get_fdata() > 0).astype(np.float32)
    t1 = t1 / float(np.median(t1[wm > 0.5]))
    atlas = aal_atlas()
    labels = resample_nearest(np.asarray(atlas.image.dataobj).astype(np.int16), atlas.image.affine, t1.shape, affine)
    ventricles, csf_level, ventricle_mask = _lateral_ventricles(t1, brain, t1.shape, affine)
    push, push_affine = _outward_field(ventricle_mask, affine)
    return {
        "affine": affine,
        "t1": t1,
        "brain": brain,
        "csf_level": csf_level,
        "ventricles": ventricles,
        "ventricle_push": push,
        "ventricle_push_affine": push_affine,
        "hippocampi": tuple(_blob(labels == atlas.labels[atlas.index_of(f"Hippocampus_{h}")], affine) for h in "LR"),
        "medial": ndimage.gaussian_filter(_region_weights(labels, MEDIAL_TEMPORAL_WEIGHTS), 1.5) * gm,
        "lateral": ndimage.gaussian_filter(_region_weights(labels, LATERAL_TEMPORAL_WEIGHTS), 1.5) * gm,
    }


@functools.lru_cache(maxsize=2)
def template_space(smooth_mm: float = 0.0) -> TemplateSpace:
    """Template arrays cropped around the brain, optionally Gaussian-smoothed (anti-aliasing before sampling
    onto coarse grids).

    Args:
        smooth_mm: Gaussian sigma in mm applied to the intensity arrays (0 = none).
    """
    raw = _template_raw()
    affine = raw["affine"]
    sigma_vox = smooth_mm / np.abs(np.diag(affine)[:3])
    margin = int(np.ceil(4.0 * sigma_vox.max())) + 2
    idx = np.argwhere((raw["t1"] > 0) | (raw["brain"] > 0))
    start = np.maximum(idx.min(axis=0) - margin, 0)
    stop = np.minimum(idx.max(axis=0) + margin + 1, raw["t1"].shape)
    crop = tuple(slice(a, b) for a, b in zip(start, stop))
    shifted = affine.copy()
    shifted[:3, 3] = affine[:3, :3] @ start + affine[:3, 3]
    arrays = [np.ascontiguousarray(raw[key][crop]) for key in ("t1", "brain", "medial", "lateral")]
    if smooth_mm > 0:
        arrays = [ndimage.gaussian_filter(a, sigma_vox) for a in arrays]
    t1, brain, medial, lateral = arrays
    return TemplateSpace(
        affine=shifted,
        t1=t1,
        brain=brain,
        medial_weight=medial,
        lateral_weight=lateral,
        csf_level=raw["csf_level"],
        ventricles=raw["ventricles"],
        hippocampi=raw["hippocampi"],
        ventricle_push=raw["ventricle_push"],
        ventricle_push_affine=raw["ventricle_push_affine"],
        brain_centre=_blob(brain > 0.5, shifted)[0],
        brain_box_mm=_box_mm(t1 > 1e-4, shifted),
        atrophy_box_mm=_box_mm((medial > 1e-4) | (lateral > 1e-4), shifted),
    )


def antialias_sigma_mm(voxel_mm: float) -> float:
    """Gaussian sigma (mm) matching a voxel of this size (FWHM = voxel), 0 at template resolution."""
    return round(0.425 * voxel_mm, 3) if voxel_mm > 1.25 else 0.0


def sample_linear(array: np.ndarray, coords: np.ndarray) -> np.ndarray:
    """Linear interpolation of ``array`` at voxel coordinates ``coords`` (3, ...), zero outside, float32."""
    return ndimage.map_coordinates(
        array, coords, order=1, mode="constant", cval=0.0, output=np.float32, prefilter=False
    )


def int16_nifti(
    data: np.ndarray, affine: np.ndarray, zooms, description: str, time_unit: str = "unknown"
) -> nib.Nifti1Image:
    """int16 NIfTI with sform and qform set (code 1), zooms and xyzt units.

    Args:
        data: int16 array (3D or 4D).
        affine: voxel-to-mm affine.
        zooms: voxel sizes (and TR for 4D).
        description: header ``descrip`` text.
        time_unit: nibabel time unit name (``"sec"`` for BOLD).
    """
    img = nib.Nifti1Image(data, affine)
    header = img.header
    header.set_data_dtype(np.int16)
    header.set_zooms(tuple(float(z) for z in zooms))
    header.set_xyzt_units("mm", time_unit)
    img.set_sform(affine, code=1)
    img.set_qform(affine, code=1)
    header["descrip"] = description.encode()[:80]
    return img
