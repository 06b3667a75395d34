"""Glue between the bundles' YAML and MONAI's engines: metrics, handlers, checkpoints, distributed set-up,
training options, bundle location."""

from __future__ import annotations

import os
from pathlib import Path

from pipeline.engine.allocator import retain_freed_memory
from pipeline.engine.checkpoint import (
    EpochSeed,
    KeyMetricCheckpointSaver,
    ResumeCheckpointLoader,
    ResumeCheckpointSaver,
    ResumeMismatch,
    check_resume,
    epoch_seed,
    run_identity,
)
from pipeline.engine.distributed import (
    destroy_distributed,
    distributed_network,
    init_distributed,
    is_main_process,
    local_device,
)
from pipeline.engine.handlers import AtomicMetricsSaver, PredictionWriter, TrainingLog
from pipeline.engine.keys import check_bundle_keys
from pipeline.engine.metrics import METRICS, ClassificationMetric, classification_metrics, stack_pred_label
from pipeline.engine.model_inputs import (
    ModelInputError,
    NoTrainedModel,
    check_model_inputs,
    check_trained_model,
    recorded_inputs,
    trained_input,
)
from pipeline.engine.refusal import BundleRefusal, install_one_line_refusals
from pipeline.engine.training import BatchNormRecalibration, ValidationEarlyStop, class_weights, installed

REPO_BUNDLES = Path(__file__).resolve().parents[2] / "bundles"
install_one_line_refusals()


def bundle_root(name: str) -> str:
    """Folder of bundle ``name``: the working directory when it is that bundle, else ``bundles/<name>`` of this
    repository. Override with ``--bundle_root`` for a bundle kept elsewhere."""
    cwd = Path.cwd()
    if cwd.name == name and (cwd / "configs" / "metadata.json").is_file():
        return str(cwd)
    return os.fspath(REPO_BUNDLES / name)


__all__ = [
    "flag",
    "METRICS",
    "AtomicMetricsSaver",
    "BatchNormRecalibration",
    "BundleRefusal",
    "ClassificationMetric",
    "EpochSeed",
    "KeyMetricCheckpointSaver",
    "ModelInputError",
    "NoTrainedModel",
    "PredictionWriter",
    "ResumeCheckpointLoader",
    "ResumeCheckpointSaver",
    "ResumeMismatch",
    "TrainingLog",
    "ValidationEarlyStop",
    "bundle_root",
    "check_bundle_keys",
    "check_model_inputs",
    "check_resume",
    "check_trained_model",
    "class_weights",
    "classification_metrics",
    "destroy_distributed",
    "distributed_network",
    "epoch_seed",
    "init_distributed",
    "installed",
    "is_main_process",
    "local_device",
    "recorded_inputs",
    "retain_freed_memory",
    "run_identity",
    "stack_pred_label",
    "trained_input",
]


_TRUE, _FALSE = {"true", "yes", "on", "1"}, {"false", "no", "off", "0", "none", "null", ""}


def flag(value, name: str) -> bool:
    """A bundle switch as a bool. ``python -m monai.bundle run --augment false`` passes the *string* "false",
    which Python treats as true; this reads it as the user meant and refuses anything that is not a yes/no.

    Args:
        value: the key's value (bool, 0/1, or a string such as "true"/"false").
        name: the key, for the error message.
    """
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    text = str(value).strip().lower()
    if text in _TRUE | _FALSE:
        return text in _TRUE
    raise ValueError(f"bundle key '{name}' must be true or false, got {value!r}")
