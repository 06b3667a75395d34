"""Spatial normalisation of BOLD runs: the mean EPI affinely registered to MNI152, the run's affine replaced.

A run not already in MNI space gets its own transform to the template: the mean over time of the loaded 4D run
(the mean EPI) is registered directly to nilearn's MNI152 2009 template with an ANTs affine registration (Mattes
mutual information, which does not care that EPI and T1 contrasts differ) at a coarse level (``level_mm``, 4 mm by
default) with a fixed seed, through the helpers of :mod:`pipeline.transforms.registration`. The 4D run is never
resampled: its affine is replaced by ``inv(template_to_subject) @ affine``, which maps its voxels into template
millimetres, so :class:`~pipeline.transforms.fmri.ROISignals` (the atlas resampled, nearest neighbour, onto the
run's own grid through the two affines) takes every region's voxels at the right place.

Measured on synthetic cohorts (``neurofusion synth``: each run in the T1's pose plus a small motion, on a scanner
field of view of its own; residual against the planted pose at the hippocampi and lateral ventricles, median and
worst), the direct route is as accurate as registering the mean EPI rigidly to the subject's T1 and composing with
the T1's registration: 4 mm BOLD 0.28 / 0.38 mm direct vs 0.33 / 0.58 mm via the T1 (8 runs), 3.3 mm 0.30 / 0.33 vs
0.24 / 0.43 (3 runs), 8 mm 0.96 / 1.75 vs 0.86 / 1.54 (12 runs); unregistered, 3-12 mm. It needs neither a T1 nor
its registration (about 0.5-1 s a run on one thread against 1.5-2.5 s for N4 and the T1's plus 0.2-0.9 s for the
rigid step), so it is the one built. The synthetic EPI's contrast is derived from the template itself, which
flatters the direct route; real EPIs (distortion, signal dropout) are harder for it.

Whether a registration failed is judged by how well the registered mean EPI lays the brain where the template has
it: the correlation, over the template grid, of the registered mean EPI with the template's brain mask
(:func:`brain_similarity`), which does not depend on the EPI's tissue contrast (grey, white matter and CSF differ
little, and in another order than in a T1). Registered synthetic runs score 0.96-0.98 (8 mm and 4 mm voxels); a run
upside down or with two axes swapped in its header, an ellipsoid phantom, pure noise or a real EPI of three slices
(nibabel's ``functional.nii``) scores 0.24-0.89. An affine
can stretch a slab of a few slices over the whole template (it then scores 0.84-0.88 too), so a head scale outside
:data:`HEAD_SCALE` of the template's is refused as well. Either failure raises a :class:`BOLDRegistrationError`
naming the file.

``auto`` (the bundle key ``fmri_registration``) skips runs already in MNI space, recognised by the BIDS entity
``space-MNI...`` of fMRIPrep's outputs (``..._space-MNI152NLin2009cAsym_desc-preproc_bold.nii.gz``); ``none``
registers nothing (the run's own affine is used as it is, as before registration existed).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Hashable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import LoadImage, MapTransform, Transform

from pipeline.transforms.registration import (
    SIMILARITY,
    TO_SUBJECT,
    Registration,
    RegistrationCache,
    RegistrationError,
    Template,
    cached,
    check_settings,
    for_each_file,
    in_advance,
    mni_template,
    register_affine,
    to_ants,
)

if TYPE_CHECKING:
    import ants

#: values of the bundle key ``fmri_registration``
FMRI_REGISTRATION_MODES = ("auto", "none")
#: a BIDS ``space-`` entity naming an MNI template (fMRIPrep's ``space-MNI152NLin2009cAsym``, ``space-MNI152NLin6Asym``)
_MNI_SPACE = re.compile(r"(?:^|_)space-MNI[A-Za-z0-9]*(?=_|\.|$)")
#: the least :func:`brain_similarity` accepted by default (measured: registered synthetic runs 0.96-0.98, failures
#: 0.24-0.89; see the module docstring)
DEFAULT_MIN_SIMILARITY = 0.9
#: the range of head scales (singular values of the registration's linear part) accepted: adult heads are within
#: about 15 % of the template's; a slab of a few slices registers with one scale of 0.1-0.5
HEAD_SCALE = (0.75, 1.33)
#: float32 values of the run averaged at a time (8 MiB) when computing the mean EPI
_CHUNK_VALUES = 2**21


class BOLDRegistrationError(RegistrationError):
    """A BOLD run whose mean EPI could not be registered to the template (the message names it and the similarity).

    Args:
        source: the run.
        similarity: :func:`brain_similarity` after registration.
        minimum: the least similarity accepted.
        scales: the registration's head scales when they, not the similarity, are implausible.
    """

    def __init__(self, source: str, similarity: float, minimum: float, scales: np.ndarray | None = None) -> None:
        self.source, self.similarity, self.minimum, self.scales = source, similarity, minimum, scales
        ValueError.__init__(
            self,
            f"{source}: {self.reason} (is this a whole-brain BOLD run? one already in MNI space needs no registration: "
            "fmri_registration / --registration none)",
        )

    @property
    def reason(self) -> str:
        failed = "registration of the mean EPI to the MNI152 template failed"
        if self.scales is not None:
            low, high = float(np.min(self.scales)), float(np.max(self.scales))
            return (
                f"{failed}: head scale {low:.2f}-{high:.2f} of the template's is outside "
                f"{HEAD_SCALE[0]:g}-{HEAD_SCALE[1]:g} (a partial field of view?)"
            )
        return f"{failed}: brain similarity {self.similarity:.2f} is below {self.minimum:.2f}"


def in_mni_space(path: str | Path) -> bool:
    """Whether a BOLD file's BIDS name says it is in an MNI template's space (``space-MNI...``, as fMRIPrep names
    its outputs)."""
    return bool(_MNI_SPACE.search(Path(str(path)).name))


def mean_epi(run: np.ndarray | torch.Tensor) -> np.ndarray:
    """The mean over time of a 4D run ``(X, Y, Z, T)``, float32, a few time points at a time (no float64 copy)."""
    array = run.detach().cpu().numpy() if isinstance(run, torch.Tensor) else np.asarray(run)
    if array.ndim != 4:
        raise ValueError(f"a BOLD run is 4D (X, Y, Z, T), got shape {array.shape}")
    steps = array.shape[3]
    chunk = max(1, _CHUNK_VALUES // max(int(np.prod(array.shape[:3])), 1))
    total = np.zeros(array.shape[:3], dtype=np.float64)
    for start in range(0, steps, chunk):
        block = array[..., start : start + chunk].astype(np.float32)
        total += np.nan_to_num(block, posinf=0.0, neginf=0.0).sum(axis=3, dtype=np.float64)
    return (total / max(steps, 1)).astype(np.float32)


def brain_similarity(template: Template, warped: ants.ANTsImage) -> float:
    """Correlation, over the template grid, of a registered image with the template's brain mask."""
    moving = warped.numpy().ravel()
    if moving.std() == 0:
        return 0.0
    return float(np.corrcoef(moving, template.brain.ravel().astype(np.float32))[0, 1])


