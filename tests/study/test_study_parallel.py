"""Fold jobs in parallel: worker processes (``--jobs``), Ctrl-C and resume, shared caches, submitit's executor."""

from __future__ import annotations

import contextlib
import functools
import multiprocessing
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from pipeline.cli import main
from pipeline.study.executor import Execution, available_cores
from tests.conftest import REPO

pytestmark = pytest.mark.slow  # trains bundles: left out by `make test-fast`

SMOKE = REPO / "bundles" / "experiments" / "smoke.yaml"
KEYS = ["cohort", "model", "augment", "repeat", "fold", "seed"]
METRICS = ["accuracy", "balanced_accuracy", "macro_f1", "auc_ovr"]


def _study(tiny_cohort: Path, folder: Path) -> Path:
    """The smoke study cut to its fastest model (4 fold jobs: 2 folds x augmentation off / on)."""
    spec = yaml.safe_load(SMOKE.read_text())
    spec["models"] = ["fmri_lstm"]
    spec["cohorts"]["paired"]["manifest"] = str(tiny_cohort / "manifest_paired.csv")
    path = folder / "smoke_lstm.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def _experiment(study: Path, out: Path, *extra: str) -> int:
    return main(["experiment", str(study), "--out", str(out), "--quiet", "--bootstrap", "10", *extra])


def _metrics(out: Path) -> pd.DataFrame:
    results = pd.read_csv(out / "results.csv")
    return results[results["kind"] == "model"].sort_values(KEYS)[KEYS + METRICS].reset_index(drop=True)


def _job_dirs(out: Path) -> list[Path]:
    return [p for p in out.glob("folds/*/*/*") if p.is_dir()]


def _copy_run(source: Path, out: Path) -> None:
    """A run folder that starts from ``source``'s registrations (so a test does not register the cohort again)."""
    shutil.copytree(source / "cache" / "registration", out / "cache" / "registration")


@pytest.fixture(scope="module")
def sequential(tiny_cohort, tmp_path_factory):
    """The cut smoke study run one job at a time in this process, one thread: (study YAML, run folder)."""
    folder = tmp_path_factory.mktemp("parallel")
    study = _study(tiny_cohort, folder)
    assert _experiment(study, folder / "sequential", "--jobs", "1", "--threads-per-job", "1") == 0
    return study, folder / "sequential"


