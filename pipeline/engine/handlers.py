"""Ignite handlers for the bundles: per-subject predictions, per-epoch training logs and metric reports, written
atomically."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import ignite.distributed as idist
import pandas as pd
import torch
from ignite.engine import Engine, Events
from monai.handlers import MetricsSaver

from pipeline import CLASS_NAMES
from pipeline.engine.distributed import is_main_process
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

    Attach to the trainer after the validation handler; validation metrics are read from the evaluator's state.
    A resumed run keeps the rows of the epochs before it. In a distributed run the train loss is averaged over
    every process and only the main process writes. With ``tensorboard_dir`` the same values go to TensorBoard
    (one scalar per column, step = epoch); the event file is closed when training completes.

    Args:
        output_dir: folder of the CSV.
        evaluator: the validation evaluator (None: train loss only).
        filename: CSV name.
        tensorboard_dir: folder of TensorBoard event files (None: no TensorBoard).
    """

    def __init__(
        self,
        output_dir: str | Path,
        evaluator: Engine | None = None,
        filename: str = "training_log.csv",
        tensorboard_dir: str | Path | None = None,
    ) -> None:
        self.path = Path(output_dir) / filename
        self.evaluator = evaluator
        self.tensorboard_dir = tensorboard_dir
        self.rows: list[dict] = []
        self.losses: list[float] = []
        self._writer = None

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._loss)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self._write)
        engine.add_event_handler(Events.COMPLETED, self._close)

    def _loss(self, engine: Engine) -> None:
        output = engine.state.output
        item = output[0] if isinstance(output, list) else output
        self.losses.append(float(item["loss"]))

    def _write(self, engine: Engine) -> None:
        total, count = idist.all_reduce(torch.tensor([sum(self.losses), len(self.losses)], dtype=torch.float64))
        self.losses = []
        if not is_main_process():
            return
        row = {"epoch": engine.state.epoch, "train_loss": float(total / max(count, 1))}
        optimizer = getattr(engine, "optimizer", None)
        if optimizer is not None:
            row["learning_rate"] = optimizer.param_groups[0]["lr"]
        if self.evaluator is not None:
            row.update({f"val_{k}": v for k, v in self.evaluator.state.metrics.items()})
        if not self.rows:
            self.rows = self._earlier_rows(engine.state.epoch)
        self.rows.append(row)
        atomic_write_text(self.path, pd.DataFrame(self.rows).to_csv(index=False))
        self._tensorboard(row)

    def _earlier_rows(self, epoch: int) -> list[dict]:
        """Rows of the epochs before ``epoch`` already in the CSV (a resumed run); none for a run from epoch 1."""
        if epoch == 1 or not self.path.is_file():
            return []
        earlier = pd.read_csv(self.path)
        return earlier[earlier["epoch"] < epoch].to_dict("records")

    def _tensorboard(self, row: dict) -> None:
        if self.tensorboard_dir is None:
            return
        if self._writer is None:
            from torch.utils.tensorboard import SummaryWriter

            self._writer = SummaryWriter(log_dir=str(self.tensorboard_dir))
        for key, value in row.items():
            if key != "epoch":
                self._writer.add_scalar(key, value, row["epoch"])
        self._writer.flush()

    def _close(self, engine: Engine) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None


class AtomicMetricsSaver(MetricsSaver):
    """MONAI's ``MetricsSaver`` whose reports (``metrics.csv``, and the per-subject and summary files it is asked
    for) each appear whole: they are written into a temporary folder inside ``save_dir`` and then renamed into place,
    so a run killed while writing leaves the previous reports. Arguments are those of
    :class:`monai.handlers.MetricsSaver`.
    """

    def __call__(self, engine: Engine) -> None:
        final = Path(self.save_dir)
        final.mkdir(parents=True, exist_ok=True)
        staging = tempfile.mkdtemp(prefix=".metrics.", dir=final)
        self.save_dir = staging
        try:
            super().__call__(engine)
            for name in os.listdir(staging):
                os.replace(os.path.join(staging, name), final / name)
        finally:
            self.save_dir = str(final)
            shutil.rmtree(staging, ignore_errors=True)
