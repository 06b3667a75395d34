"""Input checks at the start of every chain: a broken scan stops with one line naming its file.

:class:`CheckImageFiled` runs before ``LoadImaged`` on the path (header only, so an absurd grid is refused before it is
allocated); :class:`CheckImageValuesd` runs right after it on the loaded voxels. See :mod:`pipeline.data.images`.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform, Transform

from pipeline.data.images import check_header, check_values


class CheckImageFile(Transform):
    """Refuse an image file from its header (see :func:`pipeline.data.images.check_header`); returns the path unchanged.

    Args:
        kind: ``"mri"`` (a 3D T1) or ``"fmri"`` (a 4D BOLD run).
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind

    def __call__(self, path: str | Path) -> str | Path:
        check_header(path, self.kind)
        return path


class CheckImageFiled(MapTransform):
    """Dictionary twin of :class:`CheckImageFile`; values that are not paths (arrays already loaded) pass.

    Args:
        keys: keys of image paths.
        kind: ``"mri"`` or ``"fmri"``.
        allow_missing_keys: skip absent keys.
    """

    def __init__(self, keys: KeysCollection, kind: str, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.check = CheckImageFile(kind)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            if isinstance(d[key], (str, Path)):
                self.check(d[key])
        return d


class CheckImageValues(Transform):
    """Refuse loaded voxels that are non-finite, all equal, or (fMRI) constant over time; returns them unchanged.

    See :func:`pipeline.data.images.check_values`; the file named is the MetaTensor's ``filename_or_obj``.

    Args:
        kind: ``"mri"`` or ``"fmri"`` (time on the last axis).
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind

    def __call__(self, image: torch.Tensor | np.ndarray) -> torch.Tensor | np.ndarray:
        source = (getattr(image, "meta", None) or {}).get("filename_or_obj", "image")
        array = image.detach().cpu().numpy() if isinstance(image, torch.Tensor) else image
        check_values(array, self.kind, source)
        return image


class CheckImageValuesd(MapTransform):
    """Dictionary twin of :class:`CheckImageValues`.

    Args:
        keys: keys of loaded images.
        kind: ``"mri"`` or ``"fmri"``.
        allow_missing_keys: skip absent keys.
    """

    def __init__(self, keys: KeysCollection, kind: str, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.check = CheckImageValues(kind)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            self.check(d[key])
        return d
