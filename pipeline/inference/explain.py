"""Explanations of one prediction: an MRI saliency map back in the input's space, and fMRI ROI importance.

MRI saliency is the magnitude of the gradient of the predicted class's logit with respect to each voxel of the
model's input (MONAI's ``VanillaGrad``, Simonyan et al. 2014), scaled to [0, 1] and resampled from the model grid onto
the input T1's grid through the two affines. On synthetic subjects whose only disease signal is temporal atrophy it
concentrates in the atrophied regions (tests/test_inference_explain.py). Grad-CAM and occlusion sensitivity were
measured on the same subjects and not adopted: Grad-CAM keeps only positive evidence, and atrophy is grey matter
that is missing (its mass in the atrophied regions was 0.7-0.9 times the brain average); every occlusion fill of
``monai.visualize.OcclusionSensitivity`` darkens the occluded block, which imitates atrophy instead of removing it.

fMRI ROI importance is occlusion over ROIs: each ROI's rows of the sequence are set to 0 (its mean after z-scoring)
and the drop of the predicted class's log-probability is recorded.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from monai.data import MetaTensor
from monai.transforms import SpatialResample
from monai.visualize import VanillaGrad
from torch import nn


def mri_saliency(
    network: nn.Module, image: torch.Tensor, class_index: int, series: torch.Tensor | None = None
) -> torch.Tensor:
    """Gradient magnitude of the class logit per voxel of the model input, scaled to [0, 1].

    Args:
        network: the classifier in eval mode.
        image: the model input ``[1, X, Y, Z]`` (no batch axis).
        class_index: the class explained (the predicted one).
        series: the fMRI sequence of a fused network (no batch axis), or None.
    """
    kwargs = {} if series is None else {"series": series[None]}
    trainable = [p for p in network.parameters() if p.requires_grad]
    for parameter in trainable:  # only the input's gradient is needed: the weights' would double the backward pass
        parameter.requires_grad_(False)
    try:
        gradient = VanillaGrad(network)(image[None].detach().clone(), index=class_index, **kwargs)
    finally:
        for parameter in trainable:
            parameter.requires_grad_(True)
    magnitude = gradient[0, 0].abs()
    return magnitude / magnitude.max().clamp_min(torch.finfo(magnitude.dtype).tiny)


def to_input_space(
    saliency: torch.Tensor, model_affine: torch.Tensor, affine: np.ndarray, shape: tuple[int, ...]
) -> np.ndarray:
    """Resample a map ``[X, Y, Z]`` on the model grid onto the input's grid (trilinear, 0 outside).

    When the two grids' axes are parallel (any order and direction: the model grid is world-aligned, and so are
    most scans) the interpolation is separable: three small matrix products, ten times faster than MONAI's
    ``SpatialResample`` on a 1 mm T1 and equal to it within float precision; an oblique input uses
    ``SpatialResample``.

    Args:
        saliency: the map on the model grid.
        model_affine: voxel-to-world affine of the model grid (the chain's output affine).
        affine: voxel-to-world affine of the input.
        shape: the input's spatial shape.
    """
    saliency = saliency.detach().cpu().float()
    matrix = np.linalg.inv(np.asarray(model_affine, dtype=np.float64)) @ np.asarray(affine, dtype=np.float64)
    linear = matrix[:3, :3]
    if np.count_nonzero(np.abs(linear) > 1e-6 * np.abs(linear).max()) != 3:
        moved = SpatialResample(mode="bilinear", padding_mode="zeros", dtype=torch.float32)(
            MetaTensor(saliency[None], affine=model_affine),
            dst_affine=torch.as_tensor(affine, dtype=torch.float64),
            spatial_size=shape[:3],
        )
        return np.ascontiguousarray(moved[0].numpy())
    source = np.argmax(np.abs(linear), axis=0)  # the model axis along each input axis
    moved = saliency.permute(*source.tolist())
    for axis, size in enumerate(shape[:3]):
        position = linear[source[axis], axis] * np.arange(size) + matrix[source[axis], 3]
        moved = torch.tensordot(_linear_weights(position, moved.shape[axis]), moved.movedim(axis, 0), dims=1)
        moved = moved.movedim(0, axis)
    return np.ascontiguousarray(moved.numpy())


def _linear_weights(position: np.ndarray, size: int) -> torch.Tensor:
    """``[len(position), size]`` linear interpolation weights at fractional voxel positions, zero outside."""
    low = np.floor(position).astype(np.int64)
    weights = np.zeros((len(position), size), dtype=np.float32)
    for step, weight in ((0, 1 - (position - low)), (1, position - low)):
        index = low + step
        inside = (index >= 0) & (index < size)
        weights[np.flatnonzero(inside), index[inside]] += weight[inside]
    return torch.from_numpy(weights)


def roi_rows(sequence: str, n_rois: int) -> torch.Tensor | None:
    """Which rows of the fMRI sequence each ROI feeds, ``[R, rows]`` (bool): itself in ``roi`` mode, every ROI
    pair holding it in ``dfc`` mode; None in ``volume`` mode (no ROIs)."""
    if sequence == "roi":
        return torch.eye(n_rois, dtype=torch.bool)
    if sequence == "dfc":
        first, second = torch.triu_indices(n_rois, n_rois, offset=1)
        roi = torch.arange(n_rois)[:, None]
        return (roi == first) | (roi == second)
    return None


def series_classifier(network: nn.Module, image: torch.Tensor | None) -> Callable[[torch.Tensor], torch.Tensor]:
    """Logits of a batch of fMRI sequences: the network itself (fMRI-only), or a fused network's head on the
    subject's MRI embedding, computed once, and each sequence's fMRI embedding.

    Args:
        network: an fMRI classifier, or a ``FusionClassifier`` when ``image`` is given.
        image: the subject's model input ``[1, X, Y, Z]`` for a fused network, else None.
    """
    if image is None:
        return network
    with torch.no_grad():
        embedding = network.mri_encoder(image[None])
    return lambda batch: network.fuse(embedding.expand(len(batch), -1), network.fmri_encoder(batch))


def roi_importance(
    classify: Callable[[torch.Tensor], torch.Tensor],
    series: torch.Tensor,
    rows: torch.Tensor,
    class_index: int,
    batch_size: int = 128,
) -> np.ndarray:
    """Drop of the class's log-probability when each ROI's rows of ``series`` are set to 0, ``[R]``.

    Args:
        classify: logits of a batch of sequences (see :func:`series_classifier`).
        series: the subject's sequence ``[rows, T]`` as the model reads it.
        rows: ``[R, rows]`` from :func:`roi_rows`.
        class_index: the class explained.
        batch_size: occluded sequences per forward pass (few large passes: an LSTM step is a small matrix product,
            and each pass pays a synchronisation of the threads per time step).
    """
    with torch.no_grad():
        baseline = torch.log_softmax(classify(series[None]), dim=1)[0, class_index]
        drops = []
        for chunk in rows.to(series.device).split(batch_size):
            occluded = series[None] * (~chunk)[:, :, None].to(series.dtype)
            drops.append(baseline - torch.log_softmax(classify(occluded), dim=1)[:, class_index])
    return torch.cat(drops).cpu().numpy()
