"""Spatial normalisation of T1 scans: N4 bias correction and an ANTs affine registration to MNI152.

As ClinicaDL's ``t1-linear`` does before its CNNs, each T1 is bias-corrected (N4) and affinely registered to the
MNI152 2009 template that nilearn ships (its brain mask bounds the model grid); the model grid is then cut from
template space: ``spatial_size`` voxels of ``pixdim`` mm centred on the template's brain. The registration itself
runs at a coarse level (``level_mm``, 4 mm by default), where it is as accurate as at 1 mm and several times
faster (``neurofusion bench registration``); the scan is then interpolated once, from its own grid onto the model
grid, through the composed affine.

ANTs is deterministic only with one thread and a fixed seed: this module asks ITK for one thread (the environment
variable ``ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS``, unless already set, before ANTs loads) and passes a seed to
every registration. Parallelism comes from registering several subjects at once (:func:`register_files`).

The affine found maps template millimetres to the subject's (RAS): the output ``MetaTensor`` carries the model
grid's affine in template space and that matrix in its metadata (:data:`TO_SUBJECT`), so a map on the model grid
goes back onto the input scan with :func:`subject_affine`.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import multiprocessing
import os
import tempfile
import zipfile
from collections.abc import Hashable, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform, SpatialResample, Transform

os.environ.setdefault("ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS", "1")  # before ITK starts: deterministic registration
import ants  # noqa: E402

logger = logging.getLogger(__name__)

#: values of the bundle key ``mri_registration``
REGISTRATION_MODES = ("affine", "none")
#: metadata key of the 4x4 affine from template mm to subject mm (RAS)
TO_SUBJECT = "template_to_subject"
#: metadata key of the registration's similarity to the template (correlation within the brain mask)
SIMILARITY = "registration_similarity"
#: N4 works on a grid of about this spacing (mm): the bias field is smooth, a finer grid only costs time
_N4_MM = 12.0
#: N4's iterations at each of its fitting levels (each level doubles the B-spline mesh). ANTsPy's default, four levels
#: of 50, fits anatomy as well as bias on this coarse grid: on the MNI152 T1 with a planted smooth field it left
#: 1.7-5x the field's own spread, one level of 25 0.8-1.1x in under 60% of the time (``neurofusion bench registration``)
N4_ITERATIONS = (25,)
_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])  # RAS (nibabel, MONAI) <-> LPS (ITK, ANTs); its own inverse
_CACHE_VERSION = "4"  # 2: closest canonical voxel order; 3: T1 affine without its last level; 4: N4 one level of 25
#: iterations of ANTs' affine at each level of its pyramid (shrink 6, 4, 2, 1 of the registration level): ANTsPy's
#: ``Affine`` schedule
AFFINE_ITERATIONS = (2100, 1200, 1200, 10)
#: the T1's schedule: the same without its last, full-resolution level, which antsRegistrationSyNQuick (ClinicaDL's
#: t1-linear) skips too; 2.4x faster, 0.3 mm from the planted pose (0.2 with it; ``neurofusion bench registration``)
T1_AFFINE_ITERATIONS = (2100, 1200, 1200, 0)


class RegistrationError(ValueError):
    """A scan that could not be registered to the template (the message names it and the similarity).

    Args:
        source: the scan.
        similarity: its similarity to the template after registration.
        minimum: the least similarity accepted.
    """

    def __init__(self, source: str, similarity: float, minimum: float) -> None:
        self.source, self.similarity, self.minimum = source, similarity, minimum
        super().__init__(f"{source}: {self.reason} (is this a whole-brain T1?)")

    @property
    def reason(self) -> str:
        return (
            f"registration to the MNI152 template failed: similarity {self.similarity:.2f} is below {self.minimum:.2f}"
        )

    @classmethod
    def within(cls, err: BaseException) -> RegistrationError | None:
        """The registration failure behind ``err`` (MONAI wraps errors raised inside transform chains), or None."""
        while err is not None and not isinstance(err, cls):
            err = err.__cause__
        return err


@dataclass(frozen=True)
class Template:
    """The MNI152 template at one registration level.

    Attributes:
        image: template T1 (ANTs image).
        brain: template brain mask on the same grid (bool array, ANTs index order).
    """

    image: ants.ANTsImage
    brain: np.ndarray


@functools.lru_cache(maxsize=4)
def _template_nifti():
    from nilearn import datasets

    return datasets.load_mni152_template(resolution=1), datasets.load_mni152_brain_mask(resolution=1)


@functools.lru_cache(maxsize=4)
def mni_template(level_mm: float) -> Template:
    """nilearn's MNI152 2009 T1 template and brain mask resampled to ``level_mm``."""
    t1, mask = _template_nifti()
    image = to_ants(np.asarray(t1.dataobj, dtype=np.float32), t1.affine)
    brain = to_ants(np.asarray(mask.dataobj, dtype=np.float32), mask.affine)
    if level_mm != 1.0:
        image = ants.resample_image(image, (level_mm,) * 3, use_voxels=False, interp_type=0)
        brain = ants.resample_image(brain, (level_mm,) * 3, use_voxels=False, interp_type=1)
    return Template(image, brain.numpy() > 0.5)


