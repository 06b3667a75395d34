"""Glue between the bundles' YAML and MONAI's engines: metrics, handlers, bundle location."""

from __future__ import annotations

import os
from pathlib import Path

from pipeline.engine.handlers import PredictionWriter, TrainingLog
from pipeline.engine.metrics import METRICS, ClassificationMetric, classification_metrics, stack_pred_label

REPO_BUNDLES = Path(__file__).resolve().parents[2] / "bundles"


def bundle_root(name: str) -> str:
    """Folder of bundle ``name``: the working directory when it is that bundle, else ``bundles/<name>`` of this
    repository. Override with ``--bundle_root`` for a bundle kept elsewhere."""
    cwd = Path.cwd()
    if cwd.name == name and (cwd / "configs" / "metadata.json").is_file():
        return str(cwd)
    return os.fspath(REPO_BUNDLES / name)


__all__ = [
    "METRICS",
    "ClassificationMetric",
    "PredictionWriter",
    "TrainingLog",
    "bundle_root",
    "classification_metrics",
    "stack_pred_label",
]