def test_default_jobs_use_every_core_and_share_them():
    execution = Execution()
    assert execution.at_once == available_cores()
    assert execution.threads == max(1, available_cores() // execution.at_once)
    assert Execution(jobs=1).threads == available_cores()


def _record_threads(path: str) -> None:
    import torch

    Path(path).write_text(f"{torch.get_num_threads()} {os.environ['OMP_NUM_THREADS']} {os.getpid()}")


def test_each_worker_runs_with_its_share_of_the_threads(tmp_path):
    from pipeline.study.executor import run_jobs

    paths = [str(tmp_path / f"job-{i}.txt") for i in range(3)]
    assert run_jobs(_record_threads, paths, Execution(jobs=2, threads_per_job=1), progress=False)
    records = [Path(p).read_text().split() for p in paths]
    assert {tuple(r[:2]) for r in records} == {("1", "1")}
    assert os.getpid() not in {int(r[2]) for r in records}  # in worker processes, not this one


def _fail(path: str) -> None:
    raise ValueError(f"{path}: planned failure")


def _pids(paths: list[str]) -> set[int]:
    return {int(Path(p).read_text().split()[2]) for p in paths}


def test_stages_inside_worker_pool_share_its_workers_which_end_with_it(tmp_path):
    from pipeline.study import executor
    from pipeline.study.executor import run_jobs, worker_pool

    execution = Execution(jobs=2, threads_per_job=1)
    stages = [[str(tmp_path / f"stage-{s}-job-{i}.txt") for i in range(4)] for s in range(3)]
    with worker_pool():
        for paths in stages[:2]:
            assert run_jobs(_record_threads, paths, execution, progress=False)
        with pytest.raises(ValueError, match="planned failure"):  # a failed stage stops its workers
            run_jobs(_fail, ["a", "b"], execution, progress=False)
        assert run_jobs(_record_threads, stages[2], execution, progress=False)
        workers = [p for pool in executor._kept.values() for p in pool._processes.values()]
    first, second, after_failure = (_pids(paths) for paths in stages)
    assert second <= first and len(first) <= 2  # the second stage ran in the first one's workers
    assert after_failure.isdisjoint(first)  # fresh workers after the failed stage
    assert workers and executor._kept is None and not any(p.is_alive() for p in workers)


def _timed(folder: str, name: str) -> None:
    started = time.time()
    time.sleep(3.0 if name == "long" else 0.2)
    Path(folder, name).write_text(f"{started} {time.time()}")


def _after_long(name: str) -> list[str]:
    return ["long"] if name.startswith("needs") else []


def _spans(folder: Path, names: list[str]) -> dict[str, tuple[float, float]]:
    return {name: tuple(float(t) for t in (folder / name).read_text().split()) for name in names}


def test_a_job_starts_once_what_it_needs_has_finished_and_the_other_worker_does_not_wait(tmp_path):
    from pipeline.study.executor import run_jobs

    names = ["long", "needs-long", "free-1", "free-2"]
    work = functools.partial(_timed, str(tmp_path))
    assert run_jobs(work, names, Execution(jobs=2, threads_per_job=1), progress=False, needs=_after_long)
    spans = _spans(tmp_path, names)
    assert spans["needs-long"][0] >= spans["long"][1]
    assert max(spans["free-1"][0], spans["free-2"][0]) < spans["long"][1]  # the free jobs did not queue behind it


def test_one_job_at_a_time_runs_what_is_needed_first_and_needs_in_a_circle_are_refused(tmp_path):
    from pipeline.study.executor import run_jobs

    order = []
    assert run_jobs(order.append, ["needs-long", "long"], Execution(jobs=1), progress=False, needs=_after_long)
    assert order == ["long", "needs-long"]
    circle = {"a": ["b"], "b": ["a"]}
    with pytest.raises(ValueError, match="need each other: a, b"):
        run_jobs(order.append, ["a", "b"], Execution(jobs=2), progress=False, needs=circle.get)
    assert order == ["long", "needs-long"]


def test_submitit_submits_what_others_need_first_and_waits_for_it(tmp_path, monkeypatch):
    pytest.importorskip("submitit")
    from pipeline.study.executor import run_jobs

    here = str(Path(__file__).parent)  # submitit's jobs unpickle this module's _timed
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [here, os.environ.get("PYTHONPATH")])))

    names = ["needs-long", "long", "free-1"]
    work = functools.partial(_timed, str(tmp_path))
    execution = Execution(executor="local")
    assert run_jobs(work, names, execution, progress=False, needs=_after_long, log_dir=tmp_path / "logs")
    spans = _spans(tmp_path, names)
    assert spans["needs-long"][0] >= max(spans["long"][1], spans["free-1"][1])


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--executor", "slurm"], "--executor slurm needs --slurm-partition"),
        (["--no-wait"], "--no-wait and --slurm-* options need --executor slurm"),
        (["--slurm-partition", "cpu"], "--no-wait and --slurm-* options need --executor slurm"),
    ],
)
def test_cluster_flags_out_of_place_are_refused(flags, message, tmp_path, capsys):
    assert main(["experiment", str(SMOKE), "--out", str(tmp_path / "run"), *flags]) == 1
    assert message in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_interrupted_parallel_run_leaves_no_half_job_and_resumes_to_the_sequential_results(sequential, tmp_path):
    study, reference = sequential
    out = tmp_path / "run"
    _copy_run(reference, out)
    command = [sys.executable, "-m", "pipeline.cli", "experiment", str(study), "--out", str(out), "--quiet"]
    command += ["--jobs", "2", "--threads-per-job", "1", "--bootstrap", "10"]
    # Ctrl-C as in a terminal: SIGINT at its default, even where this test runs with it ignored (a shell's
    # background job, `nohup ... &`), which the command would inherit and then never see the Ctrl-C
    restore_ctrl_c = functools.partial(signal.signal, signal.SIGINT, signal.SIG_DFL)
    process = subprocess.Popen(
        command, cwd=REPO, start_new_session=True, preexec_fn=restore_ctrl_c, stderr=subprocess.PIPE, text=True
    )
    deadline = time.monotonic() + 120
    while not any((d / "log.txt").exists() for d in _job_dirs(out)) and time.monotonic() < deadline:
        time.sleep(0.2)
    os.killpg(process.pid, signal.SIGINT)  # Ctrl-C reaches the whole foreground process group
    _, err = process.communicate(timeout=60)
    assert process.returncode == 130, err
    assert all((d / "done.json").exists() for d in _job_dirs(out))  # finished jobs stay, unfinished ones are gone
    assert len(list(out.glob("folds/*/*/*/done.json"))) < 4
    assert _experiment(study, out, "--jobs", "2", "--threads-per-job", "1") == 0
    pd.testing.assert_frame_equal(_metrics(out), _metrics(reference))


def _descendants(pid: int) -> set[int]:
    """The processes under ``pid``, from Linux's ``/proc``."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError):
            children.setdefault(int(stat.read_text().rsplit(")", 1)[1].split()[1]), []).append(int(stat.parent.name))
    found, todo = set(), [pid]
    while todo:
        below = children.get(todo.pop(), [])
        found.update(below)
        todo.extend(below)
    return found


def _running(pid: int) -> bool:
    """Whether ``pid`` runs (an exited process that nobody has reaped yet does not)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.skipif(not Path("/proc/self/stat").is_file(), reason="reads processes from Linux's /proc")