def register_bold(mean: np.ndarray, affine: np.ndarray, level_mm: float = 4.0, seed: int = 1) -> Registration:
    """Affinely register a mean EPI to the MNI152 template at ``level_mm`` (ANTs, Mattes mutual information).

    Args:
        mean: the mean EPI (3D).
        affine: its RAS voxel-to-mm affine.
        level_mm: voxel size of the registration (a finer EPI is resampled to it first).
        seed: ANTs' random seed (metric sampling), at least 1: ANTs reads 0 as "seed from the clock".

    Returns:
        The registration (``matrix``: template mm -> run mm, ``similarity``: :func:`brain_similarity`; no bias).
    """
    import ants  # after pipeline.transforms.registration, which asks ITK for one thread before ANTs loads

    template = mni_template(float(level_mm))
    moving = to_ants(mean, affine)
    if min(moving.spacing) < level_mm:
        moving = ants.resample_image(moving, (level_mm,) * 3, use_voxels=False, interp_type=0)
    result = register_affine(moving, template.image, seed)
    return Registration(result["matrix"], None, np.eye(4), brain_similarity(template, result["warpedmovout"]))


class RegisterBOLD(Transform):
    """Give a loaded BOLD run its transform to MNI152: its affine becomes ``inv(template_to_subject) @ affine``.

    The voxels are not touched (the output shares the input's data); the metadata gain :data:`TO_SUBJECT`
    (template mm -> the run's mm, RAS) and :data:`SIMILARITY` (:func:`brain_similarity`). A run skipped (``none``,
    or ``auto`` and a ``space-MNI`` file name) is returned as it is.

    Args:
        mode: ``"auto"`` (register unless the file is named ``space-MNI...``) or ``"none"``.
        level_mm: voxel size at which the registration runs.
        min_similarity: a registration whose :func:`brain_similarity` is below this (or whose head scale is
            outside :data:`HEAD_SCALE`) is refused with :class:`BOLDRegistrationError` naming the run.
        seed: ANTs' random seed (>= 1).
        cache_dir: folder of a :class:`~pipeline.transforms.registration.RegistrationCache` shared by runs and
            processes (None: no cache); entries are keyed by the mean EPI, its affine and these settings.
    """

    def __init__(
        self,
        mode: str = "auto",
        level_mm: float = 4.0,
        min_similarity: float = DEFAULT_MIN_SIMILARITY,
        seed: int = 1,
        cache_dir: str | Path | None = None,
    ) -> None:
        if mode not in FMRI_REGISTRATION_MODES:
            raise ValueError(f"fmri_registration must be one of {list(FMRI_REGISTRATION_MODES)}, got {mode!r}")
        check_settings(level_mm, seed)
        self.mode = mode
        self.settings = {"level_mm": float(level_mm), "seed": int(seed)}
        self.min_similarity = float(min_similarity)
        self.cache = RegistrationCache(cache_dir) if cache_dir else None

    def skips(self, source: str | Path) -> bool:
        """Whether a run of this file is left as it is."""
        return self.mode == "none" or in_mni_space(source)

    def registration(self, mean: np.ndarray, affine: np.ndarray) -> Registration:
        """The mean EPI's registration, from the cache when it holds it."""
        settings = {"modality": "bold", **self.settings}
        return cached(self.cache, mean, affine, settings, lambda: register_bold(mean, affine, **self.settings))

    def check(self, found: Registration, source: str) -> None:
        """Refuse a failed registration (:class:`BOLDRegistrationError`): low similarity or implausible head scale."""
        if not found.similarity >= self.min_similarity:
            raise BOLDRegistrationError(source, found.similarity, self.min_similarity)
        scales = np.linalg.svd(np.asarray(found.matrix)[:3, :3], compute_uv=False)
        if scales.min() < HEAD_SCALE[0] or scales.max() > HEAD_SCALE[1]:
            raise BOLDRegistrationError(source, found.similarity, self.min_similarity, scales)

    def __call__(self, run: MetaTensor) -> MetaTensor:
        source = str(run.meta.get("filename_or_obj") or "the BOLD run")
        if self.skips(source) or run.ndim != 4:  # not 4D: ROISignals names the problem
            return run
        affine = np.asarray(run.affine, dtype=np.float64)
        found = self.registration(mean_epi(run), affine)
        self.check(found, source)
        to_template = np.linalg.inv(np.asarray(found.matrix, dtype=np.float64)) @ affine
        meta = {**run.meta, TO_SUBJECT: np.asarray(found.matrix), SIMILARITY: found.similarity}
        meta.pop("affine", None)
        return MetaTensor(run.as_tensor(), affine=torch.as_tensor(to_template, dtype=torch.float64), meta=meta)


