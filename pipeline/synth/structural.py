"""Structural T1 synthesis: MNI152 anatomy, graded temporal atrophy, ventricle enlargement and nuisance.

Per subject, parameters are sampled once (:func:`sample_structural`) and then applied deterministically
(:func:`synthesize_t1`). All geometric maps (rigid misalignment, head size, ventricle expansion, hippocampal
contraction) are composed into one pull-back coordinate map, and the template is sampled once with linear
interpolation onto the output grid.
"""

from __future__ import annotations

import itertools
from dataclasses import asdict, dataclass

import nibabel as nib
import numpy as np
from scipy.spatial.transform import Rotation

from pipeline.synth.anatomy import (
    TemplateSpace,
    antialias_sigma_mm,
    int16_nifti,
    output_grid,
    sample_linear,
    template_space,
)

#: Per-site acquisition differences: T1 noise (fraction of white matter) and bias field strength ranges.
SITE_T1 = {
    "site01": {"noise": (0.015, 0.03), "bias": (0.05, 0.12)},
    "site02": {"noise": (0.025, 0.04), "bias": (0.08, 0.15)},
}

_HIPPOCAMPUS_REACH = 1.2  # Gaussian radius of the hippocampal contraction, in hippocampus SDs
_T1_SCALE = 1000.0  # stored intensity of white matter before the global gain


@dataclass(frozen=True)
class StructuralParams:
    """Sampled parameters of one synthetic T1 (recorded so a subject can be replayed).

    Attributes:
        head_scale: per-axis head-size scale factors.
        rotation_deg: rigid rotation (x, y, z Euler angles, degrees) about the brain centre.
        translation_mm: rigid translation (mm).
        ventricle_expansion: outward displacement of the lateral ventricle walls in mm (0 = template size).
        hippocampal_contraction: local contraction of the hippocampi (0 = none).
        medial_atrophy: fraction of medial temporal grey matter replaced by CSF.
        lateral_atrophy: fraction of lateral temporal grey matter replaced by CSF.
        bias_coeffs: coefficients of the quadratic log bias field.
        bias_strength: maximum absolute log bias over the field of view.
        noise_sd: Rician noise SD as a fraction of white matter intensity.
        gain: global intensity scale.
    """

    head_scale: tuple[float, float, float]
    rotation_deg: tuple[float, float, float]
    translation_mm: tuple[float, float, float]
    ventricle_expansion: float
    hippocampal_contraction: float
    medial_atrophy: float
    lateral_atrophy: float
    bias_coeffs: tuple[float, ...]
    bias_strength: float
    noise_sd: float
    gain: float

    def as_record(self) -> dict:
        """Flat dict of the parameters (for the ground-truth table)."""
        return {key: (list(value) if isinstance(value, tuple) else value) for key, value in asdict(self).items()}


def _tuple(values) -> tuple[float, ...]:
    return tuple(round(float(v), 6) for v in values)


def sample_structural(rng: np.random.Generator, severity: float, effect: float, site: str) -> StructuralParams:
    """Draw the structural parameters of one subject.

    Args:
        rng: the subject's random generator.
        severity: latent structural disease severity (about 0 for CN, 1 for typical AD).
        effect: multiplier of every disease-related change (0 = no structural disease signal).
        site: acquisition site (a key of ``SITE_T1``).
    """
    dose = max(severity, 0.0) * effect
    head = rng.normal(1.0, 0.03) * rng.normal(1.0, 0.01, size=3)
    acquisition = SITE_T1[site]
    return StructuralParams(
        head_scale=_tuple(np.clip(head, 0.92, 1.08)),
        rotation_deg=_tuple(rng.uniform(-5.0, 5.0, size=3)),
        translation_mm=_tuple(rng.uniform(-5.0, 5.0, size=3)),
        # normal anatomical variability (class independent) plus the disease change
        ventricle_expansion=float(np.clip(rng.normal(0.0, 0.5) + 3.0 * dose, -1.5, 5.0)),
        hippocampal_contraction=float(np.clip(rng.normal(0.0, 0.04) + 0.25 * dose, -0.2, 0.9)),
        medial_atrophy=float(np.clip(0.5 * dose, 0.0, 0.9)),
        lateral_atrophy=float(np.clip(0.45 * max(severity - 0.25, 0.0) / 0.75 * effect, 0.0, 0.8)),
        bias_coeffs=_tuple(rng.normal(0.0, 1.0, size=9)),
        bias_strength=float(rng.uniform(*acquisition["bias"])),
        noise_sd=float(rng.uniform(*acquisition["noise"])),
        gain=float(np.exp(rng.uniform(np.log(0.6), np.log(1.6)))),
    )


