"""Training options of the bundles: class-weighted loss, early stopping on validation, optional packages."""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence

import torch
from ignite.engine import Engine, Events
from monai.handlers import EarlyStopHandler
from torch import nn

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


class BatchNormRecalibration:
    """Recompute the batch-norm running statistics of the trained network before every validation.

    In training mode batch norm divides by each batch's statistics; evaluation uses running averages that trail
    the weights by several iterations. With the small batches of 3D volumes the two differ enough that a network
    whose validation AUC is already high answers one class for every subject (its logits shifted), and the best
    checkpoint is picked among such jumps. Before each validation this handler resets the running statistics and
    re-estimates them as plain averages (momentum ``None``) over ``max_batches`` training batches, forward only,
    with the current weights ("precise BN", Wu & Johnson 2021). Batch-norm layers whose weights are frozen
    (a frozen pretrained encoder) keep their statistics. A network without batch norm is left alone.

    Attach to the trainer; the trainer's own data loader, ``prepare_batch`` and inferer feed the pass, so the
    statistics are those of the training partition (augmented when training is).

    Args:
        evaluator: the validation evaluator.
        max_batches: training batches per re-estimate (None: the whole training partition).
    """

    def __init__(self, evaluator: Engine, max_batches: int | None = None) -> None:
        self.evaluator = evaluator
        self.max_batches = max_batches

    def attach(self, engine: Engine) -> None:
        self.evaluator.add_event_handler(Events.STARTED, lambda _: self.recalibrate(engine))

    def recalibrate(self, trainer: Engine) -> None:
        """Re-estimate the running statistics of ``trainer.network``'s trainable batch-norm layers."""
        network = trainer.network
        norms = [
            m
            for m in network.modules()
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats and _trainable(m)
        ]
        if not norms:
            return
        momenta = [m.momentum for m in norms]
        for norm in norms:
            norm.reset_running_stats()
            norm.momentum = None  # cumulative average over the pass
        was_training = network.training
        network.train()
        with torch.no_grad():
            for index, batch in enumerate(trainer.data_loader):
                if self.max_batches is not None and index >= self.max_batches:
                    break
                prepared = trainer.prepare_batch(batch, trainer.state.device, trainer.non_blocking, **trainer.to_kwargs)
                args, kwargs = (prepared[2], prepared[3]) if len(prepared) == 4 else ((), {})
                trainer.inferer(prepared[0], network, *args, **kwargs)
        for norm, momentum in zip(norms, momenta):
            norm.momentum = momentum
        network.train(was_training)


def _trainable(module: nn.Module) -> bool:
    return any(p.requires_grad for p in module.parameters(recurse=False))


def installed(package: str) -> bool:
    """Whether an optional package (e.g. ``tensorboard``) can be imported."""
    return importlib.util.find_spec(package) is not None
