"""Benchmarks run by ``neurofusion bench NAME``: each module has ``describe`` (one line), ``add_arguments(parser)``
and ``run(args) -> int``. Figures are reported as ratios against a baseline run side by side in the same process,
never asserted as timings in tests.
"""

from __future__ import annotations

import time
from collections.abc import Callable

#: benchmark name -> module; a module missing from the installation is simply not offered
BENCHMARKS = {
    "roi": "pipeline.bench.roi",
    "mri": "pipeline.bench.mri",
    "train": "pipeline.bench.train",
    "infer": "pipeline.bench.infer",
    "registration": "pipeline.bench.registration",
    "study": "pipeline.bench.study",
    "malloc": "pipeline.bench.malloc",
}


def best_time(function: Callable[[], object], repeats: int = 3) -> float:
    """Best wall time of ``repeats`` calls (seconds): the least disturbed by other load on the machine."""
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        function()
        times.append(time.perf_counter() - started)
    return min(times)
