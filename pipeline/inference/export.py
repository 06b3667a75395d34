"""ONNX export of a bundle's trained network, every input of its ``network_data_format``, checked with onnxruntime.

MONAI's ``onnx_export`` feeds the network one input; the fused bundle's ``forward(image, series)`` takes two.
Here the inputs are the metadata's, in their order (``image``, then ``series``), named as the metadata names them;
the batch axis is dynamic. The export is then run under onnxruntime and compared with the eager network.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Iterator, Mapping
from pathlib import Path

import numpy as np
import torch
from monai.bundle import ConfigParser
from monai.utils import get_equivalent_dtype
from torch import nn

from pipeline.io import atomic_path

EXTRA_PACKAGES = ("onnx", "onnxscript", "onnxruntime")


class ExportMismatch(RuntimeError):
    """The exported model's outputs differ from the eager network's."""


def load_network(
    bundle_dir: str | Path,
    ckpt_file: str | Path | None = None,
    config_file: str = "inference.yaml",
    key_in_ckpt: str = "",
) -> tuple[nn.Module, dict]:
    """The bundle's ``network_def`` with trained weights, in eval mode on the CPU, and its metadata.

    Args:
        bundle_dir: the bundle folder.
        ckpt_file: checkpoint (default ``<bundle_dir>/models/model.pt``, the best model a training keeps).
        config_file: config under ``configs/`` that defines ``network_def``.
        key_in_ckpt: key of the weights in a nested checkpoint (``""``: the file is the state dict).
    """
    bundle_dir = Path(bundle_dir)
    parser = ConfigParser()
    parser.read_config(bundle_dir / "configs" / config_file)
    parser.read_meta(bundle_dir / "configs" / "metadata.json")
    parser["bundle_root"] = str(bundle_dir)
    ckpt_file = Path(ckpt_file or bundle_dir / "models" / "model.pt")
    if "model_file" in parser:  # the network's input keys (atlas, class names) as these weights were trained
        parser["model_file"] = str(ckpt_file)
    network = parser.get_parsed_content("network_def").cpu()
    state = torch.load(ckpt_file, map_location="cpu", weights_only=True)
    network.load_state_dict(state[key_in_ckpt] if key_in_ckpt else state)
    return network.eval(), parser.get("_meta_")


def example_inputs(meta: Mapping, batch_size: int = 2, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random inputs shaped as ``network_data_format.inputs`` (``[batch, channels, *spatial_shape]``), in order."""
    generator = torch.Generator().manual_seed(seed)
    inputs = {}
    for name, spec in meta["network_data_format"]["inputs"].items():
        shape = (batch_size, spec["num_channels"], *spec["spatial_shape"])
        dtype = get_equivalent_dtype(spec["dtype"], torch.Tensor)
        inputs[name] = torch.rand(shape, generator=generator).to(dtype)
    return inputs


def export_onnx(network: nn.Module, meta: Mapping, filepath: str | Path, opset_version: int | None = None) -> Path:
    """Write ``network`` as ONNX with the metadata's input and output names and a dynamic batch axis.

    Args:
        network: the network in eval mode.
        meta: bundle metadata (``network_data_format``).
        filepath: the ``.onnx`` file.
        opset_version: ONNX opset (None: the exporter's default).
    """
    filepath = Path(filepath)
    inputs = example_inputs(meta)  # batch 2: a batch of 1 would be specialised as a constant
    outputs = list(meta["network_data_format"]["outputs"])
    # the exporter's notes (deprecations, unrelated torchvision ops) say nothing about this model: the check does
    with torch.no_grad(), warnings.catch_warnings(), _quiet("torch.onnx"), atomic_path(filepath, ".onnx") as tmp:
        warnings.simplefilter("ignore")
        torch.onnx.export(
            network,
            tuple(inputs.values()),
            str(tmp),
            input_names=list(inputs),
            output_names=outputs,
            dynamic_axes={name: {0: "batch"} for name in [*inputs, *outputs]},
            opset_version=opset_version,
            verbose=False,
        )
    return filepath


@contextlib.contextmanager
def _quiet(logger_name: str) -> Iterator[None]:
    logger = logging.getLogger(logger_name)
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def check_onnx(
    filepath: str | Path, network: nn.Module, meta: Mapping, rtol: float = 1e-4, atol: float = 1e-4
) -> float:
    """Run the ONNX model under onnxruntime on fresh random inputs (another batch size) and compare with ``network``.

    Returns:
        The largest absolute difference.

    Raises:
        ExportMismatch: outputs differ beyond ``rtol`` / ``atol``.
    """
    import onnxruntime

    inputs = example_inputs(meta, batch_size=3, seed=1)
    session = onnxruntime.InferenceSession(str(filepath), providers=["CPUExecutionProvider"])
    exported = session.run(None, {name: tensor.numpy() for name, tensor in inputs.items()})[0]
    with torch.no_grad():
        eager = network(*inputs.values()).numpy()
    if exported.shape != eager.shape or not np.allclose(exported, eager, rtol=rtol, atol=atol):
        difference = _difference(exported, eager)
        raise ExportMismatch(f"{filepath}: onnxruntime output differs from the eager network ({difference})")
    return float(np.abs(exported - eager).max())


def _difference(exported: np.ndarray, eager: np.ndarray) -> str:
    if exported.shape != eager.shape:
        return f"shape {list(exported.shape)} vs {list(eager.shape)}"
    return f"max |difference| {np.abs(exported - eager).max():.3g}"


def describe_inputs(meta: Mapping) -> str:
    """``image [batch, 1, 48, 56, 48], series [batch, 116, 96]``: the exported model's inputs."""
    return ", ".join(
        f"{name} [{', '.join(map(str, ['batch', spec['num_channels'], *spec['spatial_shape']]))}]"
        for name, spec in meta["network_data_format"]["inputs"].items()
    )
