"""``neurofusion bench mri`` and ``bench train`` run and report their figures (speed is never asserted)."""

from __future__ import annotations

import re

import pytest
import torch

from pipeline.cli import main


@pytest.fixture
def keep_torch_threads():
    """The benchmarks' --threads sets torch's global thread count; later tests get the original back."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def test_bench_mri_prints_eager_lazy_and_cache_ratios_and_cache_memory(capsys, keep_torch_threads):
    assert main(["bench", "mri", "--quick", "--repeats", "1", "--subjects", "8", "--threads", "1"]) == 0
    out = capsys.readouterr().out
    assert len(re.findall(r"\d+ +\d+ +[\d.]+x  r=[01]\.\d{4}, 0\.0\d{3}", out)) == 6
    assert re.search(r"the T1s above +default +[\d.]+ +[\d.]+ +\d+x", out)
    assert re.search(r"in memory \(CacheDataset\) +peak RSS \+ *\d+ MiB = +\d+ KiB/subject", out)


def test_bench_train_prints_throughput_flop_fraction_and_the_fastest_setting_with_the_same_results(
    capsys, keep_torch_threads
):
    args = ["--steps", "2", "--repeats", "1", "--spatial-size", "16", "16", "16", "--batch-size", "2"]
    assert main(["bench", "train", *args]) == 0
    out = capsys.readouterr().out
    rows = re.findall(r"^(\d threads?, \S+, (?:fp32|bf16)) +([\d.]+) +([\d.]+) +([\d.]+)% +([\d.]+)x +(\S+)", out, re.M)
    assert len(rows) == 4 * len({1, torch.get_num_threads()})
    assert all(float(row[1]) > 0 and 0 < float(row[3]) for row in rows)
    assert re.search(r"^fastest with the same results \(logits within 0\.001\): \d threads?, ", out, re.M)
