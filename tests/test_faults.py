"""Killed runs resume and the same seed gives the same result: a bundle training killed with SIGKILL in the middle
of an epoch, and a study killed between fold jobs, each resumed and compared with a run left alone. The study runs
as the demo does (``neurofusion experiment``, report included) with network access disabled."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch

from pipeline.study.runner import JOB_COLUMNS
from tests.conftest import REPO, TINY_OVERRIDES, cli_overrides

pytestmark = pytest.mark.slow

FMRI_TRAIN = REPO / "bundles" / "fmri_lstm" / "configs" / "train.yaml"
METRICS = ["accuracy", "balanced_accuracy", "macro_f1", "auc_ovr"]

NO_NETWORK = '''"""Loaded at start-up (sitecustomize): any internet connection or name lookup is refused and logged."""
import os
import socket

_LOG = os.environ["NETWORK_ATTEMPTS_LOG"]
_connect, _connect_ex = socket.socket.connect, socket.socket.connect_ex


def _refuse(what):
    with open(_LOG, "a") as log:
        log.write(repr(what) + "\\n")
    raise OSError(f"network access is disabled in this test: {what!r}")


def _guard(original):
    def guarded(self, address):
        if self.family in (socket.AF_INET, socket.AF_INET6):
            _refuse(address)
        return original(self, address)

    return guarded


socket.socket.connect = _guard(_connect)
socket.socket.connect_ex = _guard(_connect_ex)
socket.getaddrinfo = lambda *args, **kwargs: _refuse(args[:2])
'''


def offline_env(folder: Path) -> dict[str, str]:
    """Environment of a subprocess whose sockets cannot reach any network (attempts logged in ``folder``)."""
    site = folder / "offline"
    site.mkdir(exist_ok=True)
    (site / "sitecustomize.py").write_text(NO_NETWORK)
    path = os.pathsep.join(p for p in (str(site), str(REPO), os.environ.get("PYTHONPATH", "")) if p)
    return {**os.environ, "PYTHONPATH": path, "PYTHONWARNINGS": "ignore", "NETWORK_ATTEMPTS_LOG": str(site / "log")}


def start(args: list[str], env: dict[str, str] | None = None) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, *args],
        cwd=REPO,
        env=env or {**os.environ, "PYTHONWARNINGS": "ignore"},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def finish(process: subprocess.Popen, timeout: float = 300) -> str:
    output, _ = process.communicate(timeout=timeout)
    assert process.returncode == 0, output[-3000:]
    return output


def kill_when(process: subprocess.Popen, ready, timeout: float = 300) -> None:
    """SIGKILL ``process`` as soon as ``ready()`` is true (it must not have finished by then)."""
    deadline = time.monotonic() + timeout
    while not ready():
        assert process.poll() is None, f"finished before it could be killed:\n{process.communicate()[0][-3000:]}"
        assert time.monotonic() < deadline, "timed out waiting for the moment to kill"
        time.sleep(0.02)
    os.kill(process.pid, signal.SIGKILL)
    process.communicate()
    assert process.returncode == -signal.SIGKILL


# --- a bundle training killed mid-epoch -------------------------------------------------------------------


def training(out: Path, manifest: Path, *config_files: Path) -> list[str]:
    """``python -m monai.bundle run`` of the fMRI bundle: 3 epochs of 3 single-subject batches, augmentation on."""
    overrides = {**TINY_OVERRIDES, "epochs": 3, "batch_size": 1, "augment": True}
    overrides.update(manifest=manifest, output_dir=out / "eval", ckpt_dir=out / "ckpt")
    files = [str(FMRI_TRAIN), *map(str, config_files)]
    config = files[0] if len(files) == 1 else "[" + ",".join(f"'{f}'" for f in files) + "]"
    return ["-m", "monai.bundle", "run", "--config_file", config, *cli_overrides(overrides)]


@pytest.fixture(scope="module")
def manifest(fold_dir) -> Path:
    return fold_dir / "repeat-0_fold-0" / "manifest.csv"


@pytest.fixture(scope="module")
def left_alone(manifest, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("left_alone")
    finish(start(training(out, manifest)))
    return out


@pytest.fixture(scope="module")
def killed(manifest, tmp_path_factory) -> tuple[Path, str, str]:
    """Training killed with SIGKILL at iteration 5 (the middle of epoch 2), then re-run (without the pause).

    Returns the run folder, where it was killed and the resumed run's output."""
    out = tmp_path_factory.mktemp("killed")
    marker = out / "paused"
    pause = out / "pause.yaml"
    pause.write_text(f"+train#handlers:\n  - {{_target_: tests.pause.PauseAt, iteration: 5, marker: '{marker}'}}\n")
    kill_when(start(training(out, manifest, pause)), marker.is_file)
    assert (out / "ckpt" / "checkpoint.pt").is_file()
    return out, marker.read_text().strip(), finish(start(training(out, manifest)))


def test_killed_training_was_stopped_mid_epoch_after_a_checkpoint(killed):
    out, where, _ = killed
    assert where == "epoch 2 iteration 5"  # 3 iterations an epoch: the second of epoch 2


def test_killed_training_resumes_from_its_last_checkpoint(killed):
    out, _, log = killed
    assert f"Restored all variables from {out / 'ckpt' / 'checkpoint.pt'}" in log
    assert list(pd.read_csv(out / "eval" / "training_log.csv")["epoch"]) == [1, 2, 3]


