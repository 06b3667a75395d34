"""Training options of the bundles: class-weighted loss, early stopping on validation, optional packages."""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence

import torch
from ignite.engine import Engine
from monai.handlers import EarlyStopHandler

from pipeline import CLASS_NAMES


def class_weights(
    spec: str | Sequence[float] | None,
    data: Sequence[dict],
    class_names: Sequence[str] = CLASS_NAMES,
    device: torch.device | str = "cpu",
) -> torch.Tensor | None:
    """Per-class loss weights for imbalanced cohorts.

    ``"balanced"`` weighs class ``c`` by ``n / (n_classes * n_c)`` over the training rows (scikit-learn's
    ``class_weight="balanced"``), so every class contributes equally to the loss.

    Args:
        spec: None (unweighted), ``"balanced"``, or one weight per class.
        data: the training data list (items with ``label``).
        class_names: the classes, in label order.
        device: device of the returned tensor.

    Raises:
        ValueError: an unknown spec, a wrong number of weights, or a class without training rows.
    """
    if spec is None:
        return None
    num_classes = len(class_names)
    if isinstance(spec, str):
        if spec != "balanced":
            raise ValueError(f"class_weights must be null, 'balanced' or {num_classes} numbers, got {spec!r}")
        counts = torch.bincount(torch.as_tensor([int(item["label"]) for item in data]), minlength=num_classes)
        if (counts == 0).any():
            missing = [class_names[c] for c in torch.nonzero(counts == 0).flatten().tolist()]
            raise ValueError(f"class_weights='balanced': no training rows of class {', '.join(missing)}")
        weights = counts.sum() / (num_classes * counts.double())
    else:
        weights = torch.as_tensor(spec, dtype=torch.float64)
        if weights.shape != (num_classes,):
            raise ValueError(f"class_weights needs {num_classes} numbers, got {list(spec)}")
    return weights.float().to(device)


class ValidationEarlyStop:
    """Stop training when the validation key metric has not improved for ``patience`` validations.

    Attach to the trainer; it watches ``evaluator`` (MONAI's ``EarlyStopHandler`` on the evaluator's key metric),
    so it follows ``val_interval`` and acts after the best-model checkpoint of that validation is saved. The metric
    is the same on every process of a distributed run, so all processes stop together.

    Args:
        evaluator: the validation evaluator.
        patience: validations without improvement before stopping.
        min_delta: smallest increase that counts as an improvement.
    """

    def __init__(self, evaluator: Engine, patience: int, min_delta: float = 0.0) -> None:
        self.evaluator = evaluator
        self.patience = patience
        self.min_delta = min_delta

    def attach(self, engine: Engine) -> None:
        EarlyStopHandler(self.patience, _key_metric, trainer=engine, min_delta=self.min_delta).attach(self.evaluator)


def _key_metric(evaluator: Engine) -> float:
    return float(evaluator.state.metrics[evaluator.state.key_metric_name])


def installed(package: str) -> bool:
    """Whether an optional package (e.g. ``tensorboard``) can be imported."""
    return importlib.util.find_spec(package) is not None
