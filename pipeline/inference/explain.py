"""Explanations of one prediction: an MRI saliency map back in the input's space, and fMRI ROI importance.

MRI saliency is computed on the model's grid by one of three ``monai.visualize`` methods (the bundle key
``saliency_method``), clipped at 0, scaled to [0, 1] and resampled onto the input T1's grid through the two affines:

- ``vanilla_grad`` (default): the magnitude of the gradient of the predicted class's logit with respect to each voxel
  (``VanillaGrad``, Simonyan et al. 2014).
- ``gradcam``: Grad-CAM (``GradCAM``, Selvaraju et al. 2017) of the predicted class's logit on the MRI encoder's last
  convolution block (``encoder.features.3``; ``mri_encoder.features.3`` of the fused network, whose fMRI embedding is
  held fixed), upsampled to the model grid. Positive evidence only, at the block's resolution (1/8 of the grid).
- ``occlusion``: the drop of the predicted class's probability when each of 3 x 3 x 3 blocks of the model grid is
  replaced by its own mean (``OcclusionSensitivity``, ``mean_patch``; 27 forward passes).

On 48 x 56 x 48 with 2 CPU threads (shared with other processes) the map takes 0.15-0.47 s (``vanilla_grad``),
0.04-0.17 s (``gradcam``), 0.37-0.61 s (``occlusion``). On synthetic subjects whose only disease signal is temporal
atrophy (the twins of :mod:`pipeline.bench.twins`, the MRI bundle trained with seeds 0, 1, 2), the saliency mass in
the atrophied regions over the 90th percentile of its mass in 20 random brain regions of the same size, placed in the
twin's own anatomy (the test's criterion: above 1 passes), was 1.13, 1.15, 0.99 (``vanilla_grad``), 0.87, 0.98, 0.87
(``gradcam``) and 1.57, 1.03, 0.75 (``occlusion``), measured at b85d1bf by
``python tools/saliency_methods.py --seeds 0 1 2``. ``vanilla_grad`` stays the default: the closest to the atrophy
over the seeds, at the voxel's resolution, gradients of either sign kept (atrophy is grey matter that is missing).

fMRI ROI importance is occlusion over ROIs: each ROI's rows of the sequence are set to 0 (:data:`OCCLUSION_FILL`)
and the drop of the predicted class's log-probability is recorded.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable, Iterator
from functools import partial

import numpy as np
import torch
from monai.data import MetaTensor
from monai.transforms import SpatialResample
from monai.visualize import GradCAM, OcclusionSensitivity, VanillaGrad
from torch import nn

#: ``occlusion``: the model grid is occluded in OCCLUSION_BLOCKS x OCCLUSION_BLOCKS x OCCLUSION_BLOCKS blocks, one at a
#: time (27 forward passes whatever the grid: 0.5 s on 2 CPU threads for the bundles' 48 x 56 x 48)
OCCLUSION_BLOCKS = 3

#: ``saliency_method`` -> what the map is (``prediction.json`` and the report say it)
SALIENCY_METHODS: dict[str, str] = {
    "vanilla_grad": "|d logit / d voxel| of the predicted class (monai.visualize.VanillaGrad), in [0, 1]",
    "gradcam": "Grad-CAM of the predicted class's logit on the MRI encoder's last convolution block "
    "(monai.visualize.GradCAM), upsampled to the model grid, in [0, 1]",
    "occlusion": f"drop of the predicted class's probability when each of {OCCLUSION_BLOCKS}^3 blocks of the model "
    "grid is replaced by its mean (monai.visualize.OcclusionSensitivity, mean_patch), clipped at 0, in [0, 1]",
}


def saliency_method_problem(method: object) -> str | None:
    """Why ``method`` is not a ``saliency_method`` (None: it is one)."""
    if isinstance(method, str) and method in SALIENCY_METHODS:
        return None
    return f"bundle key 'saliency_method' must be one of {', '.join(SALIENCY_METHODS)}, got {method!r}"


def mri_saliency(
    network: nn.Module,
    image: torch.Tensor,
    class_index: int,
    series: torch.Tensor | None = None,
    method: str = "vanilla_grad",
) -> torch.Tensor:
    """Saliency of the class on the model input's grid, ``[X, Y, Z]`` in [0, 1] (see the module's text).

    Args:
        network: the classifier in eval mode.
        image: the model input ``[1, X, Y, Z]`` (no batch axis).
        class_index: the class explained (the predicted one).
        series: the fMRI sequence of a fused network (no batch axis), or None.
        method: a key of :data:`SALIENCY_METHODS`.

    Raises:
        ValueError: an unknown method.
    """
    problem = saliency_method_problem(method)
    if problem:
        raise ValueError(problem)
    model = image_classifier(network, series)
    saliency = _MAPS[method](model, image[None].detach().clone(), class_index)
    saliency = saliency.detach().clamp_min(0)
    return saliency / saliency.max().clamp_min(torch.finfo(saliency.dtype).tiny)


class _FixedSeries(nn.Module):
    """A fused network as a classifier of MRI batches: the subject's fMRI embedding, computed once, stands beside
    each image's."""

    def __init__(self, network: nn.Module, series: torch.Tensor) -> None:
        super().__init__()
        self.network = network
        with torch.no_grad():
            self.fmri = network.fmri_encoder(series[None])
        self.train(network.training)  # MONAI's explainers restore the mode they found, recursively

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.network.fuse(self.network.mri_encoder(image), self.fmri.expand(len(image), -1))


