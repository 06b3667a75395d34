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
    torch.set_num_threads(1)  # one thread count: every setting, torch.compile included, runs once
    grids = ["16x16x16@9", "12x12x12@12"]
    args = ["--steps", "1", "--repeats", "1", "--grids", *grids, "--batch-sizes", "2", "3"]
    assert main(["bench", "train", *args]) == 0
    out = capsys.readouterr().out
    setting = r"1 thread(?:, [\w-]+(?: [\w-]+)*)*"
    row = rf"^(cnn|fused|lstm) +(\d+x\d+x\d+@\d+) +(\d) +(\S+) +({setting}) +([\d.]+) +(\S+) +(\S+) +(\S+) +(\S+)"
    rows = re.findall(row, out, re.M)
    settings = {r[4] for r in rows if r[:3] == ("cnn", "16x16x16@9", "2")}
    assert settings == {
        "1 thread, channels-last, fp32",
        "1 thread, contiguous, fp32",
        "1 thread, channels-last, bf16",
        "1 thread, channels-last, fp32, mkldnn off",
        "1 thread, channels-last, fp32, oneDNN bf16 conv",
        "1 thread, channels-last, fp32, compiled",
    }
    # the second batch size with the default setting; the second grid default and compiled; the other networks
    assert [r[:3] for r in rows[6:]] == [("cnn", "16x16x16@9", "3")] + [("cnn", "12x12x12@12", "2")] * 2 + [
        ("fused", "16x16x16@9", "2"),
        ("lstm", "16x16x16@9", "2"),
    ]
    assert all(float(r[5]) > 0 for r in rows)
    assert all(float(r[3]) > 0 and float(r[7].rstrip("%")) > 0 for r in rows if r[0] == "cnn")
    flops = {r[1:3]: float(r[3]) for r in rows if r[0] == "cnn"}  # a larger grid or batch costs more FLOPs
    assert flops["16x16x16@9", "3"] == pytest.approx(1.5 * flops["16x16x16@9", "2"], rel=0.02)
    assert flops["12x12x12@12", "2"] < flops["16x16x16@9", "2"]
    logits = {r[4]: float(r[9]) for r in rows[:6]}
    assert logits["1 thread, channels-last, fp32"] == 0 and logits["1 thread, channels-last, bf16"] > 1e-4
    assert logits["1 thread, channels-last, fp32, compiled"] < 1e-3
    assert re.search(r"^fastest with the same results \(logits within 0\.001\) at 1 thread\(s\): 1 thread, ", out, re.M)
    assert re.search(
        r"^  torch\.compile at 1 thread\(s\): compiling took [\d.]+ s, (repaid after \d+|never)", out, re.M
    )


def test_bench_train_profile_lists_the_costliest_operators_of_the_default_step(capsys, keep_torch_threads):
    torch.set_num_threads(1)
    args = ["--what", "cnn", "--settings", "channels-last", "--grids", "16x16x16@9", "--batch-sizes", "2"]
    assert main(["bench", "train", *args, "--steps", "1", "--repeats", "1", "--profile", "3"]) == 0
    line = re.search(r"^where the default step's CPU time goes at 1 thread\(s\): (.+)$", capsys.readouterr().out, re.M)
    operators = re.findall(r"(aten::\w+|[\w.#:]+) (\d+)%", line.group(1))
    shares = [int(share) for _, share in operators]
    assert len(operators) == 3 and shares == sorted(shares, reverse=True) and 0 < sum(shares) <= 100
    assert any(name.startswith("aten::") and "conv" in name for name, _ in operators)


def test_bench_train_times_every_convolution_pass_of_the_default_step_and_they_add_up_to_its_flops(
    capsys, keep_torch_threads
):
    torch.set_num_threads(1)
    args = ["--what", "cnn", "--settings", "channels-last", "--grids", "16x16x16@9", "--batch-sizes", "2"]
    assert main(["bench", "train", *args, "--steps", "2", "--repeats", "1", "--convolutions"]) == 0
    out = capsys.readouterr().out
    step_gflop = float(re.search(r"^cnn +16x16x16@9 +2 +([\d.]+) 1 thread", out, re.M).group(1))
    rows = re.findall(r"^  (forward_training|backward_data|backward_weights) +(\d+)->(\d+) ch, (\d+)x", out, re.M)
    # four layers forward and weight gradient; no data gradient of the first (the image needs none)
    passes = sorted((kind, int(i), int(o)) for kind, i, o, _ in rows)
    layers = [(1, 8), (8, 16), (16, 32), (32, 64)]
    expected = [("backward_data", *c) for c in layers[1:]] + [
        (k, *c) for k in ("backward_weights", "forward_training") for c in layers
    ]
    assert passes == sorted(expected)
    total = re.search(r"^  all: ([\d.]+) GFLOP in [\d.]+ ms a step, ([\d.]+)% of the matmul rate", out, re.M)
    assert float(total.group(1)) == pytest.approx(step_gflop, rel=0.01) and 0 < float(total.group(2)) < 100


def test_bench_train_refuses_a_grid_it_cannot_read(capsys):
    with pytest.raises(SystemExit):
        main(["bench", "train", "--grids", "16x16"])
    assert "'16x16' is neither one of bundle, paper, brain nor XxYxZ@MM" in capsys.readouterr().err


def test_bench_train_reads_its_named_grids_from_the_bundle_the_paper_study_and_the_template():
    from pipeline.bench.train import to_grid

    assert (to_grid("bundle").size, to_grid("bundle").pixdim) == ((48, 56, 48), 3.0)
    assert (to_grid("paper").size, to_grid("paper").pixdim) == ((36, 44, 36), 4.0)
    brain = to_grid("brain")  # the MNI152 brain mask's box (144 x 180 x 154 mm) in 3 mm voxels, rounded up
    assert (brain.size, brain.pixdim) == ((48, 60, 52), 3.0)
