"""Run a list of independent jobs: in this process, in a pool of local processes, or on a cluster through submitit.

:func:`run_jobs` takes any picklable ``work(item)`` and a list of items (a study's fold jobs, its T1s to register, a
pretraining stage) and an :class:`Execution` that says how:

- ``process`` (default): up to ``jobs`` items at once, each in a spawned worker process whose torch / OpenMP / MKL /
  BLAS thread count is ``threads_per_job`` (default: the cores divided by ``jobs``), so they do not oversubscribe the
  cores; one job at a time runs in this process. A progress bar counts finished items with an ETA. On Ctrl-C
  (``KeyboardInterrupt``) or a failed item, no new item starts; on Ctrl-C the workers are stopped, and every item
  that did not finish is handed to ``abandon`` once its worker is gone (the study runner removes its folder), so
  nothing half-written stays. Inside :func:`worker_pool` consecutive calls reuse the same workers. An item that
  ``needs`` others starts once they have finished, so a worker never waits while another item could run (a
  study's pretraining beside the fold jobs that do not start from it).
- ``slurm`` (``pip install neurofusion[slurm]``): the items are submitted as one Slurm job array through submitit,
  logs under ``log_dir`` (``<array id>_<task>_log.{out,err}``); ``local`` runs the same code path through submitit's
  local executor (one process per item, no Slurm). Waits for the array unless ``wait`` is false; items that failed
  are listed with their log. Submitted jobs are recorded in ``log_dir/submitted.json``: a re-run waits for those
  still queued or running instead of submitting them again, and submits the others. Items that ``need`` others go in a
  later array, submitted once the earlier one has finished.

Results of the items are not returned: a job writes its own output (a study's ``done.json``).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import pickle
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent import futures
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from tqdm import tqdm

from pipeline.io import atomic_write_json

logger = logging.getLogger(__name__)

T = TypeVar("T")
EXECUTORS = ("process", "slurm", "local")
#: environment variables that size the thread pools of torch (OpenMP), MKL, OpenBLAS and numexpr
THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMEXPR_NUM_THREADS")
#: Slurm states of a job that may still run (``sacct``), so a re-run waits for it rather than submitting it again
ACTIVE_STATES = {"PENDING", "RUNNING", "REQUEUED", "CONFIGURING", "COMPLETING", "SUSPENDED", "RESIZING"}
SUBMITTED = "submitted.json"


def available_cores() -> int:
    """Cores this process may use (its CPU affinity where the system has one)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


