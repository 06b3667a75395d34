"""Ignite handlers for the bundles: per-subject predictions and per-epoch training logs, written atomically."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import torch
from ignite.engine import Engine, Events

from pipeline import CLASS_NAMES
from pipeline.io import atomic_write_text


class PredictionWriter:
    """Write one CSV row per evaluated subject: ids, class probabilities, predicted class and (if known) label.

    Args:
        output_dir: folder of the CSV.
        filename: CSV name.
        class_names: class order of the probabilities.
    """

    def __init__(self, output_dir: str | Path, filename: str = "predictions.csv", class_names=CLASS_NAMES) -> None:
        self.path = Path(output_dir) / filename
        self.class_names = list(class_names)
        self.rows: list[dict] = []

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED, self._reset)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._collect)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self._write)

    def _reset(self, engine: Engine) -> None:
        self.rows = []

    def _collect(self, engine: Engine) -> None:
        # MONAI engines decollate: state.batch and state.output are lists with one dict per subject
        for item, output in zip(engine.state.batch, engine.state.output):
            probabilities = torch.as_tensor(output["pred"]).detach().float().cpu().reshape(-1)
            row = {"subject_id": str(item.get("subject_id", "")), "session_id": str(item.get("session_id", ""))}
            row.update({f"prob_{name}": float(p) for name, p in zip(self.class_names, probabilities)})
            row["predicted"] = self.class_names[int(probabilities.argmax())]
            if "label" in item:
                row["diagnosis"] = self.class_names[int(item["label"])]
            self.rows.append(row)

    def _write(self, engine: Engine) -> None:
        atomic_write_text(self.path, pd.DataFrame(self.rows).to_csv(index=False))


class TrainingLog:
    """Append one row per epoch (train loss, learning rate, validation metrics) to a CSV: the learning curve.

    Attach to the trainer; validation metrics are read from the evaluator's state after it ran.

    Args:
        output_dir: folder of the CSV.
        evaluator: the validation evaluator (None: train loss only).
        filename: CSV name.
    """

    def __init__(self, output_dir: str | Path, evaluator: Engine | None = None, filename: str = "training_log.csv"):
        self.path = Path(output_dir) / filename
        self.evaluator = evaluator
        self.rows: list[dict] = []
        self.losses: list[float] = []

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._loss)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self._write)

    def _loss(self, engine: Engine) -> None:
        output = engine.state.output
        item = output[0] if isinstance(output, list) else output
        self.losses.append(float(item["loss"]))

    def _write(self, engine: Engine) -> None:
        row = {"epoch": engine.state.epoch, "train_loss": sum(self.losses) / max(len(self.losses), 1)}
        optimizer = getattr(engine, "optimizer", None)
        if optimizer is not None:
            row["learning_rate"] = optimizer.param_groups[0]["lr"]
        if self.evaluator is not None:
            row.update({f"val_{k}": v for k, v in self.evaluator.state.metrics.items()})
        self.rows.append(row)
        self.losses = []
        atomic_write_text(self.path, pd.DataFrame(self.rows).to_csv(index=False))