def test_workers_of_a_command_killed_outright_stop_too(sequential, tmp_path):
    study, reference = sequential
    spec = yaml.safe_load(study.read_text())
    spec["overrides"]["epochs"] = 200  # jobs that are still training when the command is killed
    (tmp_path / "long.yaml").write_text(yaml.safe_dump(spec))
    out = tmp_path / "run"
    _copy_run(reference, out)
    command = [sys.executable, "-m", "pipeline.cli", "experiment", str(tmp_path / "long.yaml"), "--out", str(out)]
    process = subprocess.Popen([*command, "--quiet", "--jobs", "2", "--threads-per-job", "1"], cwd=REPO)
    deadline = time.monotonic() + 120
    while not any((d / "log.txt").exists() for d in _job_dirs(out)) and time.monotonic() < deadline:
        time.sleep(0.2)
    workers = _descendants(process.pid)  # the two workers (and multiprocessing's resource tracker)
    process.kill()  # as the out-of-memory killer would: no clean-up of its own
    process.wait()
    assert len(workers) >= 2 and not (out / "results.csv").exists()
    deadline = time.monotonic() + 20  # the job unwinds; not the worker's last resort, an exit 30 s later
    while any(map(_running, workers)) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not any(map(_running, workers))
    assert all((d / "done.json").exists() for d in _job_dirs(out))  # the stopped jobs removed their folders


def test_submitit_local_executor_logs_lists_failures_and_resubmits_them(sequential, tmp_path, capsys):
    pytest.importorskip("submitit")
    study, reference = sequential
    out = tmp_path / "run"
    shutil.copytree(reference, out)
    victim = next(out.glob("folds/paired/repeat-0_fold-1/fmri_lstm_aug-off*"))
    shutil.rmtree(victim)
    shutil.rmtree(out / "cache" / "fmri_lstm")
    (out / "cache" / "fmri_lstm").write_text("not a folder")  # the job's dataset cache cannot be made: it fails
    assert _experiment(study, out, "--executor", "local") == 1
    err = capsys.readouterr().err
    assert "1 job(s) failed" in err and str(victim.relative_to(out)) in err
    log = Path(err.split("(log: ")[1].split(")")[0])
    assert log.is_file() and log.is_relative_to(out / "logs" / "local") and "cache_dir" in log.read_text()
    assert not victim.exists()
    (out / "cache" / "fmri_lstm").unlink()
    assert _experiment(study, out, "--executor", "local") == 0
    assert "submitted 1 job(s)" in capsys.readouterr().out
    pd.testing.assert_frame_equal(_metrics(out), _metrics(reference))


def _write_registration(folder: str, rounds: int) -> None:
    from pipeline.transforms.registration import Registration, RegistrationCache

    cache, rng = RegistrationCache(folder), np.random.default_rng(0)  # both processes write the same values
    registration = Registration(np.eye(4), rng.random((64, 64, 64), dtype=np.float32), np.eye(4), 0.9)
    for _ in range(rounds):
        cache.put("same-key", registration)
        found = cache.get("same-key")
        assert found is not None and np.array_equal(found.bias, registration.bias)


def _constant_image(item: dict) -> dict:
    return {"image": np.full((4_000_000,), item["value"], np.float32)}  # 16 MB: a copy takes a while


def _through_persistent_cache(folder: str, rounds: int, reader: bool) -> None:
    """Round r: the writer computes item r into the cache; the reader asks for it as soon as its file appears."""
    import logging

    from monai.transforms import Lambda

    from pipeline.data.datasets import make_dataset

    if Path("/dev/shm").is_dir():  # MONAI moved its files in from here: across file systems a move is a copy
        tempfile.tempdir = "/dev/shm"
    broken = []
    handler = logging.Handler()
    handler.emit = broken.append
    logging.getLogger("pipeline.data.datasets").addHandler(handler)
    for value in range(rounds):
        deadline = time.monotonic() + 30
        while reader and len(list(Path(folder).glob("[!.]*.pt"))) <= value and time.monotonic() < deadline:
            time.sleep(0.001)  # polls often, without taking the core the writer needs on a loaded machine
        item = make_dataset([{"value": float(value)}], Lambda(_constant_image), cache_dir=folder)[0]
        assert float(item["image"].min()) == float(item["image"].max()) == value
    assert not broken, [record.getMessage() for record in broken]  # never a half-written file


def test_two_processes_writing_the_same_registration_at_once_never_read_a_broken_entry(tmp_path):
    _in_two_processes(_write_registration, (str(tmp_path), 30), (str(tmp_path), 30))


def test_a_job_reading_the_dataset_cache_while_another_writes_it_never_reads_half_a_file(tmp_path):
    _in_two_processes(_through_persistent_cache, (str(tmp_path), 8, False), (str(tmp_path), 8, True))


def _in_two_processes(target, *arguments) -> None:
    import pipeline.data.datasets  # noqa: F401  (imported once here; the forked processes inherit it)
    import pipeline.transforms.registration  # noqa: F401

    processes = [multiprocessing.get_context("fork").Process(target=target, args=args) for args in arguments]
    for process in processes:
        process.start()
    for process in processes:
        process.join(timeout=240)
    for process in processes:  # one left waiting for the other (which failed) is not left behind
        if process.is_alive():
            process.kill()
            process.join()
    assert [p.exitcode for p in processes] == [0, 0]
