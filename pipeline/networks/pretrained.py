"""Start a network's 3D CNN from another model's: the MRI encoder of a ``model.pt`` of ``mri_cnn3d`` or
``mri_fmri_fusion``, loaded into either (``MRIClassifier.encoder`` and ``FusionClassifier.mri_encoder`` are both an
:class:`~pipeline.networks.mri_cnn.MRIEncoder3D`), fine-tuned or frozen.

Bundle keys ``mri_encoder_weights`` (path or null) and ``mri_encoder_freeze`` reach :func:`load_mri_encoder`; a
study's ``transfer`` key sets them to the encoder it pretrained on another cohort.
"""

from __future__ import annotations

import pickle
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from pipeline.networks.mri_cnn import MRIEncoder3D

#: attribute names of the MRI encoder in the networks of this package (and prefixes of its keys in a state dict)
ENCODER_ATTRIBUTES = ("encoder", "mri_encoder")
_NO_PATH = {"", "none", "null"}
MRI_BLOCKS = "features."  # the convolution blocks of an MRIEncoder3D state dict


class EncoderWeightsError(ValueError):
    """Encoder weights that cannot be loaded; the message names the file and what is wrong."""


def weights_path(value) -> Path | None:
    """The ``mri_encoder_weights`` key as a path; None for null (or the text ``null``/``none``/empty)."""
    if value is None or (isinstance(value, str) and value.strip().lower() in _NO_PATH):
        return None
    return Path(str(value)).expanduser()


def mri_encoder_of(network: nn.Module) -> MRIEncoder3D:
    """The MRI encoder of ``network`` (its ``encoder`` or ``mri_encoder``).

    Raises:
        EncoderWeightsError: the network has none.
    """
    for name in ENCODER_ATTRIBUTES:
        encoder = getattr(network, name, None)
        if isinstance(encoder, MRIEncoder3D):
            return encoder
    raise EncoderWeightsError(f"mri_encoder_weights: {type(network).__name__} has no MRI encoder to load")


def encoder_state(path: str | Path) -> dict[str, torch.Tensor]:
    """The MRI encoder's tensors in a checkpoint, keys relative to the encoder (``features.0.conv.weight``, ...).

    Reads a flat state dict (MONAI's ``model.pt``) or one nested under ``model``, of either network's layout
    (``encoder.*`` or ``mri_encoder.*``, a ``module.`` prefix of a data-parallel wrapper removed), with
    ``torch.load(weights_only=True)``: a pickle that would import or call anything is refused.

    Raises:
        EncoderWeightsError: the file is missing, not a checkpoint, or holds no MRI encoder.
    """
    path = Path(path)
    if not path.is_file():
        raise EncoderWeightsError(
            f"mri_encoder_weights: {path}: no such file (a model.pt of mri_cnn3d or mri_fmri_fusion)"
        )
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError) as err:
        reason = " ".join(str(err).split())[:200]
        raise EncoderWeightsError(f"mri_encoder_weights: {path}: not a PyTorch checkpoint ({reason})") from None
    if isinstance(state, Mapping) and isinstance(state.get("model"), Mapping):
        state = state["model"]
    if not isinstance(state, Mapping):
        raise EncoderWeightsError(f"mri_encoder_weights: {path}: not a state dict (holds a {type(state).__name__})")
    state = {str(k).removeprefix("module."): v for k, v in state.items()}
    for name in ENCODER_ATTRIBUTES:
        prefix = f"{name}."
        found = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix) and torch.is_tensor(v)}
        if any(k.startswith(MRI_BLOCKS) for k in found):  # FMRIClassifier has an ``encoder`` too
            return found
    raise EncoderWeightsError(
        f"mri_encoder_weights: {path}: holds no MRI encoder (no 'encoder.*' or 'mri_encoder.*' weights; "
        "expected a model.pt of mri_cnn3d or mri_fmri_fusion)"
    )


def encoder_mismatch(source: Mapping[str, torch.Tensor], target: Mapping[str, torch.Tensor]) -> str | None:
    """The first difference between two encoders' state dicts (a key one lacks, or a shape), or None."""
    for key in target:
        if key not in source:
            return f"the checkpoint lacks encoder key '{key}'"
    for key in source:
        if key not in target:
            return f"the checkpoint's encoder key '{key}' is not in the network's encoder"
    for key, tensor in target.items():
        if tuple(source[key].shape) != tuple(tensor.shape):
            return (
                f"encoder key '{key}' has shape {list(source[key].shape)} in the checkpoint, "
                f"{list(tensor.shape)} in the network"
            )
    return None


def load_mri_encoder(network: nn.Module, path: str | Path | None, freeze: bool = False) -> nn.Module:
    """Load the MRI encoder of the checkpoint ``path`` into ``network``'s; optionally freeze it.

    A frozen encoder keeps its weights and its batch-norm statistics while the rest of the network trains
    (:meth:`MRIEncoder3D.freeze`).

    Args:
        network: an ``MRIClassifier`` or ``FusionClassifier`` (or any module with such an encoder).
        path: a ``model.pt`` of ``mri_cnn3d`` or ``mri_fmri_fusion``; None (or ``null``) leaves ``network`` as built.
        freeze: freeze the loaded encoder.

    Returns:
        ``network`` itself.

    Raises:
        EncoderWeightsError: in one line, naming the file: missing, not a checkpoint, no MRI encoder in it, an
            encoder of another shape (the key and both shapes), or ``freeze`` without weights.
    """
    path = weights_path(path)
    if path is None:
        if freeze:
            raise EncoderWeightsError("mri_encoder_freeze: true needs mri_encoder_weights (a pretrained model.pt)")
        return network
    encoder = mri_encoder_of(network)
    state = encoder_state(path)
    problem = encoder_mismatch(state, encoder.state_dict())
    if problem:
        raise EncoderWeightsError(f"mri_encoder_weights: {path}: does not fit the network's MRI encoder: {problem}")
    encoder.load_state_dict(state)
    if freeze:
        encoder.freeze()
    return network