@dataclass(frozen=True)
class Execution:
    """How a list of jobs runs.

    Args:
        executor: ``process`` (local worker processes), ``slurm`` (a Slurm job array through submitit) or ``local``
            (submitit's local executor: the cluster code path without Slurm).
        jobs: jobs at once (None: :func:`available_cores`); for ``slurm``, the array's parallelism (None: no limit).
        threads_per_job: compute threads of each job (None: the cores divided by ``jobs``; ``slurm_cpus`` on a
            cluster).
        wait: wait for submitted jobs to finish (``slurm`` / ``local``).
        slurm: submitit resources: ``partition``, ``time_min``, ``mem_gb``, ``cpus`` (per job).
    """

    executor: str = "process"
    jobs: int | None = None
    threads_per_job: int | None = None
    wait: bool = True
    slurm: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.executor not in EXECUTORS:
            raise ValueError(f"executor must be one of {', '.join(EXECUTORS)}, got {self.executor!r}")
        if self.executor == "slurm" and not self.slurm.get("partition"):
            raise ValueError("--executor slurm needs --slurm-partition")
        if not self.submitted and (not self.wait or any(v is not None for v in self.slurm.values())):
            raise ValueError("--no-wait and --slurm-* options need --executor slurm (or local)")

    @property
    def submitted(self) -> bool:
        """Jobs go through submitit (``slurm`` or ``local``) rather than local worker processes."""
        return self.executor != "process"

    @property
    def at_once(self) -> int:
        """Jobs that run at the same time on this machine (``process``) or the array's parallelism (0: no limit)."""
        if self.submitted:
            return self.jobs or 0
        return self.jobs or available_cores()

    @property
    def threads(self) -> int:
        """Compute threads of each job."""
        if self.threads_per_job:
            return self.threads_per_job
        if self.submitted:
            return int(self.slurm.get("cpus") or 1)
        return max(1, available_cores() // self.at_once)


def set_threads(threads: int) -> None:
    """Size this process's torch thread pool and, through :data:`THREAD_VARIABLES`, those of the libraries and
    processes it starts from now on."""
    import torch

    os.environ.update({name: str(threads) for name in THREAD_VARIABLES})
    torch.set_num_threads(threads)


@contextlib.contextmanager
def thread_limit(threads: int) -> Iterator[None]:
    """:func:`set_threads` for the duration of the block, then the previous settings again."""
    import torch

    saved, torch_threads = {name: os.environ.get(name) for name in THREAD_VARIABLES}, torch.get_num_threads()
    set_threads(threads)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        torch.set_num_threads(torch_threads)


def run_jobs(
    work: Callable[[T], Any],
    items: Sequence[T],
    execution: Execution,
    *,
    desc: str = "jobs",
    unit: str = "job",
    progress: bool = True,
    label: Callable[[T], str] = str,
    abandon: Callable[[T], None] | None = None,
    log_dir: Path | None = None,
    wait: bool | None = None,
    needs: Callable[[T], Iterable[T]] | None = None,
) -> bool:
    """Run ``work(item)`` for every item as ``execution`` says (module docstring).

    Args:
        work: a picklable callable (a module-level function or a ``functools.partial`` of one).
        items: picklable arguments of ``work``, one job each.
        execution: how the jobs run.
        desc: progress bar label.
        unit: progress bar unit.
        progress: show the progress bar.
        label: a job's name in messages (and its key in ``submitted.json``).
        abandon: called with each job that was stopped before it finished, once nothing runs it any more.
        log_dir: folder of the submitit logs and ``submitted.json`` (``slurm`` / ``local``; required there).
        wait: overrides ``execution.wait`` (a stage that later jobs need sets True).
        needs: the items an item must wait for (only those among ``items`` count; then items must be hashable).

    Returns:
        True when every job finished; False when submitted jobs were left running (``wait`` false).

    Raises:
        Exception: the first failed job's error (local jobs); RuntimeError listing every failed job and its log
            (submitted jobs).
        ValueError: items that need each other.
    """
    if not items:
        return True
    waves = _waves(items, needs)
    bar = tqdm(total=len(items), desc=desc, unit=unit, disable=not progress, dynamic_ncols=True)
    with bar:
        if execution.submitted:
            if log_dir is None:
                raise ValueError(f"{execution.executor} executor: no log folder given")
            wait = execution.wait if wait is None else wait
            for wave in waves[:-1]:  # what later jobs need
                _run_submitit(work, wave, execution, bar, label, Path(log_dir), wait=True)
            return _run_submitit(work, waves[-1], execution, bar, label, Path(log_dir), wait)
        if execution.at_once == 1 or len(items) == 1:
            _run_here(work, [item for wave in waves for item in wave], execution.threads, bar)
        else:
            _run_pool(work, items, execution, bar, label, abandon, needs)
    return True


def _waves(items: Sequence[T], needs: Callable[[T], Iterable[T]] | None) -> list[list[T]]:
    """``items`` in the order their ``needs`` allow: first those that need none of them, then those that need only
    those, and so on (each wave in the given order)."""
    if needs is None:
        return [list(items)]
    listed, done, waves, left = set(items), set(), [], list(items)
    while left:
        wave = [item for item in left if all(n in done or n not in listed for n in needs(item))]
        if not wave:
            raise ValueError("jobs that need each other: " + ", ".join(map(str, left)))
        done.update(wave)
        waves.append(wave)
        left = [item for item in left if item not in done]
    return waves


def _run_here(work: Callable[[T], Any], items: Sequence[T], threads: int, bar: tqdm) -> None:
    with thread_limit(threads):
        for item in items:
            work(item)
            bar.update()


def _start_worker(threads: int, parent: int) -> None:
    """Initialiser of a pool worker: its threads, and no reaction to Ctrl-C (the parent stops it with SIGTERM,
    which unwinds the running job so its own clean-up runs). A parent killed outright (``kill -9``, out of memory)
    cannot send it, so the worker sends itself that SIGTERM when its parent is gone, instead of training on
    as an orphan that still holds the command's output pipes (see :func:`_terminate_with_parent`)."""
    set_threads(threads)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, _exit_on_term)
    _terminate_with_parent(parent)


def _terminate_with_parent(parent: int, poll_seconds: float = 0.5, grace_seconds: float = 30.0) -> None:
    """Watch the parent from a daemon thread; once it is gone, SIGTERM this process (its job unwinds and cleans up)
    and, should that not end it within ``grace_seconds``, exit outright (an unfinished job is redone anyway)."""

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(poll_seconds)
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(grace_seconds)
        os._exit(128 + signal.SIGTERM)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


