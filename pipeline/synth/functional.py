"""Resting-state BOLD synthesis: AAL ROI time courses from a network model, rendered into MNI voxels.

The 116 AAL regions are assigned to seven resting-state networks by name. Each network has a band-limited
latent signal (0.01-0.1 Hz at the run's TR, with mild between-network correlations); an ROI's signal is its
loading times its network signal plus ROI-specific autocorrelated noise and slow drift. Disease weakens the
default-mode loadings, the hippocampal/parahippocampal ones most. Voxels get a tissue-dependent baseline
times ``1 + psc * ROI signal`` plus thermal noise.

The run is not in MNI space: it lies on a scanner field of view (:func:`scanner_grid`, not the template's grid)
with the head in its own pose (:class:`BoldPose`): the subject's T1 pose (head size, rotation, translation) plus a
small rigid motion between the two acquisitions. Anatomy, brain mask and AAL labels are sampled through that pose,
so finding the run's transform to the template is real work (``pipeline.transforms.fmri_registration``).
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import asdict, dataclass

import nibabel as nib
import numpy as np
from scipy import signal
from scipy.spatial.transform import Rotation

from pipeline.synth.anatomy import (
    _template_raw,
    aal_atlas,
    antialias_sigma_mm,
    int16_nifti,
    resample_nearest,
    sample_linear,
    template_space,
)
from pipeline.synth.structural import StructuralParams, bias_field

NETWORKS = ("default", "visual", "somatomotor", "salience", "frontoparietal", "subcortical", "cerebellar")

#: Region-name prefixes per network, matched in order (more specific prefixes first).
_DMN_STEMS = (
    "Precuneus",
    "Cingulum_Post",
    "Cingulum_Mid",
    "Frontal_Sup_Medial",
    "Frontal_Med_Orb",
    "Angular",
    "Hippocampus",
    "ParaHippocampal",
    "Temporal_Pole_Sup",
    "Temporal_Pole_Mid",
    "Temporal_Mid",
    "Rectus",
)
_NETWORK_RULES: tuple[tuple[str, str], ...] = (
    *((p, "default") for p in _DMN_STEMS),
    *((p, "visual") for p in ("Calcarine", "Cuneus", "Lingual", "Occipital", "Fusiform")),
    *(
        (p, "somatomotor")
        for p in (
            "Precentral",
            "Postcentral",
            "Supp_Motor_Area",
            "Paracentral_Lobule",
            "Rolandic_Oper",
            "Heschl",
            "Temporal_Sup",
        )
    ),
    *((p, "salience") for p in ("Insula", "Cingulum_Ant", "SupraMarginal", "Olfactory", "Frontal_Inf_Oper")),
    *(
        (p, "frontoparietal")
        for p in ("Frontal_Sup", "Frontal_Mid", "Frontal_Inf", "Parietal_Inf", "Parietal_Sup", "Temporal_Inf")
    ),
    *((p, "subcortical") for p in ("Caudate", "Putamen", "Pallidum", "Thalamus", "Amygdala")),
    *((p, "cerebellar") for p in ("Cerebelum", "Vermis")),
)

#: AAL regions of the default-mode network (whose coupling weakens with disease).
DMN_REGIONS: tuple[str, ...] = tuple(f"{stem}_{hemi}" for stem in _DMN_STEMS for hemi in ("L", "R"))
_MEDIAL_TEMPORAL_DMN = ("Hippocampus", "ParaHippocampal")

#: Correlations between network latent signals (others 0); kept small so the matrix is positive definite.
_NETWORK_CORRELATIONS = {
    ("default", "salience"): -0.2,
    ("default", "frontoparietal"): 0.1,
    ("salience", "frontoparietal"): 0.3,
    ("visual", "somatomotor"): 0.3,
    ("subcortical", "salience"): 0.2,
    ("cerebellar", "somatomotor"): 0.2,
}

#: Per-site BOLD temporal SNR ranges (baseline / thermal noise SD per voxel).
SITE_BOLD_TSNR = {"site01": (60.0, 90.0), "site02": (45.0, 70.0)}

_PSC = 0.012  # percent signal change per unit ROI signal
_BACKGROUND_SD = 0.6  # noise SD outside the brain (stored units)
#: scanner field of view of every BOLD run (mm, RAS axes) and its centre: not the template's bounding box
SCANNER_FOV_MM = (192.0, 224.0, 176.0)
SCANNER_CENTRE_MM = (0.0, -17.0, 15.0)
#: motion between the T1 and the BOLD run: uniform ranges of the extra rotation (degrees) and translation (mm)
_RUN_ROTATION_DEG = 2.0
_RUN_TRANSLATION_MM = 3.0


def network_of(name: str) -> str:
    """Resting-state network of an AAL region name (``"none"`` if no rule matches).

    Args:
        name: AAL region name, e.g. ``"Precuneus_L"``.
    """
    for prefix, network in _NETWORK_RULES:
        if name.startswith(prefix):
            return network
    return "none"


@dataclass(frozen=True)
class FunctionalParams:
    """Sampled scalar parameters of one synthetic BOLD run.

    Attributes:
        dmn_scale: multiplier of the default-mode loadings (about 1 when healthy).
        medial_temporal_scale: extra multiplier of hippocampal/parahippocampal DMN loadings.
        tsnr: voxel temporal SNR (baseline / thermal noise SD).
        gain: global intensity scale.
        global_weight: weight of the global (physiological) signal shared by all ROIs.
    """

    dmn_scale: float
    medial_temporal_scale: float
    tsnr: float
    gain: float
    global_weight: float

    def as_record(self) -> dict:
        """Flat dict of the parameters (for the ground-truth table)."""
        return asdict(self)


def sample_functional(rng: np.random.Generator, severity: float, effect: float, site: str) -> FunctionalParams:
    """Draw the scalar BOLD parameters of one subject.

    Args:
        rng: the subject's BOLD random generator.
        severity: latent functional disease severity (about 0 for CN, 0.6-0.8 for MCI/AD).
        effect: multiplier of the disease change (0 = no functional disease signal).
        site: acquisition site (a key of ``SITE_BOLD_TSNR``).
    """
    dose = max(severity, 0.0) * effect
    healthy = rng.normal(1.0, 0.1)  # between-subject variability of DMN coupling, independent of disease
    return FunctionalParams(
        dmn_scale=float(np.clip(healthy * (1.0 - 0.5 * dose), 0.0, 1.2)),
        medial_temporal_scale=float(np.clip(1.0 - 0.4 * dose, 0.0, 1.0)),
        tsnr=float(rng.uniform(*SITE_BOLD_TSNR[site])),
        gain=float(np.exp(rng.uniform(np.log(0.7), np.log(1.4)))),
        global_weight=float(rng.uniform(0.1, 0.35)),
    )


def _band_limited(rng: np.random.Generator, n: int, n_time: int, tr: float, band=(0.01, 0.1)) -> np.ndarray:
    """``n`` unit-variance series with power in ``band`` (Hz): white noise through a Butterworth band-pass."""
    nyquist = 0.5 / tr
    high = min(band[1], 0.9 * nyquist)
    sos = signal.butter(2, [band[0], high], btype="bandpass", fs=1.0 / tr, output="sos")
    burn = int(np.ceil(100.0 / tr))  # let the filter forget its initial state
    series = signal.sosfilt(sos, rng.standard_normal((n, n_time + burn)), axis=-1)[:, burn:]
    series -= series.mean(axis=1, keepdims=True)
    return series / series.std(axis=1, keepdims=True)


def _ar1(rng: np.random.Generator, n: int, n_time: int, phi: float) -> np.ndarray:
    """``n`` unit-variance AR(1) series with coefficient ``phi``."""
    burn = 50
    series = signal.lfilter([1.0], [1.0, -phi], rng.standard_normal((n, n_time + burn)), axis=-1)[:, burn:]
    series -= series.mean(axis=1, keepdims=True)
    return series / series.std(axis=1, keepdims=True)


@functools.lru_cache(maxsize=1)
def _network_mixing() -> np.ndarray:
    corr = np.eye(len(NETWORKS))
    for (a, b), r in _NETWORK_CORRELATIONS.items():
        i, j = NETWORKS.index(a), NETWORKS.index(b)
        corr[i, j] = corr[j, i] = r
    return np.linalg.cholesky(corr)


def roi_signals(rng: np.random.Generator, params: FunctionalParams, names, n_time: int, tr: float):
    """ROI time courses of one run from the network model.

    Args:
        rng: the subject's BOLD random generator.
        params: the subject's functional parameters.
        names: ROI names (AAL order).
        n_time: number of volumes.
        tr: repetition time (s).

    Returns:
        ``(signals, loadings, drift0)``: ``[R, T]`` ROI signals (unit-ish variance plus drift), the ``[R]``
        network loadings used and a ``[T]`` drift for brain voxels without an ROI.
    """
    networks = _network_mixing() @ _band_limited(rng, len(NETWORKS), n_time, tr)
    global_signal = _band_limited(rng, 1, n_time, tr, band=(0.01, 0.15))[0]
    member = np.array([network_of(n) for n in names])
    loadings = rng.uniform(0.55, 0.8, size=len(names))
    in_dmn = np.isin(names, DMN_REGIONS)
    loadings[in_dmn] *= params.dmn_scale
    loadings[in_dmn & np.array([n.startswith(_MEDIAL_TEMPORAL_DMN) for n in names])] *= params.medial_temporal_scale
    loadings = np.minimum(loadings, 0.95)
    loadings[member == "none"] = 0.0
    index = np.array([NETWORKS.index(m) if m in NETWORKS else 0 for m in member])
    own = _band_limited(rng, len(names), n_time, tr, band=(0.01, 0.2)) * 0.5 + _ar1(rng, len(names), n_time, 0.5)
    own /= own.std(axis=1, keepdims=True)
    signals = loadings[:, None] * networks[index] + np.sqrt(1.0 - loadings[:, None] ** 2) * own
    signals += params.global_weight * global_signal
    basis = _drift_basis(n_time)
    signals += rng.normal(0.0, 0.4, size=(len(names), basis.shape[0])) @ basis
    drift0 = rng.normal(0.0, 0.4, size=basis.shape[0]) @ basis + params.global_weight * global_signal
    return signals.astype(np.float32), loadings, drift0.astype(np.float32)


def _drift_basis(n_time: int) -> np.ndarray:
    """Slow drift regressors (linear and a half-cosine over the run), below 0.01 Hz for runs over 100 s."""
    t = np.linspace(-1.0, 1.0, n_time)
    return np.stack([t, np.cos(np.pi * (t + 1.0) / 2.0)])


@dataclass(frozen=True)
class BoldPose:
    """Where the head lies in a BOLD run's scanner space (recorded so the true transform is known).

    The map from template mm to the run's mm is :meth:`template_to_subject`: head size and rotation about the
    template's brain centre, then the translation, as the T1's pose (``StructuralParams``).

    Attributes:
        head_scale: per-axis head size (the subject's, shared with the T1).
        rotation_deg: rotation (x, y, z Euler angles, degrees): the T1's plus the motion between the runs.
        translation_mm: translation (mm): the T1's plus the motion between the runs.
    """

    head_scale: tuple[float, float, float] = (1.0, 1.0, 1.0)
    rotation_deg: tuple[float, float, float] = (0.0, 0.0, 0.0)
    translation_mm: tuple[float, float, float] = (0.0, 0.0, 0.0)

    def template_to_subject(self) -> np.ndarray:
        """4x4 RAS map from template mm to the run's scanner mm."""
        return pose_matrix(self.head_scale, self.rotation_deg, self.translation_mm)

    def as_record(self) -> dict:
        """Flat dict for the ground-truth table (the head scale is the T1's ``head_scale``)."""
        return {"bold_rotation_deg": list(self.rotation_deg), "bold_translation_mm": list(self.translation_mm)}


def _round(values) -> tuple[float, ...]:
    return tuple(round(float(v), 6) for v in values)


def sample_bold_pose(rng: np.random.Generator, structural: StructuralParams) -> BoldPose:
    """The pose of a subject's BOLD run: its T1 pose plus a small rigid motion between the two acquisitions.

    Args:
        rng: a generator of its own (drawing from it leaves the run's signals unchanged).
        structural: the subject's T1 parameters (head size, rotation, translation).
    """
    rotation = np.asarray(structural.rotation_deg) + rng.uniform(-_RUN_ROTATION_DEG, _RUN_ROTATION_DEG, size=3)
    translation = np.asarray(structural.translation_mm) + rng.uniform(-_RUN_TRANSLATION_MM, _RUN_TRANSLATION_MM, size=3)
    return BoldPose(structural.head_scale, _round(rotation), _round(translation))


@functools.lru_cache(maxsize=1)
def pose_centre_mm() -> np.ndarray:
    """The template brain centre (mm) the poses rotate and scale about (the unsmoothed MNI152 brain mask's)."""
    raw = _template_raw()
    index = np.argwhere(raw["brain"] > 0.5)
    return (index @ raw["affine"][:3, :3].T + raw["affine"][:3, 3]).mean(axis=0)


def pose_matrix(head_scale, rotation_deg, translation_mm, centre=None) -> np.ndarray:
    """Template mm -> subject mm of a synthetic pose: ``R S (q - c) + c + t`` (RAS, 4x4).

    Args:
        head_scale: per-axis scale factors.
        rotation_deg: x, y, z Euler angles in degrees (``scipy`` ``"xyz"``).
        translation_mm: translation in mm.
        centre: centre of rotation and scaling (default :func:`pose_centre_mm`).
    """
    centre = pose_centre_mm() if centre is None else np.asarray(centre, dtype=np.float64)
    linear = Rotation.from_euler("xyz", rotation_deg, degrees=True).as_matrix() @ np.diag(head_scale)
    matrix = np.eye(4)
    matrix[:3, :3] = linear
    matrix[:3, 3] = centre + np.asarray(translation_mm, dtype=np.float64) - linear @ centre
    return matrix


def planted_bold_to_subject(truth: Mapping) -> np.ndarray:
    """The BOLD pose planted by ``neurofusion synth`` (a ``synth_truth.tsv`` row) as template mm -> run mm."""
    return pose_matrix(
        [truth[f"head_scale_{i}"] for i in range(3)],
        [truth[f"bold_rotation_deg_{i}"] for i in range(3)],
        [truth[f"bold_translation_mm_{i}"] for i in range(3)],
    )


def scanner_grid(voxel_mm: float) -> tuple[tuple[int, int, int], np.ndarray]:
    """Shape and RAS affine of the BOLD field of view (:data:`SCANNER_FOV_MM` about :data:`SCANNER_CENTRE_MM`).

    Args:
        voxel_mm: isotropic voxel size.
    """
    shape = tuple(int(n) for n in np.round(np.asarray(SCANNER_FOV_MM) / voxel_mm).astype(int))
    affine = np.diag([voxel_mm, voxel_mm, voxel_mm, 1.0])
    affine[:3, 3] = np.asarray(SCANNER_CENTRE_MM) - voxel_mm * (np.asarray(shape) - 1) / 2
    return shape, affine


@functools.lru_cache(maxsize=1)
def _aal_lookup() -> tuple[np.ndarray, np.ndarray]:
    """AAL labels (int16) and the table from label value to ROI row + 1 (0 = no region)."""
    atlas = aal_atlas()
    lut = np.zeros(max(atlas.labels) + 1, dtype=np.int64)
    lut[list(atlas.labels)] = np.arange(1, len(atlas.labels) + 1)
    return np.asarray(atlas.image.dataobj).astype(np.int16), lut


@dataclass(frozen=True)
class _BoldGrid:
    shape: tuple[int, int, int]
    affine: np.ndarray
    brain_idx: np.ndarray  # flat Fortran-order indices of brain voxels
    background_idx: np.ndarray
    roi_row: np.ndarray  # per brain voxel: 0 = no ROI, r + 1 = ROI r
    baseline: np.ndarray  # per brain voxel, stored units before gain
    names: tuple[str, ...]


def bold_grid(voxel_mm: float, pose: BoldPose | None = None) -> _BoldGrid:
    """Brain mask, AAL labels and T2*-like baseline on the scanner grid, the head in ``pose``.

    Args:
        voxel_mm: isotropic BOLD voxel size.
        pose: the head's pose in the run (default: template-aligned).
    """
    ts = template_space(antialias_sigma_mm(voxel_mm))
    shape, affine = scanner_grid(voxel_mm)
    pose = pose or BoldPose()
    to_template = np.linalg.inv(pose.template_to_subject()) @ affine  # run voxel -> template mm
    grid_to_template = np.linalg.inv(ts.affine) @ to_template
    coords = np.stack(np.meshgrid(*(np.arange(n) for n in shape), indexing="ij")).reshape(3, -1)
    coords = (grid_to_template[:3, :3] @ coords + grid_to_template[:3, 3:]).reshape(3, *shape).astype(np.float32)
    brain = sample_linear(ts.brain, coords) > 0.5
    t1 = sample_linear(ts.t1, coords)
    atlas = aal_atlas()
    label_array, lut = _aal_lookup()
    labels = resample_nearest(label_array, atlas.image.affine, shape, to_template)
    flat_brain = brain.ravel(order="F")
    # T2*-like contrast from the T1: CSF brightest, then grey, then white matter
    baseline = 1000.0 * (0.6 + 0.5 * np.clip(1.0 - t1, 0.0, 0.7))
    return _BoldGrid(
        shape=shape,
        affine=affine,
        brain_idx=np.flatnonzero(flat_brain),
        background_idx=np.flatnonzero(~flat_brain),
        roi_row=lut[labels.ravel(order="F")[flat_brain]],
        baseline=baseline.ravel(order="F")[flat_brain].astype(np.float32),
        names=atlas.names,
    )


def synthesize_bold(
    params: FunctionalParams,
    voxel_mm: float,
    n_volumes: int,
    tr: float,
    rng: np.random.Generator,
    pose: BoldPose | None = None,
) -> nib.Nifti1Image:
    """Render one resting-state run on the scanner grid (:func:`scanner_grid`), the head in ``pose``.

    Args:
        params: the subject's functional parameters.
        voxel_mm: isotropic voxel size.
        n_volumes: number of volumes.
        tr: repetition time (s), stored in ``pixdim[4]``.
        rng: the subject's BOLD random generator (draws the ROI signals and the noise).
        pose: the head's pose (default: template-aligned, i.e. already in MNI space).

    Returns:
        int16 4D NIfTI, shape ``(X, Y, Z, T)``, units ``('mm', 'sec')``.
    """
    grid = bold_grid(voxel_mm, pose)
    signals, _, drift0 = roi_signals(rng, params, grid.names, n_volumes, tr)
    modulation = np.concatenate([drift0[None], signals]) * np.float32(_PSC) + np.float32(1.0)  # [R + 1, T]
    field = bias_field(rng.normal(0.0, 1.0, size=9), 0.1, grid.shape, grid.affine).ravel(order="F")
    base = grid.baseline * field[grid.brain_idx] * np.float32(params.gain)
    brain = modulation.T[:, grid.roi_row] * base  # [T, brain voxels]
    brain += rng.standard_normal(brain.shape, dtype=np.float32) * (base / np.float32(params.tsnr))
    volume = np.zeros((n_volumes, int(np.prod(grid.shape))), dtype=np.int16)  # Fortran layout of (X,Y,Z,T)
    volume[:, grid.brain_idx] = np.clip(np.rint(brain), 0, np.iinfo(np.int16).max)
    noise = np.abs(rng.standard_normal((n_volumes, grid.background_idx.size), dtype=np.float32))
    volume[:, grid.background_idx] = np.rint(noise * np.float32(_BACKGROUND_SD))
    data = volume.reshape(n_volumes, *grid.shape[::-1]).T  # (X, Y, Z, T), Fortran-contiguous view
    return int16_nifti(data, grid.affine, (voxel_mm,) * 3 + (tr,), "neurofusion synthetic rest BOLD", "sec")
