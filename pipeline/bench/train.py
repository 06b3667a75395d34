"""``neurofusion bench train``: the 3D CNN's training step under execution settings (threads, channels-last 3D memory,
bf16 autocast), each against the fp32 baseline in the same process.

Every setting starts from the same weights. Its logits on a held-out batch are compared with the baseline's (a
setting counts as giving the same results when they agree within ``--tolerance``), and so are its class probabilities
after the same training steps. Timed passes of all settings are interleaved. FLOPs of one step (forward and backward)
come from ``torch.utils.flop_counter``; the reference is this machine's fp32 matrix-multiply rate, measured in the
same run at the same thread count.
"""

from __future__ import annotations

import argparse
import itertools
from dataclasses import dataclass
from typing import TYPE_CHECKING

from pipeline.bench import best_time

if TYPE_CHECKING:  # torch is imported where used: `neurofusion --help` loads every benchmark module
    import torch

describe = (
    "3D CNN train step: samples/s and achieved FLOP/s (fraction of this machine's fp32 matmul rate) for thread "
    "counts, channels-last 3D and bf16 autocast, with the change in results against fp32"
)


@dataclass(frozen=True)
class Setting:
    """One execution setting of the training step."""

    threads: int
    channels_last: bool
    bf16: bool

    def __str__(self) -> str:
        memory = "channels_last_3d" if self.channels_last else "contiguous"
        return f"{self.threads} thread{'s' if self.threads > 1 else ''}, {memory}, {'bf16' if self.bf16 else 'fp32'}"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--batch-size", type=int, default=4, help="samples per step (default 4, the bundles')")
    parser.add_argument(
        "--spatial-size", type=int, nargs=3, default=(48, 56, 48), metavar=("X", "Y", "Z"), help="input grid"
    )
    parser.add_argument("--steps", type=int, default=10, help="training steps per timed run and per result check")
    parser.add_argument("--repeats", type=int, default=3, help="timed passes of each setting; the best is reported")
    parser.add_argument(
        "--tolerance",
        type=float,
        default=1e-3,
        help="largest relative change of the logits that counts as the same result (default 1e-3)",
    )
    parser.add_argument("--device", help="cpu or cuda (default: cuda when available)")


def _synchronize(device: torch.device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_flops(device: torch.device, repeats: int, size: int | None = None) -> float:
    """fp32 matrix-multiply FLOP/s of ``device`` (best of ``repeats``), the machine's reference rate."""
    import torch

    size = size or (8192 if device.type == "cuda" else 2048)
    a, b = (torch.randn(size, size, device=device) for _ in range(2))

    def multiply() -> None:
        torch.mm(a, b)
        _synchronize(device)

    multiply()
    return 2 * size**3 / best_time(multiply, repeats)


def batches_of_cubes(count: int, shape: tuple, device: torch.device, seed: int) -> list:
    """``count`` (images, labels) batches a network learns in a few steps: noise plus a bright cube whose position
    depends on the class (uniform noise alone leaves the probabilities where they start, hiding any difference)."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    batches = []
    for _ in range(count):
        labels = torch.randint(0, 3, (shape[0],), generator=generator)
        images = 0.2 * torch.rand(shape, generator=generator)
        for index, label in enumerate(labels.tolist()):
            start = [(label + 1) * size // 5 for size in shape[2:]]
            images[index, :, start[0] : start[0] + 8, start[1] : start[1] + 8, start[2] : start[2] + 8] += 0.8
        batches.append((images.to(device), labels.to(device)))
    return batches


class Run:
    """The 3D CNN from given weights, with its optimizer and batches, run as ``setting`` says.

    Args:
        setting: execution setting.
        weights: state dict every setting starts from.
        batches: (images, labels) of the training steps.
    """

    def __init__(self, setting: Setting, weights: dict, batches: list) -> None:
        import torch

        from pipeline.networks import MRIClassifier

        self.setting = setting
        self.network = MRIClassifier(channels_last=setting.channels_last).to(batches[0][0].device)
        self.network.load_state_dict(weights)
        self.batches = batches
        self.optimizer = torch.optim.AdamW(self.network.parameters(), lr=1e-3)

    def logits(self, images: torch.Tensor) -> torch.Tensor:
        import torch

        with torch.autocast(images.device.type, dtype=torch.bfloat16, enabled=self.setting.bf16):
            return self.network(images).float()

    def steps(self) -> None:
        """One training step per batch (seconds are taken around this)."""
        import torch
        import torch.nn.functional as F

        torch.set_num_threads(self.setting.threads)
        for images, labels in self.batches:
            self.optimizer.zero_grad(set_to_none=True)
            F.cross_entropy(self.logits(images), labels).backward()
            self.optimizer.step()
        _synchronize(images.device)

    def probabilities(self, images: torch.Tensor, logits: bool = False) -> torch.Tensor:
        """Class probabilities (or the logits) of the network in evaluation mode."""
        import torch

        self.network.eval()
        with torch.no_grad():
            output = self.logits(images)
        self.network.train()
        return output if logits else torch.softmax(output, dim=1)


def step_flops(weights: dict, batch: tuple) -> int:
    """FLOPs of one fp32 training step (forward and backward; the optimizer's element-wise work is not counted)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        Run(Setting(torch.get_num_threads(), False, False), weights, [batch]).steps()
    return counter.get_total_flops()


def _compare(runs: list[Run], baseline: Run, held_out: torch.Tensor) -> tuple[dict, dict]:
    """Per run: relative change of the initial logits, and largest class-probability change after the same steps."""
    import torch

    start = {r: r.probabilities(held_out, logits=True) for r in runs}
    logits = {r: float((start[r] - start[baseline]).norm() / start[baseline].norm()) for r in runs}
    for r in runs:  # the same training steps, with the same dropout draws, from the same weights
        torch.manual_seed(0)
        r.steps()
    trained = {r: float((r.probabilities(held_out) - baseline.probabilities(held_out)).abs().max()) for r in runs}
    return logits, trained


def _seconds_per_step(runs: list[Run], repeats: int) -> dict:
    seconds = {r: float("inf") for r in runs}
    for _ in range(repeats):  # interleaved, so load from elsewhere on the machine hits every setting alike
        for r in runs:
            seconds[r] = min(seconds[r], best_time(r.steps, 1) / len(r.batches))
    return seconds


def run(args: argparse.Namespace) -> int:
    import torch

    from pipeline.networks import MRIClassifier

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    default_threads = torch.get_num_threads()
    torch.manual_seed(0)
    weights = MRIClassifier(channels_last=False).state_dict()
    shape = (args.batch_size, 1, *args.spatial_size)
    batches = batches_of_cubes(max(1, args.steps), shape, device, seed=0)
    held_out = batches_of_cubes(1, shape, device, seed=1)[0][0]
    flops = step_flops(weights, batches[0])
    thread_counts = sorted({1, default_threads}) if device.type == "cpu" else [default_threads]
    peaks = {}
    for threads in thread_counts:
        torch.set_num_threads(threads)
        peaks[threads] = matmul_flops(device, args.repeats)
    runs = [Run(Setting(*s), weights, batches) for s in itertools.product(thread_counts, (False, True), (False, True))]
    baseline = runs[thread_counts.index(default_threads) * 4]
    logits, trained = _compare(runs, baseline, held_out)
    seconds = _seconds_per_step(runs, args.repeats)
    torch.set_num_threads(default_threads)
    print(f"device {device}, torch {torch.__version__}; batch {shape}: {flops / 1e9:.2f} GFLOP per training step")
    print("fp32 matmul: " + ", ".join(f"{peaks[t] / 1e9:.0f} GFLOP/s at {t} thread(s)" for t in thread_counts))
    header = ("setting", "samples/s", "GFLOP/s", "of matmul", "speed-up", "logits", "trained")
    print("{:36} {:>9} {:>8} {:>9} {:>8} {:>8} {:>8}".format(*header))
    for r in runs:
        print(
            f"{r.setting!s:36} {args.batch_size / seconds[r]:9.1f} {flops / seconds[r] / 1e9:8.1f} "
            f"{flops / seconds[r] / peaks[r.setting.threads]:9.1%} {seconds[baseline] / seconds[r]:7.2f}x "
            f"{logits[r]:8.1e} {trained[r]:8.1e}"
        )
    print(
        f"logits: relative change of the network's logits (same weights) against {baseline.setting}; trained: largest "
        f"change of a class probability after the same {len(batches)} training steps (training amplifies rounding, so "
        "a fp32 setting with another thread count moves it too)"
    )
    best = min((r for r in runs if logits[r] <= args.tolerance), key=seconds.get)
    print(
        f"fastest with the same results (logits within {args.tolerance:g}): {best.setting}, "
        f"{seconds[baseline] / seconds[best]:.2f}x {baseline.setting}"
    )
    return 0