class _Terminated(SystemExit):
    """SIGTERM in a worker (:func:`_start_worker`): the running job unwinds, then the worker exits."""


def _exit_on_term(signum, frame) -> None:
    raise _Terminated(128 + signum)


def _run_pool(work, items, execution: Execution, bar: tqdm, label, abandon, needs=None) -> None:
    """At most ``execution.at_once`` items in flight in spawned workers; when one finishes, the first item whose
    ``needs`` have finished starts."""
    with thread_limit(execution.threads):  # the workers inherit the environment when they are spawned (first submit)
        failure = _pool_loop(work, items, execution, bar, label, abandon, needs)
    if failure is not None:
        raise failure


#: pools that :func:`worker_pool` keeps between :func:`run_jobs` calls, by (workers, threads); None outside it
_kept: dict[tuple[int, int], futures.ProcessPoolExecutor] | None = None


@contextlib.contextmanager
def worker_pool() -> Iterator[None]:
    """Keep the local worker processes of every :func:`run_jobs` call in the block for the next call with the same
    workers and threads (a study's registration and fold-job stages), shut down when the block ends: each spawned
    worker imports torch, MONAI and ANTs once instead of once a stage. A stage that fails or is interrupted stops
    its workers; the next starts fresh ones."""
    global _kept
    if _kept is not None:  # already inside one
        yield
        return
    _kept = {}
    try:
        yield
    finally:
        pools, _kept = list(_kept.values()), None
        for pool in pools:
            pool.shutdown()


def _pool(execution: Execution) -> futures.ProcessPoolExecutor:
    """A kept pool for ``execution`` (:func:`worker_pool`), or a new one; workers are spawned as jobs need them."""
    import multiprocessing

    kept = _kept.pop((execution.at_once, execution.threads), None) if _kept is not None else None
    return kept or futures.ProcessPoolExecutor(
        max_workers=execution.at_once,
        mp_context=multiprocessing.get_context("spawn"),
        initializer=_start_worker,
        initargs=(execution.threads, os.getpid()),
    )


def _pool_loop(work, items, execution: Execution, bar: tqdm, label, abandon, needs=None) -> BaseException | None:
    """Run the items in a pool; returns the first failed job's error (the others are still run to their end)."""
    pending, running, finished = list(items), {}, []
    listed = set(items) if needs is not None else set()

    def ready(item) -> bool:
        return needs is None or all(n in finished or n not in listed for n in needs(item))

    failure: BaseException | None = None
    pool = _pool(execution)
    try:
        while pending or running:
            while pending and failure is None and len(running) < execution.at_once:
                item = next((item for item in pending if ready(item)), None)
                if item is None:  # the rest wait for running items
                    break
                pending.remove(item)
                running[pool.submit(_keeping_causes, work, item)] = item
            if not running:
                break
            done, _ = futures.wait(running, return_when=futures.FIRST_COMPLETED)
            for future in done:
                item = running.pop(future)
                error = future.exception()
                if error is None:
                    bar.update()
                    finished.append(item)
                elif failure is None:
                    failure = _job_error(label(item), error)
                    if running:
                        logger.warning("%s; waiting for %d running job(s) to finish", failure, len(running))
    except BaseException:  # Ctrl-C: stop the workers, then drop what they left unfinished
        _stop(pool)
        for item in running.values():
            if abandon is not None:
                abandon(item)
        raise
    if failure is None and _kept is not None:
        _kept[(execution.at_once, execution.threads)] = pool
    else:
        pool.shutdown()
    return failure


def _job_error(name: str, error: BaseException) -> BaseException:
    """The error a job raised (as a sequential run would raise it), or one naming the job whose worker died."""
    if isinstance(error, BrokenProcessPool):
        return RuntimeError(f"{name}: its worker process died (killed, or out of memory?)")
    if isinstance(error, _CausedError):
        for outer, inner in zip(error.chain, error.chain[1:]):
            outer.__cause__ = inner
        return error.chain[0]
    return error


class _CausedError(Exception):
    """A worker's error with its chain of causes, which pickling to the parent would drop (MONAI wraps an error of
    a config expression in ``Failed to evaluate ...``; the cause is the message the user needs)."""

    def __init__(self, chain: list[BaseException]) -> None:
        super().__init__(str(chain[0]))
        self.chain = chain

    def __reduce__(self):
        return (_CausedError, (self.chain,))