class RegisterBOLDd(MapTransform):
    """Dictionary twin of :class:`RegisterBOLD`.

    Args:
        keys: data keys of loaded 4D runs (``MetaTensor`` s).
        allow_missing_keys: skip absent keys.
        kwargs: arguments of :class:`RegisterBOLD`.
    """

    def __init__(self, keys: KeysCollection, allow_missing_keys: bool = False, **kwargs) -> None:
        super().__init__(keys, allow_missing_keys)
        self.register = RegisterBOLD(**kwargs)

    def __call__(self, data: Mapping[Hashable, MetaTensor]) -> dict:
        out = dict(data)
        for key in self.key_iterator(out):
            out[key] = self.register(out[key])
        return out


def _register_bold_file(path: str, mode: str, cache_dir: str) -> None:
    register = RegisterBOLD(mode=mode, cache_dir=cache_dir)
    if register.skips(path):
        return
    run = LoadImage(image_only=True, dtype=np.float32)(path)  # as the fMRI chain loads it: the same cache key
    if run.ndim == 4:
        register.registration(mean_epi(run), np.asarray(run.affine, dtype=np.float64))


def register_bold_files(
    paths: Sequence[str], settings: Mapping, cache_dir: str | Path, workers: int = 1, progress=None
) -> None:
    """Fill the registration cache for BOLD ``paths`` as :class:`RegisterBOLD` will read them, ``workers``
    processes at once (``settings``: its ``mode``; runs it skips are left alone, failures for the chain to report).
    """
    work = functools.partial(in_advance, _register_bold_file, mode=settings["mode"], cache_dir=str(cache_dir))
    for_each_file(work, paths, workers, progress)


__all__ = [
    "DEFAULT_MIN_SIMILARITY",
    "FMRI_REGISTRATION_MODES",
    "HEAD_SCALE",
    "BOLDRegistrationError",
    "RegisterBOLD",
    "RegisterBOLDd",
    "brain_similarity",
    "in_mni_space",
    "mean_epi",
    "register_bold",
    "register_bold_files",
]
