"""What a trained model is: the bundle keys that define its input, recorded beside its weights.

A network is only meaningful on inputs made as in training: the grid and voxel size of the T1, its registration,
the fMRI atlas, length, cleaning and sequence, the class order. Training writes those keys (the bundle's
``model_inputs``) to ``<weights stem>_inputs.json`` beside the weights (``model.pt`` -> ``model_inputs.json``,
each time the best model is saved); ``model.pt`` itself stays the flat state dict that MONAI's ``ckpt_export`` and
``verify_net_in_out`` load. Evaluation, inference and ``neurofusion predict`` read each key from that record
(:func:`trained_input`), so a model trained on a 40 x 48 x 40 grid is predicted on that grid without naming it;
a value given explicitly that differs from the trained one is refused (:func:`check_model_inputs`).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pipeline
from pipeline.engine.refusal import BundleRefusal
from pipeline.io import atomic_write_json

logger = logging.getLogger(__name__)

INPUTS_SUFFIX = "_inputs.json"


class ModelInputError(BundleRefusal, ValueError):
    """A trained model's record is unreadable, or a bundle key contradicts it; the message names the key."""


class NoTrainedModel(BundleRefusal, FileNotFoundError):
    """Evaluation or inference without a trained model file; the message says how to train one."""


def inputs_record(weights: str | Path) -> Path:
    """Where the input keys of ``weights`` are recorded: ``<stem>_inputs.json`` beside it."""
    weights = Path(weights)
    return weights.with_name(weights.stem + INPUTS_SUFFIX)


def plain(value: Any) -> Any:
    """``value`` as JSON holds it (tuples become lists), so a recorded and a configured value compare equal."""
    return json.loads(json.dumps(value, default=str))


def write_model_inputs(weights: str | Path, inputs: Mapping[str, Any]) -> Path:
    """Record the input keys of ``weights`` (atomically) and return the record's path."""
    record = inputs_record(weights)
    payload = {"weights": Path(weights).name, "neurofusion_version": pipeline.__version__, "inputs": plain(inputs)}
    atomic_write_json(record, payload)
    return record


def recorded_inputs(weights: str | Path) -> dict[str, Any] | None:
    """The input keys recorded with ``weights`` (None: no record, e.g. weights written before records existed).

    Raises:
        ModelInputError: a record that is not a JSON object with ``inputs``, naming the file.
    """
    record = inputs_record(weights)
    if not record.is_file():
        return None
    try:
        inputs = json.loads(record.read_text(encoding="utf8"))["inputs"]
    except (ValueError, KeyError, TypeError) as err:
        raise ModelInputError(f"{record}: not a record of a model's inputs ({type(err).__name__}: {err})") from None
    if not isinstance(inputs, dict):
        raise ModelInputError(f"{record}: 'inputs' must be a mapping of bundle keys, got {type(inputs).__name__}")
    return inputs


def trained_input(weights: str | Path, key: str, default: Any) -> Any:
    """The value of bundle key ``key`` that ``weights`` was trained with, or ``default`` when nothing is recorded
    (no trained model yet, or weights without a record).

    Args:
        weights: the model file (``<ckpt_dir>/model.pt``).
        key: a bundle key of ``model_inputs`` (``mri_spatial_size``).
        default: the config's value.
    """
    recorded = recorded_inputs(weights)
    return recorded[key] if recorded and key in recorded else default


def check_model_inputs(weights: str | Path, inputs: Mapping[str, Any]) -> dict[str, Any] | None:
    """Refuse a bundle key whose value differs from the one ``weights`` was trained with; return the record.

    Args:
        weights: the model file.
        inputs: the bundle's ``model_inputs`` as configured (recorded values unless a key was set explicitly).

    Raises:
        ModelInputError: naming the key, the trained value and the given one.
    """
    recorded = recorded_inputs(weights)
    for key, value in (recorded or {}).items():
        if key in inputs and plain(inputs[key]) != value:
            raise ModelInputError(
                f"bundle key '{key}' is {plain(inputs[key])!r} but {weights} was trained with {value!r} "
                f"({inputs_record(weights).name}); leave the key out to use the trained value"
            )
    return recorded


def check_trained_model(weights: str | Path, inputs: Mapping[str, Any]) -> None:
    """Before evaluation or inference: a trained model exists, and the configured input keys agree with it.

    Raises:
        NoTrainedModel: no model file, with how to train one.
        ModelInputError: a key contradicting the record (:func:`check_model_inputs`).
    """
    weights = Path(weights)
    if not weights.is_file():
        raise NoTrainedModel(
            f"{weights}: no trained model; train one first (python -m monai.bundle run --config_file "
            f"configs/train.yaml --ckpt_dir {weights.parent}) or set ckpt_dir to the folder of a trained model.pt"
        )
    if check_model_inputs(weights, inputs) is None:
        logger.warning(
            "%s: no record of the keys it was trained with (%s): using the config's values",
            weights,
            inputs_record(weights).name,
        )
