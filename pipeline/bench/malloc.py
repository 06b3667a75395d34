"""``neurofusion bench malloc``: glibc's default allocator against :func:`pipeline.engine.retain_freed_memory`.

The allocator's settings hold for a whole process and cannot be put back, so each measurement runs in a fresh
process, the two settings alternating ``--repeats`` times (load from elsewhere on the machine hits both alike). Per
workload: seconds (best pass), the share of them spent in the kernel, page faults, the speed-up, and whether the
result is bitwise the same. Workloads: training steps of the 3D CNN on the bundles' grid (batch 4) and the paper
study's grid (batch 8), of the fused model and of the LSTM, and the N4 + ANTs registration of synthetic T1s (which
the study does not tune).
"""

from __future__ import annotations

import argparse
import dataclasses
import resource
import tempfile
import time
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path

describe = (
    "glibc's default allocator vs freed memory kept for re-use (what training runs with): seconds, system time, "
    "page faults and identical results of the training step and of registration, each in fresh processes"
)

#: ``--what`` name -> (label, network, grid, batch) of the training workloads
TRAINING = {
    "cnn": ("3D CNN, bundle grid", "cnn", "bundle", 4),
    "cnn-paper": ("3D CNN, paper grid", "cnn", "paper", 8),
    "fused": ("fused, bundle grid", "fused", "bundle", 4),
    "lstm": ("LSTM", "lstm", "bundle", 4),
}
WORKLOADS = (*TRAINING, "registration")


@dataclass(frozen=True)
class Measured:
    """One workload in one process: seconds, of them in the kernel, page faults, and what it computed."""

    seconds: float
    system: float
    faults: int
    result: bytes | None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--what", nargs="+", choices=WORKLOADS, default=list(WORKLOADS), help="workloads (default all)")
    parser.add_argument("--steps", type=int, default=10, help="timed training steps per process (default 10)")
    parser.add_argument("--repeats", type=int, default=2, help="processes per setting and workload (default 2)")
    parser.add_argument("--threads", type=int, default=1, help="compute threads (default 1, a study job's on 2 cores)")
    parser.add_argument("--subjects", type=int, default=3, help="synthetic 3 mm T1s to register (default 3)")


def _timed(work) -> Measured:
    before, started = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    result = work()
    seconds, after = time.perf_counter() - started, resource.getrusage(resource.RUSAGE_SELF)
    return Measured(seconds, after.ru_stime - before.ru_stime, after.ru_minflt - before.ru_minflt, result)


def _train(network: str, grid: str, batch: int, steps: int) -> Measured:
    """``steps`` timed training steps after one untimed; the result is the trained logits on a held-out batch."""
    import torch

    from pipeline.bench.train import Case, Run, Setting, network_of, to_grid, training_batches

    case = Case(network, Setting(torch.get_num_threads()), to_grid(grid), batch)
    torch.manual_seed(0)
    weights = network_of(case).state_dict()
    run = Run(case, weights, training_batches(case, steps + 1, torch.device("cpu"), seed=0))
    held_out = training_batches(case, 1, torch.device("cpu"), seed=1)[0][0]
    torch.manual_seed(0)
    run.steps(1)
    run.batches = run.batches[1:]
    measured = _timed(run.steps)
    return dataclasses.replace(measured, result=run.probabilities(held_out, logits=True).numpy().tobytes())


def _register(count: int) -> Measured:
    """N4 and the affine registration of ``count`` synthetic 3 mm T1s; the result is their matrices."""
    import numpy as np

    from pipeline.bench.registration import synthetic_t1s
    from pipeline.transforms.registration import mni_template, register_t1

    with tempfile.TemporaryDirectory() as folder:
        subjects = synthetic_t1s(Path(folder), 3.0, count)
    mni_template(4.0)
    return _timed(lambda: np.stack([register_t1(array, affine).matrix for array, affine, _ in subjects]).tobytes())


def _in_fresh_process(retain: bool, threads: int, workload: tuple) -> Measured:
    """What a child process measures, with or without the tuned allocator."""
    from pipeline.engine.allocator import retain_freed_memory
    from pipeline.study.executor import set_threads

    if retain and not retain_freed_memory():
        raise RuntimeError("this C library is not glibc: nothing to compare")
    set_threads(threads)
    return _register(workload[1]) if workload[0] == "registration" else _train(*workload)


def _measure(retain: bool, threads: int, workload: tuple) -> Measured:
    import multiprocessing

    with futures.ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(_in_fresh_process, retain, threads, workload).result()


def _row(label: str, default: list[Measured], retained: list[Measured]) -> str:
    best = [min(runs, key=lambda m: m.seconds) for runs in (default, retained)]
    same = len({m.result for m in default + retained}) == 1
    cells = [f"{m.seconds:7.2f} s {m.system / m.seconds:5.0%} {m.faults:9d}" for m in best]
    return f"{label:34} {cells[0]}   {cells[1]}   {best[0].seconds / best[1].seconds:6.2f}x  {'yes' if same else 'NO'}"


def run(args: argparse.Namespace) -> int:
    workloads = {}
    for name in args.what:
        if name == "registration":
            workloads[f"registration, {args.subjects} T1s at 3 mm"] = ("registration", max(1, args.subjects))
        else:
            label, network, grid, batch = TRAINING[name]
            workloads[label] = (network, grid, batch, max(1, args.steps))
    print(f"{args.threads} thread(s); best of {args.repeats} fresh processes per setting; {args.steps} steps")
    print(f"{'workload':34} {'glibc default: time sys faults':32}   {'retained: time sys faults':32} speed-up  same")
    for label, workload in workloads.items():
        runs = {True: [], False: []}
        for _ in range(max(1, args.repeats)):
            for retain in (False, True):
                runs[retain].append(_measure(retain, args.threads, workload))
        print(_row(label, runs[False], runs[True]), flush=True)
    print("sys: share of the time in the kernel; faults: minor page faults; same: bitwise the same logits/matrices")
    return 0