def _pullback_affine(params: StructuralParams, centre: np.ndarray, out_affine: np.ndarray) -> np.ndarray:
    """Affine from output voxel indices to undeformed template mm (undo rigid motion and head size)."""
    to_centre = np.eye(4)
    to_centre[:3, 3] = -centre - np.asarray(params.translation_mm)
    unrotate = np.eye(4)
    unrotate[:3, :3] = Rotation.from_euler("xyz", params.rotation_deg, degrees=True).as_matrix().T
    unscale = np.diag([*(1.0 / np.asarray(params.head_scale)), 1.0])
    back = np.eye(4)
    back[:3, 3] = centre
    return back @ unscale @ unrotate @ to_centre @ out_affine


def _box_slices(lin: np.ndarray, lo_mm, hi_mm, start, stop) -> tuple[slice, ...]:
    """Output-index slices (relative to ``start``, clipped to ``[start, stop)``) that cover every voxel whose
    undeformed template position ``lin @ ijk`` lies in the box ``[lo_mm, hi_mm]``."""
    inv = np.linalg.inv(lin.astype(np.float64))
    corners = np.array(list(itertools.product(*zip(lo_mm, hi_mm))))
    idx = corners @ inv[:3, :3].T + inv[:3, 3]
    first = np.clip(np.floor(idx.min(axis=0)).astype(int), start, stop)
    last = np.clip(np.ceil(idx.max(axis=0)).astype(int) + 1, start, stop)
    return tuple(slice(int(a - s0), int(b - s0)) for a, b, s0 in zip(first, last, start))


def _radial_displacement(q: list[np.ndarray], centre, radius, amount: float) -> list[np.ndarray]:
    """Pull-back displacement ``amount * (q - centre) * gaussian``; negative amount expands the structure."""
    d = [q[c] - np.float32(centre[c]) for c in range(3)]
    r2 = sum((d[c] / np.float32(radius[c])) ** 2 for c in range(3))
    g = np.exp(np.float32(-0.5) * r2) * np.float32(amount)
    return [d[c] * g for c in range(3)]


def _template_coords(params: StructuralParams, ts: TemplateSpace, lin: np.ndarray, block) -> np.ndarray:
    """Template voxel coordinates sampled by the output voxels of ``block``: the single composed map.

    Args:
        params: structural parameters (ventricle expansion, hippocampal contraction).
        ts: template arrays and landmarks.
        lin: affine from output indices to undeformed template mm (rigid and head size undone).
        block: output-index slices to compute (a box around the brain).
    """
    start = np.array([b.start for b in block])
    stop = np.array([b.stop for b in block])
    ijk = [
        np.arange(b.start, b.stop, dtype=np.float32).reshape([-1 if a == c else 1 for a in range(3)])
        for c, b in enumerate(block)
    ]
    lin32 = lin.astype(np.float32)
    q = [lin32[c, 0] * ijk[0] + lin32[c, 1] * ijk[1] + lin32[c, 2] * ijk[2] + lin32[c, 3] for c in range(3)]
    to_vox = np.linalg.inv(ts.affine).astype(np.float32)
    coords = np.empty((3, *(stop - start)), dtype=np.float32)
    for r in range(3):
        coords[r] = to_vox[r, 0] * q[0] + to_vox[r, 1] * q[1] + to_vox[r, 2] * q[2] + to_vox[r, 3]
    if params.ventricle_expansion != 0.0:
        field_affine = ts.ventricle_push_affine
        lo = field_affine[:3, 3]
        hi = lo + np.diag(field_affine)[:3] * (np.array(ts.ventricle_push.shape[1:]) - 1)
        sub = _box_slices(lin, lo, hi, start, stop)
        part = coords[(slice(None), *sub)]
        _push_walls(
            part, [q[c][sub] for c in range(3)], ts.ventricle_push, field_affine, params.ventricle_expansion, to_vox
        )
    moves = [(centre, sd * _HIPPOCAMPUS_REACH, params.hippocampal_contraction) for centre, sd in ts.hippocampi]
    for centre, radius, amount in moves:
        if amount == 0.0:
            continue
        # the Gaussian is below 0.3 % beyond 3.5 radii: compute it only in that box
        sub = _box_slices(lin, centre - 3.5 * radius, centre + 3.5 * radius, start, stop)
        u = _radial_displacement([q[c][sub] for c in range(3)], centre, radius, amount)
        for r in range(3):
            coords[r][sub] += to_vox[r, 0] * u[0] + to_vox[r, 1] * u[1] + to_vox[r, 2] * u[2]
    return coords


