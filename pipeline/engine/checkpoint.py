"""Checkpoints for resuming training: the whole training state in one file, and a best-model record that survives.

The best-metric model stays MONAI's flat ``model.pt`` (what evaluation, inference and ``ckpt_export`` load); the
resume checkpoint is a separate file holding the network, optimizer, scheduler, the trainer's counters and the
best-model saver's record, so a resumed run neither restarts at epoch 1 nor overwrites a better ``model.pt``.
A config cannot name the trainer inside the trainer's own handlers (a reference cycle), so these handlers add
the engine they are attached to themselves.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from ignite.engine import Engine, Events
from monai.handlers import CheckpointLoader, CheckpointSaver
from torch import nn

from pipeline.engine.distributed import is_main_process
from pipeline.io import atomic_path


class KeyMetricCheckpointSaver(CheckpointSaver):
    """MONAI's ``CheckpointSaver`` whose record of the best key-metric score is part of the training state.

    ``state_dict()`` / ``load_state_dict()`` (MONAI has the latter) carry the scores already saved, so after a
    resume a model only replaces ``key_metric_filename`` when it beats the best one before the interruption.
    Arguments are those of :class:`monai.handlers.CheckpointSaver`.
    """

    def state_dict(self) -> dict:
        # the ignite Checkpoint behind save_key_metric holds the (score, filename) record
        return self._key_metric_checkpoint.state_dict() if self._key_metric_checkpoint is not None else {}


class ResumeCheckpointSaver:
    """Save the training state after every epoch to one file, replaced atomically, on the main process only.

    The file holds ``save_dict``'s ``state_dict()`` s plus the attached trainer's (``trainer``: epoch, iteration),
    with data-parallel wrappers removed so the network loads into the single-process model.

    Args:
        path: the checkpoint file.
        save_dict: objects with ``state_dict()`` (network, optimizer, scheduler, handlers).
    """

    def __init__(self, path: str | Path, save_dict: Mapping[str, Any]) -> None:
        self.path = Path(path)
        self.save_dict = dict(save_dict)

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_COMPLETED, self._save, {**self.save_dict, "trainer": engine})

    def _save(self, engine: Engine, objects: Mapping[str, Any]) -> None:
        if not is_main_process():
            return
        state = {name: _unwrap(obj).state_dict() for name, obj in objects.items()}
        with atomic_path(self.path) as tmp:
            torch.save(state, tmp)


class ResumeCheckpointLoader(CheckpointLoader):
    """MONAI's ``CheckpointLoader`` that also restores the trainer it is attached to, so training continues
    from the checkpoint's epoch (up to the configured ``max_epochs``; a finished run does nothing).

    Arguments are those of :class:`monai.handlers.CheckpointLoader`; ``load_dict`` names everything but the
    trainer.
    """

    def attach(self, engine: Engine) -> None:
        self.load_dict = {**self.load_dict, "trainer": engine}
        super().attach(engine)


def _unwrap(obj: Any) -> Any:
    return obj.module if isinstance(obj, (nn.DataParallel, nn.parallel.DistributedDataParallel)) else obj
