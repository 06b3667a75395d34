"""Atlas ROI time series of a 4D BOLD run: ``(X, Y, Z, T)`` -> ``[R, T]``, as nilearn's ``NiftiLabelsMasker``."""

from __future__ import annotations

import functools
from collections.abc import Hashable, Mapping
from dataclasses import dataclass
from typing import Any

import nibabel as nib
import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform, Transform
from scipy import sparse

from pipeline.data.atlas import Atlas, load_atlas
from pipeline.transforms.utils import as_numpy, source_of

__all__ = [
    "GridLabels",
    "ROISignals",
    "ROISignalsd",
    "labels_on_grid",
]

#: float64 values converted at a time while averaging ROI voxels (8 MiB): the run is never copied to float64
_CHUNK_VALUES = 2**20


@dataclass(frozen=True)
class GridLabels:
    """An atlas on one voxel grid: the voxels inside a region (flat indices in the run's memory order) and the
    sparse ``[R, voxels]`` averaging matrix (1 / region size)."""

    voxels: np.ndarray
    averaging: sparse.csr_array
    counts: np.ndarray


@functools.lru_cache(maxsize=32)
def labels_on_grid(atlas: Atlas, shape: tuple[int, ...], affine_bytes: bytes, order: str) -> GridLabels:
    """The atlas resampled (nearest) onto a run's grid through the two affines, as nilearn's masker does."""
    from nilearn.image import resample_to_img

    affine = np.frombuffer(affine_bytes, dtype=np.float64).reshape(4, 4)
    target = nib.Nifti1Image(np.zeros(shape, dtype=np.int8), affine)
    resampled = resample_to_img(atlas.image, target, interpolation="nearest", force_resample=True, copy_header=True)
    flat = np.asarray(resampled.dataobj).ravel(order=order)
    labels = np.asarray(atlas.labels)
    rows = np.minimum(np.searchsorted(labels, flat), len(labels) - 1)
    voxels = np.flatnonzero(labels[rows] == flat)
    rows = rows[voxels]
    counts = np.bincount(rows, minlength=len(labels))
    averaging = sparse.csr_array((1.0 / counts[rows], (rows, np.arange(len(voxels)))), shape=(len(labels), len(voxels)))
    return GridLabels(voxels, averaging, counts)


def _float64_block(voxels_by_time: np.ndarray, voxels: np.ndarray, columns: slice, finite: bool) -> np.ndarray:
    """Some time points of the region voxels in float64 (a temporary: one block is alive at a time)."""
    block = voxels_by_time[voxels, columns].astype(np.float64)
    return np.nan_to_num(block, copy=False, posinf=0, neginf=0) if finite else block


class ROISignals(Transform):
    """Mean BOLD signal of every atlas region: ``(X, Y, Z, T)`` run -> ``[R, T]`` (float64).

    The atlas is resampled with nearest-neighbour interpolation onto the run's own voxel grid through the two
    affines (as nilearn's ``NiftiLabelsMasker(strategy="mean", resampling_target="data")`` does) and cached per
    grid. Rows follow the atlas label order (ascending label values); the metadata carries ``roi_labels``,
    ``roi_names`` and ``roi_empty``. Non-finite voxel values count as 0, as in nilearn.

    The means are sums accumulated in float64 over a few time points at a time, so they match nilearn to float64
    precision while the 4D run is never copied to float64.

    A region partly outside the run's field of view is averaged over its voxels inside it. A region with no voxel
    inside is never silently skipped (which would shift every later row); ``empty`` decides:
    ``"zero"`` keeps an all-zero row (a fixed ``R`` for the network), ``"drop"`` removes the row (nilearn's
    output), ``"error"`` refuses. Either way it is listed in ``roi_empty``.

    Args:
        atlas: built-in atlas name (``"AAL"``) or path to an integer label NIfTI.
        empty: ``"zero"``, ``"drop"`` or ``"error"``, see above.
    """

    def __init__(self, atlas: str = "AAL", empty: str = "zero") -> None:
        if empty not in ("zero", "drop", "error"):
            raise ValueError(f"empty must be 'zero', 'drop' or 'error', got {empty!r}")
        self.atlas = load_atlas(str(atlas))
        self.empty = empty

    def __call__(self, run: torch.Tensor | np.ndarray, affine: np.ndarray | None = None) -> MetaTensor:
        """Args:
        run: 4D array ``(X, Y, Z, T)``; a MetaTensor carries its affine.
        affine: voxel-to-world affine, needed when ``run`` is not a MetaTensor.
        """
        if affine is None:
            if not isinstance(run, MetaTensor):
                raise ValueError("ROISignals needs the run's affine (a MetaTensor or the affine argument)")
            affine = run.affine
        if run.ndim != 4:
            raise ValueError(f"{source_of(run)}: ROISignals expects a 4D run (X, Y, Z, T), got {tuple(run.shape)}")
        array = as_numpy(run)
        order = "F" if array.flags.f_contiguous and not array.flags.c_contiguous else "C"
        affine = np.ascontiguousarray(as_numpy(torch.as_tensor(affine, dtype=torch.float64)))
        grid = labels_on_grid(self.atlas, array.shape[:3], affine.tobytes(), order)
        means = self._means(array.reshape(-1, array.shape[3], order=order), grid)
        return self._with_empty_rows(means, grid.counts == 0, run)

    @staticmethod
    def _means(voxels_by_time: np.ndarray, grid: GridLabels, finite: bool = False) -> np.ndarray:
        """Region means ``[R, T]``; ``finite`` zeroes non-finite voxel values first (only needed when a mean is
        not finite: any NaN or infinity in a region makes its sum non-finite)."""
        steps = voxels_by_time.shape[1]
        means = np.empty((grid.averaging.shape[0], steps))
        chunk = max(1, _CHUNK_VALUES // max(len(grid.voxels), 1))
        for start in range(0, steps, chunk):
            columns = slice(start, start + chunk)
            means[:, columns] = grid.averaging @ _float64_block(voxels_by_time, grid.voxels, columns, finite)
        if not finite and not np.isfinite(means).all():
            return ROISignals._means(voxels_by_time, grid, finite=True)
        return means

    def _with_empty_rows(self, means: np.ndarray, empty: np.ndarray, run: Any) -> MetaTensor:
        names = np.asarray(self.atlas.names)
        if empty.any() and self.empty == "error":
            raise ValueError(
                f"{source_of(run)}: {empty.sum()} atlas regions have no voxel in the run's field of view: "
                + ", ".join(names[empty])
            )
        keep = ~empty if self.empty == "drop" else np.ones_like(empty)
        meta = {
            "roi_labels": [int(v) for v in np.asarray(self.atlas.labels)[keep]],
            "roi_names": names[keep].tolist(),
            "roi_empty": names[empty].tolist(),
            "filename_or_obj": source_of(run, ""),
        }
        return MetaTensor(torch.from_numpy(np.ascontiguousarray(means[keep])), meta=meta)


class ROISignalsd(MapTransform):
    """Dictionary twin of :class:`ROISignals`; the run's affine comes from its MetaTensor.

    Args:
        keys: keys of the 4D runs.
        atlas: see :class:`ROISignals`.
        empty: see :class:`ROISignals`.
        allow_missing_keys: skip absent keys.
    """

    def __init__(self, keys: KeysCollection, atlas: str = "AAL", empty: str = "zero", allow_missing_keys: bool = False):
        super().__init__(keys, allow_missing_keys)
        self.signals = ROISignals(atlas=atlas, empty=empty)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.signals(d[key])
        return d
