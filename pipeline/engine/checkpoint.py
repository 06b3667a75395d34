"""Checkpoints for resuming training: the whole training state in one file, and a best-model record that survives.

The best-metric model stays MONAI's flat ``model.pt`` (what evaluation, inference and ``ckpt_export`` load); the
resume checkpoint is a separate file holding the network, optimizer, scheduler, the trainer's counters and the
best-model saver's record, so a resumed run neither restarts at epoch 1 nor overwrites a better ``model.pt``.
Both files are replaced atomically, so a run killed at any moment leaves the previous complete file. The random
draws of each epoch (shuffle, augmentation, dropout) are seeded from the run's seed and the epoch number
(:class:`EpochSeed`), so a run killed and resumed ends with the same weights and metrics as one left alone.
A config cannot name the trainer inside the trainer's own handlers (a reference cycle), so these handlers add
the engine they are attached to themselves.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import ignite.distributed as idist
import torch
from ignite.engine import Engine, Events
from ignite.handlers.checkpoint import BaseSaveHandler
from monai.data.utils import set_rnd
from monai.handlers import CheckpointLoader, CheckpointSaver
from monai.utils import MAX_SEED, set_determinism
from torch import nn

from pipeline.engine.distributed import is_main_process
from pipeline.io import atomic_path


class KeyMetricCheckpointSaver(CheckpointSaver):
    """MONAI's ``CheckpointSaver`` whose record of the best key-metric score is part of the training state.

    ``state_dict()`` / ``load_state_dict()`` (MONAI has the latter) carry the scores already saved, so after a
    resume a model only replaces ``key_metric_filename`` when it beats the best one before the interruption.
    The best model is written atomically: MONAI's saver deletes the previous ``key_metric_filename`` and then
    writes the new one in place, so a run killed in between would leave no best model, or half of one.
    Arguments are those of :class:`monai.handlers.CheckpointSaver`.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self._key_metric_checkpoint is not None:
            disk = self._key_metric_checkpoint.save_handler
            self._key_metric_checkpoint.save_handler = _AtomicSaver(Path(disk.dirname), disk.filename)

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


class _AtomicSaver(BaseSaveHandler):
    """Save a checkpoint to ``dirname`` (under a fixed ``filename`` when given) by temporary file + rename; a
    "remove" of the file the next save replaces is left undone, so the previous checkpoint stays until then."""

    def __init__(self, dirname: Path, filename: str | None = None) -> None:
        self.dirname = dirname
        self.filename = filename

    def __call__(self, checkpoint: Mapping, filename: str, metadata: Mapping | None = None) -> None:
        if idist.get_rank() != 0:
            return
        with atomic_path(self.dirname / (self.filename or filename)) as tmp:
            torch.save(checkpoint, tmp)

    def remove(self, filename: str) -> None:
        if self.filename is None and idist.get_rank() == 0:
            (self.dirname / filename).unlink(missing_ok=True)


class EpochSeed:
    """Seed every random draw of a training epoch from the run's seed and the epoch number, when the epoch starts.

    The shuffle of the training data, the augmentation draws (the dataset's random transforms) and the network's
    own randomness (dropout, modality dropout) then depend only on (``seed``, epoch, process rank): a run resumed
    from the checkpoint of epoch ``e`` draws for epoch ``e + 1`` exactly what an uninterrupted run draws, so both
    end with the same weights and metrics. (With ``num_workers > 0`` the worker processes are seeded when the data
    loader's iterator is made, which for the first epoch after a resume happens before this handler runs: the
    draws of that one epoch then differ.)

    Args:
        seed: the run's seed (the bundle key ``seed``).
    """

    def __init__(self, seed: int) -> None:
        self.seed = int(seed)

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED, self)

    def __call__(self, engine: Engine) -> None:
        seed = epoch_seed(self.seed, engine.state.epoch, idist.get_rank())
        set_determinism(seed=seed)
        loader = getattr(engine, "data_loader", None)
        if getattr(loader, "dataset", None) is not None:
            set_rnd(loader.dataset, seed)


def epoch_seed(seed: int, epoch: int, rank: int = 0) -> int:
    """The seed of one epoch of one process: a fixed function of the run's seed, the epoch and the rank."""
    return (int(seed) * 1_000_003 + int(epoch) * 10_007 + int(rank)) % MAX_SEED


def _unwrap(obj: Any) -> Any:
    return obj.module if isinstance(obj, (nn.DataParallel, nn.parallel.DistributedDataParallel)) else obj
