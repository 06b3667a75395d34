"""Atomic writes: all or nothing, with the permissions a plain write would give."""

from __future__ import annotations

import os

import pytest

from pipeline.io import atomic_path, atomic_write_text


def test_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "results.csv"
    target.write_text("old\n")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("killed")
    assert target.read_text() == "old\n"
    assert [p.name for p in tmp_path.iterdir()] == ["results.csv"]


def test_written_file_has_umask_permissions(tmp_path):
    old = os.umask(0o022)
    try:
        atomic_write_text(tmp_path / "report.html", "<html></html>")
    finally:
        os.umask(old)
    assert (tmp_path / "report.html").stat().st_mode & 0o777 == 0o644


def test_best_model_is_replaced_whole_or_not_at_all(tmp_path, monkeypatch):
    # MONAI's saver deletes the old best model before writing the new one; a kill in between left none
    import torch
    from ignite.engine import Engine, Events

    from pipeline.engine import KeyMetricCheckpointSaver

    network = torch.nn.Linear(2, 2)
    engine = Engine(lambda engine, batch: None)
    scores = iter([0.5, 0.9])
    engine.add_event_handler(Events.EPOCH_COMPLETED, lambda e: e.state.metrics.update(score=next(scores)))
    KeyMetricCheckpointSaver(
        save_dir=str(tmp_path),
        save_dict={"model": network},
        save_key_metric=True,
        key_metric_name="score",
        key_metric_filename="model.pt",
    ).attach(engine)
    engine.run([0], max_epochs=1)
    saved = torch.load(tmp_path / "model.pt", weights_only=True)

    def killed(*args, **kwargs):
        raise RuntimeError("killed while saving")

    with torch.no_grad():
        network.weight.add_(1.0)
    monkeypatch.setattr(torch, "save", killed)
    with pytest.raises(RuntimeError, match="killed while saving"):
        engine.run([0], max_epochs=2)  # a better score: the model is replaced
    monkeypatch.undo()
    assert torch.equal(torch.load(tmp_path / "model.pt", weights_only=True)["weight"], saved["weight"])
    assert [p.name for p in tmp_path.iterdir()] == ["model.pt"]


class _RunsCode:
    """Unpickling this runs code (touches a file): what a malicious checkpoint would do."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_resume_checkpoint_that_would_run_code_is_refused(tmp_path):
    import pickle

    import torch
    from ignite.engine import Engine

    from pipeline.engine import ResumeCheckpointLoader

    marker = tmp_path / "code_ran"
    torch.save({"model": {"weight": _RunsCode(marker)}}, tmp_path / "checkpoint.pt")
    engine = Engine(lambda engine, batch: None)
    ResumeCheckpointLoader(
        load_path=str(tmp_path / "checkpoint.pt"), load_dict={"model": torch.nn.Linear(2, 2)}
    ).attach(engine)
    with pytest.raises(pickle.UnpicklingError, match="Weights only load failed"):
        engine.run([0], max_epochs=1)
    assert not marker.exists()