def test_resumed_training_ends_as_the_run_left_alone(killed, left_alone):
    out, _, _ = killed
    pd.testing.assert_frame_equal(
        pd.read_csv(out / "eval" / "training_log.csv"), pd.read_csv(left_alone / "eval" / "training_log.csv")
    )
    resumed = torch.load(out / "ckpt" / "model.pt", weights_only=True)
    alone = torch.load(left_alone / "ckpt" / "model.pt", weights_only=True)
    assert resumed.keys() == alone.keys()
    assert all(torch.equal(resumed[k], alone[k]) for k in alone)


# --- a study killed between fold jobs ---------------------------------------------------------------------


def write_study(folder: Path, cohort: Path) -> Path:
    """One model, augmentation on, 2 folds of the tiny cohort: two fold jobs of a few seconds each."""
    study = folder / "faults.yaml"
    study.write_text(
        f"name: faults\ncohorts:\n  paired: {{manifest: {cohort / 'manifest_paired.csv'}}}\nmodels: [fmri_lstm]\n"
        "augmentation: [true]\ncv: {folds: 2, val_fraction: 0.34}\n"
        "overrides: {epochs: 2, batch_size: 2, fmri_timepoints: 32}\n"
    )
    return study


def done_files(run: Path) -> dict[Path, int]:
    return {path: path.stat().st_mtime_ns for path in run.glob("folds/*/*/*/done.json")}


@pytest.fixture(scope="module")
def study_runs(tiny_cohort, tmp_path_factory) -> dict:
    """The study killed with SIGKILL once its first fold job is done, then resumed; and the same study run again,
    uninterrupted, into a second folder. All three run offline (subprocesses whose sockets reach no network)."""
    folder = tmp_path_factory.mktemp("killed_study")
    study, run, again, env = write_study(folder, tiny_cohort), folder / "run", folder / "again", offline_env(folder)

    def experiment(out: Path) -> list[str]:
        # one job at a time: two parallel jobs of the same length finish together, leaving no moment between them
        args = ["experiment", str(study), "--out", str(out), "--quiet", "--bootstrap", "20", "--jobs", "1"]
        return ["-m", "pipeline.cli", *args]

    kill_when(start(experiment(run), env), lambda: bool(done_files(run)))
    before = done_files(run)
    resumed = finish(start(experiment(run), env))
    finish(start(experiment(again), env))  # a fresh process, as the first (this one's thread count may differ)
    return {"run": run, "before": before, "resumed": resumed, "again": again, "network_log": folder / "offline" / "log"}


def test_killed_study_resumes_without_repeating_finished_jobs(study_runs):
    before, after = study_runs["before"], done_files(study_runs["run"])
    assert len(before) == 1 and len(after) == 2
    assert {path: after[path] for path in before} == before  # finished jobs untouched
    assert "study faults: complete" in study_runs["resumed"]


def test_resumed_study_has_one_result_row_per_job(study_runs):
    results = pd.read_csv(study_runs["run"] / "results.csv")
    assert len(results) == 2 and not results.duplicated(JOB_COLUMNS).any()
    predictions = pd.read_csv(study_runs["run"] / "predictions.csv")
    assert len(predictions) == 12 and predictions["subject_id"].is_unique  # every subject tested once


def test_same_seed_twice_gives_identical_metrics_and_predictions(study_runs):
    keys = [*JOB_COLUMNS]
    first = pd.read_csv(study_runs["run"] / "results.csv").sort_values(keys).reset_index(drop=True)
    second = pd.read_csv(study_runs["again"] / "results.csv").sort_values(keys).reset_index(drop=True)
    pd.testing.assert_frame_equal(first[keys + METRICS], second[keys + METRICS], check_exact=True)
    columns = ["subject_id", "fold", "prob_CN", "prob_MCI", "prob_AD", "predicted"]
    a = pd.read_csv(study_runs["run"] / "predictions.csv").sort_values("subject_id").reset_index(drop=True)
    b = pd.read_csv(study_runs["again"] / "predictions.csv").sort_values("subject_id").reset_index(drop=True)
    pd.testing.assert_frame_equal(a[columns], b[columns], check_exact=True)


def test_the_demo_path_runs_without_network_access(study_runs):
    assert (study_runs["run"] / "report.html").is_file()
    log = study_runs["network_log"]
    assert not log.exists(), f"network access attempted: {log.read_text()}"


def test_the_offline_guard_refuses_connections(tmp_path):
    env = offline_env(tmp_path)
    probe = (
        "import socket\ntry:\n    socket.create_connection(('192.0.2.1', 80), 1)\nexcept OSError as e:\n    print(e)"
    )
    result = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=60)
    assert "network access is disabled in this test" in result.stdout
    assert (tmp_path / "offline" / "log").read_text().strip() == "('192.0.2.1', 80)"


def test_a_cache_file_left_truncated_by_a_killed_run_is_recomputed(tmp_path):
    # a study's on-disk cache (RUN/cache/<model>): MONAI moves each file in from the system's temporary folder, a
    # copy when that is another file system, so a kill can leave half a file under its final name
    import numpy as np
    from monai.transforms import Compose, ScaleIntensityd

    from pipeline.data.datasets import make_dataset

    data, chain = [{"x": np.arange(4000, dtype=np.float32)}], Compose([ScaleIntensityd(keys="x")])
    first = make_dataset(data, chain, cache_dir=tmp_path)[0]["x"]
    (cached,) = tmp_path.glob("*.pt")
    cached.write_bytes(cached.read_bytes()[: cached.stat().st_size // 2])
    again = make_dataset(data, chain, cache_dir=tmp_path)[0]["x"]
    assert torch.equal(torch.as_tensor(again), torch.as_tensor(first))
    assert torch.equal(torch.as_tensor(torch.load(cached, weights_only=True)["x"]), torch.as_tensor(first))