def _keeping_causes(work: Callable[[T], Any], item: T) -> Any:
    """Run one job in a worker; an error travels back with its causes (each made picklable). A job stopped by
    SIGTERM ends the worker once it has unwound: the pool would report it and wait for the next job, which a worker
    whose command is gone would wait for forever."""
    try:
        return work(item)
    except _Terminated as stop:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(stop.code)
    except Exception as err:
        chain = []
        while err is not None and len(chain) < 20:
            chain.append(_picklable(err))
            err = err.__cause__
        raise _CausedError(chain) from None


def _picklable(err: BaseException) -> BaseException:
    try:
        pickle.loads(pickle.dumps(err))
        return err
    except Exception:
        return RuntimeError(f"{type(err).__name__}: {err}")


def _stop(pool: futures.ProcessPoolExecutor) -> None:
    """Terminate a pool's workers and wait until they are gone."""
    processes = list(getattr(pool, "_processes", {}).values())  # no public handle before Python 3.14
    pool.shutdown(wait=False, cancel_futures=True)
    for process in processes:
        process.terminate()
    for process in processes:
        process.join(timeout=30)
        if process.is_alive():
            process.kill()
            process.join()


# --- submitit (Slurm, or its local executor) ---------------------------------------------------------------------


def _in_job(work: Callable[[T], Any], threads: int, item: T) -> None:
    """What a submitted job runs: ``work(item)`` with ``threads`` compute threads."""
    set_threads(threads)
    work(item)


def _submitit():
    try:
        import submitit
    except ImportError:
        raise RuntimeError("--executor slurm/local needs submitit: pip install 'neurofusion[slurm]'") from None
    return submitit


def _executor(execution: Execution, log_dir: Path):
    submitit = _submitit()
    resources = execution.slurm
    executor = submitit.AutoExecutor(folder=log_dir, cluster=execution.executor)
    executor.update_parameters(
        name="neurofusion",
        timeout_min=int(resources.get("time_min") or 60),
        mem_gb=resources.get("mem_gb"),
        cpus_per_task=int(resources.get("cpus") or execution.threads),
        slurm_partition=resources.get("partition"),
        slurm_array_parallelism=execution.at_once or None,
    )
    return executor


def _still_active(submitit, execution: Execution, log_dir: Path, recorded: dict[str, str], names: list[str]) -> dict:
    """Recorded Slurm jobs of ``names`` that are still queued or running (name -> job). Jobs of submitit's local
    executor cannot be found again from another process, so they are never waited for a second time."""
    if execution.executor != "slurm":
        return {}
    jobs = {name: submitit.SlurmJob(folder=log_dir, job_id=recorded[name]) for name in names if name in recorded}
    return {name: job for name, job in jobs.items() if job.state in ACTIVE_STATES}


def _run_submitit(work, items, execution: Execution, bar: tqdm, label, log_dir: Path, wait: bool) -> bool:
    import functools

    submitit = _submitit()
    log_dir.mkdir(parents=True, exist_ok=True)
    ledger = log_dir / SUBMITTED
    recorded = json.loads(ledger.read_text()) if ledger.is_file() else {}
    names = [label(item) for item in items]
    jobs = _still_active(submitit, execution, log_dir, recorded, names)
    if jobs:
        print(f"{len(jobs)} job(s) still queued or running from an earlier submission: not submitted again")
    new = [(name, item) for name, item in zip(names, items) if name not in jobs]
    if new:
        executor = _executor(execution, log_dir)
        submitted = executor.map_array(functools.partial(_in_job, work, execution.threads), [i for _, i in new])
        jobs.update({name: job for (name, _), job in zip(new, submitted)})
        atomic_write_json(ledger, {**recorded, **{name: job.job_id for name, job in jobs.items()}})
        print(
            f"submitted {len(submitted)} job(s) ({execution.executor}, array {submitted[0].job_id.split('_')[0]}); "
            f"logs in {log_dir}"
        )
    if not wait:
        return False
    by_job = {id(job): name for name, job in jobs.items()}
    failures = []
    poll = 30.0 if execution.executor == "slurm" else 0.5
    try:
        for job in submitit.helpers.as_completed(list(jobs.values()), poll_frequency=poll):
            if job.exception() is None:
                bar.update()
            else:
                failures.append(f"{by_job[id(job)]} (log: {job.paths.stderr})")
    except KeyboardInterrupt:
        if execution.executor == "slurm":
            print("the submitted jobs keep running (scancel them to stop them); re-running waits for them")
        raise
    if failures:
        raise RuntimeError(f"{len(failures)} job(s) failed, re-run to submit them again: " + "; ".join(failures))
    return True


__all__ = ["EXECUTORS", "Execution", "available_cores", "run_jobs", "set_threads", "thread_limit"]
