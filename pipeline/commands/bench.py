"""``bench``: speed and memory benchmarks, reported as ratios against a baseline measured side by side."""

from __future__ import annotations

import importlib
import importlib.util

from pipeline.bench import BENCHMARKS


def _available() -> dict[str, str]:
    return {name: module for name, module in BENCHMARKS.items() if importlib.util.find_spec(module) is not None}


def register(sub) -> None:
    available = _available()
    parser = sub.add_parser(
        "bench",
        help="benchmarks (speed and memory ratios against a baseline run side by side)",
        description="Measure this machine: each benchmark runs the baseline and the neurofusion path in the same "
        "process and prints both figures and their ratio. Benchmarks: "
        + "; ".join(f"{name}: {importlib.import_module(module).describe}" for name, module in available.items()),
    )
    benches = parser.add_subparsers(dest="benchmark", required=True, metavar="BENCHMARK")
    for name, module_name in available.items():
        module = importlib.import_module(module_name)
        child = benches.add_parser(name, help=module.describe, description=module.describe)
        module.add_arguments(child)
        child.set_defaults(func=module.run)