def image_classifier(network: nn.Module, series: torch.Tensor | None) -> nn.Module:
    """Logits of a batch of MRIs: the network itself (MRI-only), or a fused network given the subject's fMRI sequence
    (no batch axis).

    Args:
        network: an MRI classifier, or a ``FusionClassifier`` when ``series`` is given.
        series: the subject's fMRI sequence, or None.
    """
    return network if series is None else _FixedSeries(network, series)


def last_convolution_block(model: nn.Module) -> tuple[str, nn.Module]:
    """Name and module of the last block of the model's MRI encoder (``encoder.features.3`` of an
    ``MRIClassifier``, ``mri_encoder.features.3`` of a ``FusionClassifier``)."""
    from pipeline.networks.mri_cnn import MRIEncoder3D

    for name, module in model.named_modules():
        if isinstance(module, MRIEncoder3D):
            index = len(module.features) - 1
            return f"{name}.features.{index}".lstrip("."), module.features[index]
    raise ValueError(f"{type(model).__name__} has no MRIEncoder3D: no Grad-CAM layer")


@contextlib.contextmanager
def _gradients_of(model: nn.Module, keep: nn.Module | None = None) -> Iterator[None]:
    """Only ``keep``'s parameters require gradients inside (the weights' gradients would double the backward pass;
    Grad-CAM needs its layer's output in the graph)."""
    kept = set() if keep is None else {id(p) for p in keep.parameters()}
    frozen = [p for p in model.parameters() if p.requires_grad and id(p) not in kept]
    for parameter in frozen:
        parameter.requires_grad_(False)
    try:
        yield
    finally:
        for parameter in frozen:
            parameter.requires_grad_(True)


@contextlib.contextmanager
def _hooks_removed_after(model: nn.Module) -> Iterator[None]:
    """Remove the hooks that MONAI's ``ModelWithHooks`` registers when done: it keeps no handle to them, and each
    later forward pass of the bundle's network would run them."""
    before = {module: (set(module._forward_hooks), set(module._backward_hooks)) for module in model.modules()}
    try:
        yield
    finally:
        for module, (forward, backward) in before.items():
            for key in set(module._forward_hooks) - forward:
                del module._forward_hooks[key]
            for key in set(module._backward_hooks) - backward:
                del module._backward_hooks[key]


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silence MONAI's explainers' notes on torch behaviour they rely on (a full backward hook firing on a block whose
    input needs no gradient; list indexing): not the user's business."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        yield


def _vanilla_grad(model: nn.Module, batch: torch.Tensor, class_index: int) -> torch.Tensor:
    with _gradients_of(model), _hooks_removed_after(model):
        return VanillaGrad(model)(batch, index=class_index)[0, 0].abs()


def _gradcam(model: nn.Module, batch: torch.Tensor, class_index: int) -> torch.Tensor:
    name, block = last_convolution_block(model)
    with _gradients_of(model, keep=block), _hooks_removed_after(model), _quiet():
        cam = GradCAM(model, target_layers=name, postprocessing=lambda m: m)
        return cam(batch, class_idx=class_index)[0, 0]


def _occlusion(model: nn.Module, batch: torch.Tensor, class_index: int) -> torch.Tensor:
    block = [-(-size // OCCLUSION_BLOCKS) for size in batch.shape[2:]]
    occlusion = OcclusionSensitivity(
        model,
        mask_size=block,
        n_batch=OCCLUSION_BLOCKS**3,
        verbose=False,
        mode="mean_patch",
        overlap=0.0,
        activate=partial(torch.softmax, dim=1),  # MONAI's ``True`` is a sigmoid for a one-channel input
    )
    with torch.no_grad(), _quiet():
        baseline = torch.softmax(model(batch), dim=1)[0, class_index]
        occluded, _ = occlusion(batch)
    return baseline - occluded[0, class_index]


#: ``saliency_method`` -> its map on the model grid, before clipping at 0 and scaling
_MAPS: dict[str, Callable[[nn.Module, torch.Tensor, int], torch.Tensor]] = {
    "vanilla_grad": _vanilla_grad,
    "gradcam": _gradcam,
    "occlusion": _occlusion,
}


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


#: what setting an ROI's rows to 0 means, per sequence mode
OCCLUSION_FILL = {
    "roi": "the ROI's signal replaced by its mean (0 after z-scoring)",
    "dfc": "the ROI's window correlations replaced by 0 (no correlation)",
}


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