def _push_walls(coords: np.ndarray, q: list[np.ndarray], field, field_affine, distance_mm: float, to_vox) -> None:
    """Move a structure's walls outward by about ``distance_mm`` (inward if negative), in place on ``coords``.

    Args:
        coords: template voxel coordinates being built (3, ...).
        q: undeformed template mm coordinates of the same voxels.
        field: unit-peak field into the structure; field_affine its voxel-to-mm affine.
        distance_mm: wall displacement.
        to_vox: template mm-to-voxel affine.
    """
    to_field = np.linalg.inv(field_affine).astype(np.float32)
    where = np.stack([sum(to_field[r, c] * q[c] for c in range(3)) + to_field[r, 3] for r in range(3)])
    shift = [np.float32(distance_mm) * sample_linear(field[c], where) for c in range(3)]
    for r in range(3):
        coords[r] += to_vox[r, 0] * shift[0] + to_vox[r, 1] * shift[1] + to_vox[r, 2] * shift[2]


def bias_field(coeffs, strength: float, shape, affine: np.ndarray) -> np.ndarray:
    """Smooth multiplicative bias field: exp of a quadratic polynomial scaled to ``±strength`` (log units).

    Args:
        coeffs: 9 coefficients (x, y, z, x², y², z², xy, xz, yz) in normalised scanner coordinates.
        strength: maximum absolute log bias over the grid.
        shape: grid shape.
        affine: grid affine (axis aligned).
    """
    axes = []
    for c in range(3):
        mm = np.arange(shape[c], dtype=np.float32) * np.float32(affine[c, c]) + np.float32(affine[c, 3])
        axes.append((mm / np.float32(90.0)).reshape([-1 if a == c else 1 for a in range(3)]))
    x, y, z = axes
    terms = (x, y, z, x * x, y * y, z * z, x * y, x * z, y * z)
    log_field = sum(np.float32(k) * t for k, t in zip(coeffs, terms))
    log_field = np.broadcast_to(log_field, shape)
    peak = float(np.abs(log_field).max()) or 1.0
    return np.exp(log_field * np.float32(strength / peak))


def synthesize_t1(params: StructuralParams, voxel_mm: float, rng: np.random.Generator) -> nib.Nifti1Image:
    """Render one T1 image on the MNI bounding box grid.

    Args:
        params: the subject's structural parameters.
        voxel_mm: isotropic output voxel size.
        rng: generator for the noise realisation.

    Returns:
        int16 NIfTI with sform/qform (code 1) set and units mm.
    """
    ts = template_space(antialias_sigma_mm(voxel_mm))
    shape, affine = output_grid(voxel_mm)
    lin = _pullback_affine(params, ts.brain_centre, affine)
    zero = np.zeros(3, dtype=int)
    block = _box_slices(lin, ts.brain_box_mm[0] - 5.0, ts.brain_box_mm[1] + 5.0, zero, np.array(shape))
    coords = _template_coords(params, ts, lin, block)
    tissue = sample_linear(ts.t1, coords)
    if params.medial_atrophy > 0:
        start = np.array([b.start for b in block])
        stop = np.array([b.stop for b in block])
        sub = _box_slices(lin, ts.atrophy_box_mm[0] - 10.0, ts.atrophy_box_mm[1] + 10.0, start, stop)
        where = coords[(slice(None), *sub)]
        loss = np.float32(params.medial_atrophy) * sample_linear(ts.medial_weight, where)
        if params.lateral_atrophy > 0:
            loss += np.float32(params.lateral_atrophy) * sample_linear(ts.lateral_weight, where)
        tissue[sub] -= loss * (tissue[sub] - np.float32(ts.csf_level))  # GM partially replaced by CSF
    t1 = np.zeros(shape, dtype=np.float32)
    t1[block] = tissue
    t1 *= bias_field(params.bias_coeffs, params.bias_strength, shape, affine)
    sd = np.float32(params.noise_sd)
    real = t1 + sd * rng.standard_normal(shape, dtype=np.float32)
    imag = sd * rng.standard_normal(shape, dtype=np.float32)
    magnitude = np.sqrt(real * real + imag * imag)  # Rician
    magnitude *= np.float32(_T1_SCALE * params.gain)
    data = np.clip(np.rint(magnitude), 0, np.iinfo(np.int16).max).astype(np.int16)
    return int16_nifti(data, affine, (voxel_mm,) * 3, "neurofusion synthetic T1w")