@functools.lru_cache(maxsize=1)
def brain_box_mm() -> tuple[np.ndarray, np.ndarray]:
    """RAS mm corners of the template brain mask's bounding box."""
    _, mask = _template_nifti()
    index = np.argwhere(np.asarray(mask.dataobj) > 0)
    corners = np.stack([index.min(axis=0), index.max(axis=0)])
    return tuple(corners @ mask.affine[:3, :3].T + mask.affine[:3, 3])


def template_grid(spatial_size: Sequence[int], pixdim: Sequence[float]) -> np.ndarray:
    """Affine of the model grid in template space: RAS axes, ``pixdim`` mm, centred on the template's brain."""
    lo, hi = brain_box_mm()
    spacing = np.asarray(pixdim, dtype=np.float64)
    affine = np.diag([*spacing, 1.0])
    affine[:3, 3] = (lo + hi) / 2 - spacing * (np.asarray(spatial_size) - 1) / 2
    return affine


def closest_canonical(array: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The voxels and affine with the axes flipped and permuted to lie closest to RAS (as nibabel's
    ``as_closest_canonical``): the same scan stored in another voxel order (a DICOM series' LPS slices) is then
    the same array, and registers to the same matrix."""
    orientation = nib.orientations.io_orientation(affine)
    canonical = nib.orientations.apply_orientation(array, orientation)
    to_stored = nib.orientations.inv_ornt_aff(orientation, array.shape)
    return canonical, np.asarray(affine, dtype=np.float64) @ to_stored


def to_ants(array: np.ndarray, affine: np.ndarray) -> ants.ANTsImage:
    """A 3D array with a RAS voxel-to-mm affine (nibabel, MONAI) as an ANTs image (LPS physical space)."""
    affine = np.asarray(affine, dtype=np.float64)
    spacing = np.linalg.norm(affine[:3, :3], axis=0)
    lps = _LPS @ affine
    return ants.from_numpy(
        np.ascontiguousarray(array, dtype=np.float32),
        origin=tuple(lps[:3, 3]),
        spacing=tuple(spacing),
        direction=lps[:3, :3] / spacing,
    )


def ras_affine(image: ants.ANTsImage) -> np.ndarray:
    """Voxel-to-mm affine (RAS) of an ANTs image."""
    affine = np.eye(4)
    affine[:3, :3] = np.asarray(image.direction) * np.asarray(image.spacing)
    affine[:3, 3] = image.origin
    return _LPS @ affine


def transform_to_ras(transform: ants.ANTsTransform) -> np.ndarray:
    """An ANTs affine transform (a point map in LPS) as a 4x4 RAS matrix."""
    parameters = np.asarray(transform.parameters, dtype=np.float64)
    centre = np.asarray(transform.fixed_parameters, dtype=np.float64)[:3]
    linear, translation = parameters[:9].reshape(3, 3), parameters[9:12]
    matrix = np.eye(4)
    matrix[:3, :3] = linear
    matrix[:3, 3] = translation + centre - linear @ centre
    return _LPS @ matrix @ _LPS


def write_transform(matrix: np.ndarray, path: str | Path) -> None:
    """Write a 4x4 RAS point map (template mm -> subject mm) as an ANTs/ITK ``.mat`` transform file.

    Read back with ``ants.read_transform``; ``antsApplyTransforms -t path`` resamples the subject's scan into the
    template as this pipeline did.
    """
    lps = _LPS @ np.asarray(matrix, dtype=np.float64) @ _LPS
    transform = ants.create_ants_transform(
        transform_type="AffineTransform", dimension=3, matrix=lps[:3, :3], translation=lps[:3, 3]
    )
    ants.write_transform(transform, str(path))


def subject_affine(image: MetaTensor) -> np.ndarray:
    """Voxel-to-mm affine of ``image`` in the input scan's space (its own affine when it was not registered)."""
    affine = np.asarray(image.affine, dtype=np.float64)
    to_subject = image.meta.get(TO_SUBJECT)
    return affine if to_subject is None else np.asarray(to_subject, dtype=np.float64) @ affine


@dataclass(frozen=True)
class Registration:
    """An affine registration of one scan to the template.

    Attributes:
        matrix: 4x4 RAS map from template mm to subject mm.
        bias: N4 bias field at the registration level (None without bias correction).
        bias_affine: its RAS voxel-to-mm affine.
        similarity: correlation of the registered, bias-corrected scan with the template inside its brain mask.
    """

    matrix: np.ndarray
    bias: np.ndarray | None
    bias_affine: np.ndarray
    similarity: float


def _similarity(template: Template, warped: ants.ANTsImage) -> float:
    fixed, moving = template.image.numpy()[template.brain], warped.numpy()[template.brain]
    if moving.std() == 0:
        return 0.0
    return float(np.corrcoef(fixed, moving)[0, 1])


def check_settings(level_mm: float, seed: int) -> None:
    """Refuse a registration level that is not positive and an ANTs seed below 1 (ANTs reads 0 as "from the clock")."""
    if level_mm <= 0:
        raise ValueError(f"registration level_mm must be positive, got {level_mm}")
    if seed < 1:
        raise ValueError(f"ANTs registration seed must be >= 1 (0 seeds from the clock), got {seed}")


def register_affine(
    moving: ants.ANTsImage, fixed: ants.ANTsImage, seed: int, iterations: Sequence[int] = AFFINE_ITERATIONS
) -> dict:
    """``ants.registration`` (Affine, ``iterations`` at each pyramid level) with a fixed seed, its transform files
    removed afterwards; ``matrix`` added (template mm -> subject mm, RAS)."""
    check_settings(1.0, seed)
    previous = ants.config._random_seed  # ANTsPy's public setter also reseeds numpy's and Python's global RNGs
    ants.config._random_seed = seed
    try:
        with tempfile.TemporaryDirectory(prefix="neurofusion-ants-") as folder:
            result = ants.registration(
                fixed=fixed,
                moving=moving,
                type_of_transform="Affine",
                outprefix=f"{folder}/",
                aff_iterations=tuple(iterations),
            )
            result["matrix"] = transform_to_ras(ants.read_transform(result["fwdtransforms"][0]))
    finally:
        ants.config._random_seed = previous
    return result


def register_t1(
    array: np.ndarray,
    affine: np.ndarray,
    level_mm: float = 4.0,
    bias_correction: bool = True,
    seed: int = 1,
    affine_iterations: Sequence[int] = T1_AFFINE_ITERATIONS,
    n4_iterations: Sequence[int] = N4_ITERATIONS,
) -> Registration:
    """Bias-correct (N4) and affinely register one T1 to the MNI152 template, both at ``level_mm``.

    Args:
        array: the scan's voxels (3D).
        affine: its RAS voxel-to-mm affine.
        level_mm: voxel size of the registration (and of the bias field).
        bias_correction: run N4 (ANTs) before registering.
        seed: ANTs' random seed (metric sampling), at least 1: ANTs reads 0 as "seed from the clock".
        affine_iterations: the affine's iterations at each pyramid level (:data:`T1_AFFINE_ITERATIONS`).
        n4_iterations: N4's iterations at each fitting level (:data:`N4_ITERATIONS`).
    """
    template = mni_template(float(level_mm))
    moving = to_ants(*closest_canonical(array, affine))
    if not np.allclose(moving.spacing, level_mm):  # coarser scans too: ANTs' pyramid shrinks the grid up to 6x
        moving = ants.resample_image(moving, (level_mm,) * 3, use_voxels=False, interp_type=0)
    bias = None
    if bias_correction:
        shrink = max(1, round(_N4_MM / max(moving.spacing)))
        mask = ants.get_mask(moving)
        convergence = {"iters": list(n4_iterations), "tol": 1e-7}
        field = ants.n4_bias_field_correction(
            moving, mask=mask, shrink_factor=shrink, convergence=convergence, return_bias_field=True
        )
        bias = field.numpy()
        moving = moving / field
    result = register_affine(moving, template.image, seed, affine_iterations)
    similarity = _similarity(template, result["warpedmovout"])
    return Registration(result["matrix"], bias, ras_affine(moving), similarity)


def cached(cache: RegistrationCache | None, array: np.ndarray, affine: np.ndarray, settings: Mapping, compute):
    """``compute()``'s registration of ``(array, affine)`` with ``settings``, read from ``cache`` when it holds it and
    stored there otherwise (no cache: computed)."""
    if cache is None:
        return compute()
    key = cache.key(array, affine, settings)
    found = cache.get(key)
    if found is None:
        found = compute()
        cache.put(key, found)
    return found


class RegistrationCache:
    """Registrations on disk, keyed by the scan's voxels and affine and the registration settings.

    One file a scan (``<sha256>.npz``), written to a temporary name and renamed, so processes sharing the folder
    (a study's fold jobs, parallel workers) never read a half-written file; a file that cannot be read is
    recomputed.
    """

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)

    @staticmethod
    def key(array: np.ndarray, affine: np.ndarray, settings: Mapping) -> str:
        digest = hashlib.sha256(_CACHE_VERSION.encode())
        digest.update(repr(sorted(settings.items())).encode())
        digest.update(np.asarray(affine, dtype=np.float64).tobytes())
        digest.update(str(array.shape).encode())
        digest.update(np.ascontiguousarray(array, dtype=np.float32).tobytes())
        return digest.hexdigest()

    def get(self, key: str) -> Registration | None:
        path = self.folder / f"{key}.npz"
        if not path.is_file():
            return None
        try:
            with np.load(path) as stored:
                bias = stored["bias"] if stored["bias"].size else None
                return Registration(stored["matrix"], bias, stored["bias_affine"], float(stored["similarity"]))
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
            logger.warning("%s: unreadable registration cache file; recomputing it", path)
            return None

    def put(self, key: str, registration: Registration) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(dir=self.folder, prefix=f".{key}.", suffix=".npz")
        try:
            with os.fdopen(handle, "wb") as stream:
                np.savez(
                    stream,
                    matrix=registration.matrix,
                    bias=registration.bias if registration.bias is not None else np.zeros(0, np.float32),
                    bias_affine=registration.bias_affine,
                    similarity=registration.similarity,
                )
            os.replace(temporary, self.folder / f"{key}.npz")
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise


def _resample(data: torch.Tensor, affine: np.ndarray, dst_affine: np.ndarray, size, padding: str) -> torch.Tensor:
    source = MetaTensor(data, affine=torch.as_tensor(affine, dtype=torch.float64))
    moved = SpatialResample(mode="bilinear", padding_mode=padding, dtype=torch.float32)(
        source, dst_affine=torch.as_tensor(dst_affine, dtype=torch.float64), spatial_size=tuple(size)
    )
    return moved.as_tensor()


class RegisterToTemplate(Transform):
    """Spatially normalise a T1: N4, ANTs affine registration to MNI152, one resample onto the model grid.

    The output is a ``MetaTensor`` ``[1, *spatial_size]`` whose affine is the model grid in template space (it
    overlays on the MNI152 template); its metadata hold :data:`TO_SUBJECT` (template mm -> subject mm) and
    :data:`SIMILARITY`.

    Args:
        spatial_size: model grid in voxels.
        pixdim: model grid voxel size in mm.
        level_mm: voxel size at which N4 and the registration run.
        bias_correction: divide the scan by its N4 bias field.
        brain_mask: zero the voxels outside the template's brain mask.
        min_similarity: a registration whose similarity to the template (correlation within the brain mask) is
            below this is refused with :class:`RegistrationError` naming the scan.
        seed: ANTs' random seed (>= 1).
        cache_dir: folder of a :class:`RegistrationCache` shared by runs and processes (None: no cache).
    """

    def __init__(
        self,
        spatial_size: Sequence[int] = (48, 56, 48),
        pixdim: Sequence[float] = (3.0, 3.0, 3.0),
        level_mm: float = 4.0,
        bias_correction: bool = True,
        brain_mask: bool = False,
        min_similarity: float = 0.5,
        seed: int = 1,
        cache_dir: str | Path | None = None,
    ) -> None:
        check_settings(level_mm, seed)
        self.spatial_size = tuple(int(s) for s in spatial_size)
        self.pixdim = tuple(float(p) for p in pixdim)
        self.settings = {"level_mm": float(level_mm), "bias_correction": bool(bias_correction), "seed": int(seed)}
        self.brain_mask = brain_mask
        self.min_similarity = min_similarity
        self.cache = RegistrationCache(cache_dir) if cache_dir else None

    def registration(self, array: np.ndarray, affine: np.ndarray) -> Registration:
        """The scan's registration, from the cache when it holds it."""
        return cached(self.cache, array, affine, self.settings, lambda: register_t1(array, affine, **self.settings))

    def __call__(self, image: MetaTensor) -> MetaTensor:
        source = image.meta.get("filename_or_obj", "the T1")
        affine = np.asarray(image.affine, dtype=np.float64)
        array = image.as_tensor()[0].numpy()
        found = self.registration(array, affine)
        if found.similarity < self.min_similarity:
            raise RegistrationError(str(source), found.similarity, self.min_similarity)
        grid = template_grid(self.spatial_size, self.pixdim)
        on_subject = found.matrix @ grid
        data = _resample(image.as_tensor().float(), affine, on_subject, self.spatial_size, "zeros")
        if found.bias is not None:
            bias = torch.from_numpy(np.ascontiguousarray(found.bias, dtype=np.float32))[None]
            field = _resample(bias, found.bias_affine, on_subject, self.spatial_size, "border")
            data = data / field.clamp_min(1e-3)
        if self.brain_mask:
            data = data * brain_on_grid(self.spatial_size, self.pixdim)
        meta = {**image.meta, TO_SUBJECT: found.matrix, SIMILARITY: found.similarity}
        meta.pop("affine", None)
        return MetaTensor(data, affine=torch.as_tensor(grid, dtype=torch.float64), meta=meta)


@functools.lru_cache(maxsize=8)
def _brain_on_grid(spatial_size: tuple[int, ...], pixdim: tuple[float, ...]) -> torch.Tensor:
    _, mask = _template_nifti()
    data = torch.from_numpy(np.asarray(mask.dataobj, dtype=np.float32))[None]
    return (_resample(data, mask.affine, template_grid(spatial_size, pixdim), spatial_size, "zeros") > 0.5).float()


def brain_on_grid(spatial_size: Sequence[int], pixdim: Sequence[float]) -> torch.Tensor:
    """The template's brain mask on the model grid, ``[1, *spatial_size]`` (0/1)."""
    return _brain_on_grid(tuple(int(s) for s in spatial_size), tuple(float(p) for p in pixdim))


class RegisterToTemplated(MapTransform):
    """Dictionary twin of :class:`RegisterToTemplate`.

    Args:
        keys: data keys of loaded T1 ``MetaTensor`` s.
        allow_missing_keys: skip absent keys.
        kwargs: arguments of :class:`RegisterToTemplate`.
    """

    def __init__(self, keys: KeysCollection, allow_missing_keys: bool = False, **kwargs) -> None:
        super().__init__(keys, allow_missing_keys)
        self.register = RegisterToTemplate(**kwargs)

    def __call__(self, data: Mapping[Hashable, MetaTensor]) -> dict:
        out = dict(data)
        for key in self.key_iterator(out):
            out[key] = self.register(out[key])
        return out


def _register_file(path: str, settings: Mapping, cache_dir: str) -> str:
    from monai.transforms import LoadImage

    image = LoadImage(image_only=True, ensure_channel_first=True, dtype=np.float32)(path)
    RegisterToTemplate(cache_dir=cache_dir, min_similarity=-1.0, **settings).registration(
        image.as_tensor()[0].numpy(), np.asarray(image.affine, dtype=np.float64)
    )
    return path


def register_files(paths: Sequence[str], settings: Mapping, cache_dir: str | Path, workers: int = 1, progress=None):
    """Fill the registration cache for ``paths`` (T1 files), ``workers`` processes at once.

    Each worker registers with one ITK thread, so results do not depend on ``workers``. A scan that fails is
    left for the chain to report when it reads it.

    Args:
        paths: T1 files.
        settings: ``level_mm``, ``bias_correction``, ``seed`` (as :class:`RegisterToTemplate` takes them).
        cache_dir: the :class:`RegistrationCache` folder.
        workers: processes registering at once.
        progress: optional callable invoked once per finished scan.
    """
    settings = {k: settings[k] for k in ("level_mm", "bias_correction", "seed") if k in settings}
    work = functools.partial(in_advance, _register_file, settings=settings, cache_dir=str(cache_dir))
    for_each_file(work, paths, workers, progress)


def for_each_file(work, paths: Sequence[str], workers: int = 1, progress=None) -> None:
    """``work(path)`` for every path, ``workers`` spawned processes at once (``work`` must be picklable);
    ``progress()`` after each."""
    if workers <= 1:
        for path in paths:
            work(path)
            if progress:
                progress()
        return
    with ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        for _ in pool.map(work, paths):
            if progress:
                progress()


def in_advance(register, path: str, **kwargs) -> None:
    """``register(path, **kwargs)`` ahead of the chain: a file that fails is left for the chain to report, with
    its row, when it reads it."""
    try:
        register(path, **kwargs)
    except Exception as err:
        logger.debug("%s: not registered in advance: %s", path, err)


__all__ = [
    "AFFINE_ITERATIONS",
    "REGISTRATION_MODES",
    "SIMILARITY",
    "T1_AFFINE_ITERATIONS",
    "TO_SUBJECT",
    "RegisterToTemplate",
    "RegisterToTemplated",
    "Registration",
    "RegistrationCache",
    "RegistrationError",
    "brain_on_grid",
    "cached",
    "check_settings",
    "for_each_file",
    "in_advance",
    "mni_template",
    "register_files",
    "register_affine",
    "register_t1",
    "subject_affine",
    "template_grid",
    "to_ants",
    "transform_to_ras",
    "write_transform",
]
