"""Checkpoints for resuming training: the whole training state in one file, and a best-model record that survives.

The best-metric model stays MONAI's flat ``model.pt`` (what evaluation, inference and ``ckpt_export`` load); the
resume checkpoint is a separate file holding the network, optimizer, scheduler, the trainer's counters and the
best-model saver's record, so a resumed run neither restarts at epoch 1 nor overwrites a better ``model.pt``.
Both files are replaced atomically, so a run killed at any moment leaves the previous complete file. The random
draws of each epoch (shuffle, augmentation, dropout) are seeded from the run's seed and the epoch number
(:class:`EpochSeed`), so a run killed and resumed ends with the same weights and metrics as one left alone.
A config cannot name the trainer inside the trainer's own handlers (a reference cycle), so these handlers add
the engine they are attached to themselves.

Resume continues only *the same run*: the resume checkpoint records what the run is (:func:`run_identity`: the
manifest's content hash, the subjects of its train and val rows, and the bundle keys that change the model or its
training), and a checkpoint of another run (another fold, learning rate or grid, in a reused ``ckpt_dir``) is refused
in one line naming what differs (:func:`check_resume`) instead of being continued. ``epochs`` is not part of it:
a finished run given more epochs trains on.
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
from pipeline.engine.model_inputs import plain, write_model_inputs
from pipeline.engine.refusal import BundleRefusal
from pipeline.io import atomic_path

#: the key of the resume checkpoint that records which run it belongs to
RUN = "run"
_FRESH = "to start afresh give --resume false (the checkpoint is then replaced) or another ckpt_dir"


class ResumeMismatch(BundleRefusal, ValueError):
    """The resume checkpoint belongs to another run (or does not say which); the message names what differs."""


def run_identity(manifest: str | Path, **keys: Mapping[str, Any]) -> dict[str, Any]:
    """What makes a resumed run the same run: the manifest's content and its train and val rows, and bundle keys.

    Args:
        manifest: the manifest CSV.
        keys: groups of bundle keys and their values (the bundle's ``model_inputs`` and ``run_keys``).
    """
    from pipeline.data.manifest import manifest_sha256, read_manifest

    frame = read_manifest(manifest)
    names = [f"{s}_{t}" if t else s for s, t in zip(frame["subject_id"], frame.get("session_id", [""] * len(frame)))]
    splits = frame["split"] if "split" in frame.columns else [""] * len(frame)
    identity: dict[str, Any] = {}
    for part in ("train", "val"):
        identity[f"{part}_rows"] = sorted(name for name, split in zip(names, splits) if split == part)
    for group in keys.values():
        identity.update(plain(dict(group)))
    identity["manifest_sha256"] = manifest_sha256(manifest)  # last: any other change to the manifest
    return identity


def check_resume(path: str | Path, run: Mapping[str, Any], resume: bool = True) -> None:
    """Refuse to resume from ``path`` when the run it records is not this one (nothing is read without ``resume``
    or without a checkpoint, so a workflow that never resumes needs no manifest here).

    Args:
        path: the resume checkpoint.
        run: the arguments of :func:`run_identity` (the bundle's ``same_run``).
        resume: the bundle key ``resume``.

    Raises:
        ResumeMismatch: naming the first key that differs and how to start afresh.
    """
    path = Path(path)
    if not resume or not path.is_file():
        return
    recorded = torch.load(path, map_location="cpu", weights_only=True, mmap=True).get(RUN)
    if recorded is None:
        raise ResumeMismatch(
            f"{path}: records no run (written by an older neurofusion), so it may be another's; {_FRESH}"
        )
    identity = run_identity(**run)
    for key in dict.fromkeys([*identity, *recorded]):
        then, now = recorded.get(key), identity.get(key)
        if then != now:
            raise ResumeMismatch(f"{path}: the training state of another run: {_difference(key, then, now)}; {_FRESH}")


def _difference(key: str, then: Any, now: Any) -> str:
    if key.endswith("_rows") and isinstance(then, list) and isinstance(now, list):
        gone, new = sorted(set(then) - set(now)), sorted(set(now) - set(then))
        parts = [f"{len(gone)} only in the checkpoint (e.g. {gone[0]})" if gone else ""]
        parts.append(f"{len(new)} only in this run (e.g. {new[0]})" if new else "")
        return f"{key} differ: " + ", ".join(filter(None, parts))
    if key == "manifest_sha256":
        return f"the manifest's content differs (sha256 {str(then)[:12]}... there, {str(now)[:12]}... now)"
    return f"bundle key '{key}' was {then!r}, is {now!r} now"


class KeyMetricCheckpointSaver(CheckpointSaver):
    """MONAI's ``CheckpointSaver`` whose record of the best key-metric score is part of the training state.

    ``state_dict()`` / ``load_state_dict()`` (MONAI has the latter) carry the scores already saved, so after a
    resume a model only replaces ``key_metric_filename`` when it beats the best one before the interruption.
    The best model is written atomically: MONAI's saver deletes the previous ``key_metric_filename`` and then
    writes the new one in place, so a run killed in between would leave no best model, or half of one.
    With ``model_inputs`` (the bundle keys that define the network's input) the best model's record of them is
    written beside it each time it is saved (:func:`pipeline.engine.model_inputs.write_model_inputs`).

    Args:
        args: those of :class:`monai.handlers.CheckpointSaver`.
        model_inputs: bundle key -> value, recorded as ``<key_metric_filename stem>_inputs.json``.
        kwargs: those of :class:`monai.handlers.CheckpointSaver`.
    """

    def __init__(self, *args: Any, model_inputs: Mapping[str, Any] | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self._key_metric_checkpoint is not None:
            disk = self._key_metric_checkpoint.save_handler
            self._key_metric_checkpoint.save_handler = _AtomicSaver(Path(disk.dirname), disk.filename, model_inputs)

    def state_dict(self) -> dict:
        # the ignite Checkpoint behind save_key_metric holds the (score, filename) record
        return self._key_metric_checkpoint.state_dict() if self._key_metric_checkpoint is not None else {}


class ResumeCheckpointSaver:
    """Save the training state after every epoch to one file, replaced atomically, on the main process only.

    The file holds ``save_dict``'s ``state_dict()`` s plus the attached trainer's (``trainer``: epoch, iteration),
    with data-parallel wrappers removed so the network loads into the single-process model, and ``run``: which
    run it is (:func:`run_identity`), checked before a resume (:func:`check_resume`).

    Args:
        path: the checkpoint file.
        save_dict: objects with ``state_dict()`` (network, optimizer, scheduler, handlers).
        run: the arguments of :func:`run_identity` (the bundle's ``same_run``).
    """

    def __init__(self, path: str | Path, save_dict: Mapping[str, Any], run: Mapping[str, Any] | None = None) -> None:
        self.path = Path(path)
        self.save_dict = dict(save_dict)
        self.run = run
        self.identity: dict[str, Any] | None = None

    def attach(self, engine: Engine) -> None:
        if self.run is not None:
            self.identity = run_identity(**self.run)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self._save, {**self.save_dict, "trainer": engine})

    def _save(self, engine: Engine, objects: Mapping[str, Any]) -> None:
        if not is_main_process():
            return
        state = {name: _unwrap(obj).state_dict() for name, obj in objects.items()}
        if self.identity is not None:
            state[RUN] = self.identity
        with atomic_path(self.path) as tmp:
            torch.save(state, tmp)


class ResumeCheckpointLoader(CheckpointLoader):
    """MONAI's ``CheckpointLoader`` that also restores the trainer it is attached to, so training continues
    from the checkpoint's epoch (up to the configured ``max_epochs``; a finished run does nothing).

    With ``run`` (the arguments of :func:`run_identity`) a checkpoint of another run is refused before anything is
    restored (:func:`check_resume`).

    Args:
        args: those of :class:`monai.handlers.CheckpointLoader`; ``load_dict`` names everything but the trainer.
        run: the bundle's ``same_run``.
        kwargs: those of :class:`monai.handlers.CheckpointLoader`.
    """

    def __init__(self, *args: Any, run: Mapping[str, Any] | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.run = run

    def attach(self, engine: Engine) -> None:
        self.load_dict = {**self.load_dict, "trainer": engine}
        super().attach(engine)

    def __call__(self, engine: Engine) -> None:
        if self.run is not None:
            check_resume(self.load_path, self.run)
        super().__call__(engine)


class _AtomicSaver(BaseSaveHandler):
    """Save a checkpoint to ``dirname`` (under a fixed ``filename`` when given) by temporary file + rename, with the
    record of its ``inputs`` when given; a "remove" of the file the next save replaces is left undone, so the
    previous checkpoint stays until then."""

    def __init__(self, dirname: Path, filename: str | None = None, inputs: Mapping[str, Any] | None = None) -> None:
        self.dirname = dirname
        self.filename = filename
        self.inputs = inputs

    def __call__(self, checkpoint: Mapping, filename: str, metadata: Mapping | None = None) -> None:
        if idist.get_rank() != 0:
            return
        path = self.dirname / (self.filename or filename)
        if self.inputs is not None:  # first: the weights are never newer than the record of their inputs
            write_model_inputs(path, self.inputs)
        with atomic_path(path) as tmp:
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
