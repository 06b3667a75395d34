"""``neurofusion bench train``: what lifts the CPU training step of the 3D CNN, side by side in one process.

Execution settings (``--settings``) of the 3D CNN at each thread count: contiguous or channels-last 3D memory (the
default), bf16 autocast, oneDNN (mkldnn) off, oneDNN convolutions in bf16 (``torch.backends.mkldnn.conv
.fp32_precision``) and ``torch.compile`` (inductor). Then batch sizes (``--batch-sizes``) and input grids
(``--grids``: the bundles' head box, the paper study's registered brain grid, the template's brain box) with the
default setting and compiled, and the fused model and the LSTM at the bundles' defaults (``--what``).

Every run trains with the allocator the bundles train with (:func:`pipeline.engine.retain_freed_memory`;
``neurofusion bench malloc`` compares it with glibc's default) and starts from the same weights as the other runs of
its network. A setting's logits on a held-out batch are compared with those of the default (channels-last fp32,
eager, torch's thread count; a setting counts as giving the same results when they agree within ``--tolerance``),
and so are its class probabilities after the same training steps. Timed passes of all runs are interleaved, so load
from elsewhere on the machine hits every run alike; the first step (with ``torch.compile``: the compilation) is
timed on its own. FLOPs of one step (forward and backward) come from ``torch.utils.flop_counter``; the reference is
this machine's fp32 matrix-multiply rate, measured in the same run at the same thread count. ``--profile N`` lists
the N operators that take most of the default setting's step (torch.profiler), where the time goes;
``--convolutions`` times each oneDNN convolution primitive of that step (its forward, data-gradient and
weight-gradient passes of every layer, from oneDNN's verbose log) against the matmul rate, with the implementation
oneDNN chose, and the fraction the step would reach were everything but its convolutions free.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import math
import os
import re
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from pipeline.bench import best_time

if TYPE_CHECKING:  # torch is imported where used: `neurofusion --help` loads every benchmark module
    import torch

describe = (
    "3D CNN train step: samples/s and achieved FLOP/s (fraction of this machine's fp32 matmul rate) for thread "
    "counts, channels-last 3D, bf16, oneDNN, torch.compile, batch sizes and grids, with the change in results; "
    "the fused model and the LSTM"
)

#: ``--settings`` name -> how the setting differs from the default (channels-last 3D, fp32, oneDNN, eager)
SETTINGS = {
    "contiguous": {"channels_last": False},
    "channels-last": {},
    "bf16": {"bf16": True},
    "mkldnn-off": {"mkldnn": False},
    "onednn-bf16": {"onednn_bf16": True},
    "compile": {"compiled": True},
}
GRIDS = ("bundle", "paper", "brain")
MODELS = ("cnn", "fused", "lstm")


@dataclass(frozen=True)
class Setting:
    """One execution setting of the training step."""

    threads: int
    channels_last: bool = True
    bf16: bool = False
    mkldnn: bool = True
    onednn_bf16: bool = False
    compiled: bool = False

    def __str__(self) -> str:
        words = [
            f"{self.threads} thread{'s' if self.threads > 1 else ''}",
            "channels-last" if self.channels_last else "contiguous",
            "bf16" if self.bf16 else "fp32",
        ]
        words += ["mkldnn off"] * (not self.mkldnn) + ["oneDNN bf16 conv"] * self.onednn_bf16
        return ", ".join(words + ["compiled"] * self.compiled)


@dataclass(frozen=True)
class Grid:
    """An input grid of the 3D CNN: voxels and spacing."""

    name: str
    size: tuple[int, int, int]
    pixdim: float

    def __str__(self) -> str:
        return " ".join([self.name] * (self.name in GRIDS) + [f"{'x'.join(map(str, self.size))}@{self.pixdim:g}"])


@dataclass(frozen=True)
class Case:
    """What one run trains: a network (``cnn``, ``fused``, ``lstm``) on batches of a grid, under a setting."""

    model: str
    setting: Setting
    grid: Grid
    batch_size: int


def grid_spec(text: str) -> str:
    """``--grids`` item: a grid's name or ``XxYxZ@MM``."""
    if text in GRIDS or re.fullmatch(r"\d+x\d+x\d+@\d+(\.\d+)?", text):
        return text
    raise argparse.ArgumentTypeError(f"{text!r} is neither one of {', '.join(GRIDS)} nor XxYxZ@MM (e.g. 36x44x36@4)")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--what", nargs="+", choices=MODELS, default=list(MODELS), help="networks (default all)")
    parser.add_argument(
        "--settings", nargs="+", choices=list(SETTINGS), default=list(SETTINGS), help="3D CNN settings (default all)"
    )
    parser.add_argument(
        "--batch-sizes",
        type=int,
        nargs="+",
        default=[4, 8, 16],
        help="samples per step; the first (default 4, the bundles') is the one of the settings, grids and models",
    )
    parser.add_argument(
        "--grids",
        type=grid_spec,
        nargs="+",
        default=list(GRIDS),
        help="3D CNN input grids, the first for the settings: bundle (the bundles' head box), paper (the paper "
        "study's registered brain grid), brain (the template's brain box at the bundles' spacing) or XxYxZ@MM",
    )
    parser.add_argument("--steps", type=int, default=4, help="training steps per timed run and per result check")
    parser.add_argument("--repeats", type=int, default=3, help="timed passes of each run; the best is reported")
    parser.add_argument(
        "--tolerance",
        type=float,
        default=1e-3,
        help="largest relative change of the logits that counts as the same result (default 1e-3)",
    )
    parser.add_argument(
        "--cold-compile",
        action="store_true",
        help="torch.compile without its on-disk caches, as the first training process on a machine compiles",
    )
    parser.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    parser.add_argument(
        "--profile",
        type=int,
        default=0,
        metavar="N",
        help="also list the N operators that take most of the default setting's step at each thread count, with "
        "their share of its CPU time (torch.profiler; default 0: none)",
    )
    parser.add_argument(
        "--convolutions",
        action="store_true",
        help="also time every oneDNN convolution primitive of the default setting's step at each thread count "
        "(CPU): pass, layer, implementation, GFLOP/s and fraction of the matmul rate",
    )


def to_grid(spec: str) -> Grid:
    """The grid a ``--grids`` item names, read from the bundles and the paper study where it is theirs."""
    import numpy as np
    from monai.bundle import ConfigParser

    from pipeline.engine import REPO_BUNDLES

    if spec not in GRIDS:
        size, pixdim = spec.split("@")
        return Grid("custom", tuple(int(n) for n in size.split("x")), float(pixdim))
    keys = ConfigParser.load_config_file(REPO_BUNDLES / "mri_cnn3d" / "configs" / "train.yaml")
    if spec == "paper":
        keys = ConfigParser.load_config_file(REPO_BUNDLES / "experiments" / "paper_study.yaml")["overrides"]
    size, pixdim = tuple(keys["mri_spatial_size"]), float(keys["mri_pixdim"][0])
    if spec == "brain":
        from pipeline.transforms.registration import brain_box_mm

        low, high = brain_box_mm()
        size = tuple(int(n) for n in np.ceil((np.asarray(high) - np.asarray(low)) / pixdim))
    return Grid(spec, size, pixdim)


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


def bundle_fmri() -> tuple[int, int]:
    """ROIs and time points of the fMRI sequence at the bundles' defaults (atlas, ``fmri_timepoints``)."""
    from monai.bundle import ConfigParser

    from pipeline.data.atlas import load_atlas
    from pipeline.engine import REPO_BUNDLES

    keys = ConfigParser.load_config_file(REPO_BUNDLES / "mri_fmri_fusion" / "configs" / "train.yaml")
    return len(load_atlas(keys["atlas"]).labels), int(keys["fmri_timepoints"])


def training_batches(case: Case, count: int, device: torch.device, seed: int) -> list:
    """``count`` (inputs, labels) batches of ``case``: the T1 cubes and/or an fMRI sequence at the bundles' size."""
    import torch

    cubes = batches_of_cubes(count, (case.batch_size, 1, *case.grid.size), device, seed)
    if case.model == "cnn":
        return [((images,), labels) for images, labels in cubes]
    rois, timepoints = bundle_fmri()
    generator = torch.Generator().manual_seed(seed)
    series = [torch.randn(case.batch_size, rois, timepoints, generator=generator).to(device) for _ in cubes]
    if case.model == "lstm":
        return [((s,), labels) for s, (_, labels) in zip(series, cubes)]
    return [((images, s), labels) for s, (images, labels) in zip(series, cubes)]


def network_of(case: Case) -> torch.nn.Module:
    """The untrained network of ``case`` (bundle defaults; the 3D CNN in the setting's memory layout)."""
    from pipeline.networks import FMRIClassifier, FusionClassifier, MRIClassifier

    if case.model == "cnn":
        return MRIClassifier(channels_last=case.setting.channels_last)
    rois, _ = bundle_fmri()
    return FusionClassifier(n_rois=rois) if case.model == "fused" else FMRIClassifier(n_rois=rois)


class Run:
    """A network from given weights, with its optimizer and batches, run as ``case`` says.

    Args:
        case: network, setting, grid and batch size.
        weights: state dict every run of that network starts from.
        batches: (inputs, labels) of the training steps.
    """

    def __init__(self, case: Case, weights: dict, batches: list) -> None:
        import torch

        self.case = case
        self.network = network_of(case).to(batches[0][1].device)
        self.network.load_state_dict(weights)
        self.forward = torch.compile(self.network, dynamic=False) if case.setting.compiled else self.network
        self.batches = batches
        self.optimizer = torch.optim.AdamW(self.network.parameters(), lr=1e-3)

    @contextlib.contextmanager
    def context(self):
        """Thread count and oneDNN flags of the setting (inductor draws dropout masks as eager torch does)."""
        import torch
        import torch._inductor.config

        setting, mkldnn = self.case.setting, torch.backends.mkldnn
        torch.set_num_threads(setting.threads)
        previous = mkldnn.enabled, mkldnn.conv.fp32_precision
        mkldnn.enabled = setting.mkldnn
        mkldnn.conv.fp32_precision = "bf16" if setting.onednn_bf16 else previous[1]
        try:
            with torch._inductor.config.patch(fallback_random=True):
                yield
        finally:
            mkldnn.enabled, mkldnn.conv.fp32_precision = previous

    def logits(self, inputs: tuple) -> torch.Tensor:
        import torch

        with torch.autocast(inputs[0].device.type, dtype=torch.bfloat16, enabled=self.case.setting.bf16):
            return self.forward(*inputs).float()

    def steps(self, count: int | None = None) -> None:
        """One training step per batch, or per each of the first ``count`` (seconds are taken around this)."""
        import torch.nn.functional as F

        with self.context():
            for inputs, labels in self.batches[:count]:
                self.optimizer.zero_grad(set_to_none=True)
                F.cross_entropy(self.logits(inputs), labels).backward()
                self.optimizer.step()
            _synchronize(labels.device)

    def probabilities(self, inputs: tuple, logits: bool = False) -> torch.Tensor:
        """Class probabilities (or the logits) of the network in evaluation mode."""
        import torch

        self.network.eval()
        with self.context(), torch.no_grad():
            output = self.logits(inputs)
        self.network.train()
        return output if logits else torch.softmax(output, dim=1)


def costliest_operators(run: Run, top: int) -> list[tuple[str, float]]:
    """The ``top`` operators by their own CPU time in ``run``'s training steps (torch.profiler), each with its share
    of the steps' CPU time."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as profiled:
        run.steps()
    events = sorted(profiled.key_averages(), key=lambda event: event.self_cpu_time_total, reverse=True)
    total = sum(event.self_cpu_time_total for event in events)
    return [(event.key, event.self_cpu_time_total / total) for event in events[:top]]


@dataclass(frozen=True)
class Primitive:
    """One oneDNN convolution primitive of a training step, as oneDNN's verbose log names it.

    Args:
        implementation: oneDNN's kernel (e.g. ``brg_conv_fwd:avx2``, ``x64:gemm:jit``: im2col and a GEMM).
        kind: ``forward_training``, ``backward_data`` or ``backward_weights``.
        problem: oneDNN's problem descriptor (``mb4_ic1oc8_id48od48kd3sd1dd0pd1_ih56...``).
    """

    implementation: str
    kind: str
    problem: str

    @property
    def sizes(self) -> dict[str, int]:
        return {key: int(value) for key, value in re.findall(r"([a-z]+)(\d+)", self.problem)}

    @property
    def flops(self) -> int:
        """Multiply-adds x 2 of the pass (each of the three passes of a layer does as many)."""
        n = self.sizes
        kernel, out = n["kd"] * n["kh"] * n["kw"], n["od"] * n["oh"] * n["ow"]
        return 2 * n["mb"] * n["oc"] * (n["ic"] // n.get("g", 1)) * out * kernel

    def __str__(self) -> str:
        n = self.sizes
        return f"{n['ic']}->{n['oc']} ch, {n['id']}x{n['ih']}x{n['iw']} stride {n['sd']}"


@contextlib.contextmanager
def _stdout_to(path: str) -> Iterator[None]:
    """Send this process's file descriptor 1 (where oneDNN prints its log) to ``path`` for the block."""
    import ctypes

    flush = ctypes.CDLL(None).fflush  # C's stdio buffer, which oneDNN's printf fills
    sys.stdout.flush()
    saved = os.dup(1)
    with open(path, "w") as log:
        os.dup2(log.fileno(), 1)
        try:
            yield
        finally:
            flush(None)
            os.dup2(saved, 1)
            os.close(saved)


def convolution_seconds(run: Run) -> dict[Primitive, float]:
    """Seconds a training step of ``run`` spends in each oneDNN convolution primitive (mean over its steps), from
    oneDNN's own timing of every execution in its verbose log."""
    import torch

    seconds: dict[Primitive, float] = {}
    with tempfile.TemporaryDirectory() as folder:
        log = os.path.join(folder, "onednn.log")
        with _stdout_to(log), torch.backends.mkldnn.verbose(torch.backends.mkldnn.VERBOSE_ON):
            run.steps()
        for line in open(log):
            fields = line.strip().split(",")
            if len(fields) > 8 and fields[3] == "exec" and fields[5] == "convolution":
                primitive = Primitive(fields[6], fields[7], fields[-2])
                seconds[primitive] = seconds.get(primitive, 0.0) + float(fields[-1]) / 1e3 / len(run.batches)
    return seconds


def _print_convolutions(run: Run, peak: float) -> None:
    """The convolution primitives of ``run``'s step against the matmul rate ``peak``, and what they bound."""
    seconds = convolution_seconds(run)
    if not seconds:
        print(f"no oneDNN convolutions in the step of {run.case.setting} (oneDNN off or not the CPU)")
        return
    print(f"the default step's convolutions at {run.case.setting} (oneDNN's timing, mean of {len(run.batches)} steps):")
    print(f"  {'pass':17} {'layer':34} {'implementation':22} {'ms':>7} {'GFLOP/s':>8} {'of matmul':>9}")
    for primitive, spent in seconds.items():
        rate = primitive.flops / spent
        print(
            f"  {primitive.kind:17} {primitive!s:34} {primitive.implementation:22} {spent * 1e3:7.2f} "
            f"{rate / 1e9:8.1f} {rate / peak:9.1%}"
        )
    flops, spent = sum(p.flops for p in seconds), sum(seconds.values())
    print(
        f"  all: {flops / 1e9:.3g} GFLOP in {spent * 1e3:.1f} ms a step, {flops / spent / peak:.1%} of the matmul "
        "rate: the most the step reaches were everything but its convolutions free"
    )


def step_flops(run: Run) -> int:
    """FLOPs of one fp32 training step of ``run``'s network on its first batch (forward and backward; the
    optimizer's element-wise work is not counted)."""
    from torch.utils.flop_counter import FlopCounterMode

    case = dataclasses.replace(run.case, setting=Setting(run.case.setting.threads))
    with FlopCounterMode(display=False) as counter:
        Run(case, run.network.state_dict(), run.batches[:1]).steps()
    return counter.get_total_flops()


def plan(args: argparse.Namespace, thread_counts: list[int], device: torch.device) -> list[Case]:
    """The runs: the settings of the 3D CNN, then its batch sizes (default setting) and grids (default and
    compiled), then the other networks, each at every thread count."""
    grids = [to_grid(spec) for spec in args.grids]
    batch = args.batch_sizes[0]
    settings = ["channels-last"] + [s for s in args.settings if s != "channels-last"]
    if device.type == "cuda":  # oneDNN is the CPU's library
        settings = [s for s in settings if "mkldnn" not in s and "onednn" not in s]
    per_grid = [s for s in ("channels-last", "compile") if s in settings]
    cnn = []
    if "cnn" in args.what:
        cnn = [(s, grids[0], batch) for s in settings] + [("channels-last", grids[0], b) for b in args.batch_sizes[1:]]
        cnn += [(s, g, batch) for g in grids[1:] for s in per_grid]
    cases = []
    for threads in thread_counts:
        cases += [Case("cnn", Setting(threads, **SETTINGS[s]), g, b) for s, g, b in cnn]
        cases += [Case(m, Setting(threads), grids[0], batch) for m in MODELS[1:] if m in args.what]
    return cases


def _logit_changes(runs: list[Run], reference: Run, held_out: tuple) -> dict:
    """Per run: relative change of its logits (same weights, evaluation mode) against ``reference``'s."""
    start = {r: r.probabilities(held_out, logits=True) for r in runs}
    return {r: float((start[r] - start[reference]).norm() / start[reference].norm()) for r in runs}


def _trained_changes(runs: list[Run], reference: Run, held_out: tuple) -> dict:
    """Per run: largest class-probability change against ``reference`` after the same training steps."""
    import torch

    for r in runs:  # the same training steps, with the same dropout draws
        torch.manual_seed(0)
        r.steps()
    return {r: float((r.probabilities(held_out) - reference.probabilities(held_out)).abs().max()) for r in runs}


def _first_step(run: Run) -> float:
    """Seconds of the run's first training step (with torch.compile: the compilation), with seeded dropout."""
    import torch

    torch.manual_seed(0)
    return best_time(lambda: run.steps(1), 1)


def _timed_passes(runs: list[Run], thread_counts: list[int], repeats: int) -> tuple[dict, dict]:
    """Best seconds per step of every run, and the best fp32 matmul FLOP/s at every thread count, from ``repeats``
    interleaved passes (load from elsewhere on the machine hits every run and the reference alike)."""
    import torch

    device = runs[0].batches[0][1].device
    seconds, peaks = {r: float("inf") for r in runs}, dict.fromkeys(thread_counts, 0.0)
    for _ in range(repeats):
        for threads in thread_counts:
            torch.set_num_threads(threads)
            peaks[threads] = max(peaks[threads], matmul_flops(device, 1))
        for r in runs:
            seconds[r] = min(seconds[r], best_time(r.steps, 1) / len(r.batches))
    return seconds, peaks


def _shape(case: Case) -> tuple:
    """What the batches of ``case`` depend on."""
    return case.model, case.grid, case.batch_size


def _runs(cases: list[Case], steps: int, device: torch.device) -> list[Run]:
    """A run per case; runs of one network start from the same weights, runs of one shape train on the same
    batches."""
    import torch

    weights, batches = {}, {}
    for case in cases:
        if case.model not in weights:
            torch.manual_seed(0)
            weights[case.model] = network_of(dataclasses.replace(case, setting=Setting(1, channels_last=False)))
            weights[case.model] = weights[case.model].state_dict()
        if _shape(case) not in batches:
            batches[_shape(case)] = training_batches(case, steps, device, seed=0)
    return [Run(c, weights[c.model], batches[_shape(c)]) for c in cases]


def _print_rows(runs: list[Run], seconds: dict, first: dict, checks: tuple, peaks: dict, reference: dict) -> None:
    """One line per run (GFLOP: of one training step); ``reference[threads]`` is the run its speed-up (in
    samples/s) is measured against."""
    header = ("net", "grid", "batch", "GFLOP", "setting", "samples/s", "GFLOP/s", "of matmul", "speed-up", "logits")
    print("{:5} {:16} {:>5} {:>6} {:50} {:>9} {:>8} {:>9} {:>8} {:>8}  trained 1st step".format(*header))
    flops = {_shape(r.case): step_flops(r) for r in runs if r.case.model == "cnn"}  # the LSTM's are not counted
    dash = "-"
    for r in runs:
        case, ref, cnn = r.case, reference.get(r.case.setting.threads), r.case.model == "cnn"
        rate, achieved = case.batch_size / seconds[r], flops.get(_shape(case), 0) / seconds[r]
        print(
            f"{case.model:5} {case.grid!s:16} {case.batch_size:5}",
            f"{flops[_shape(case)] / 1e9:6.3g}" if cnn else f"{dash:>6}",
            f"{case.setting!s:50} {rate:9.1f}",
            f"{achieved / 1e9:8.1f} {achieved / peaks[case.setting.threads]:9.1%}" if cnn else f"{dash:>8} {dash:>9}",
            f"{rate * seconds[ref] / ref.case.batch_size:7.2f}x" if cnn and ref else f"{dash:>8}",
            *(f"{c[r]:8.1e}" if r in c else f"{dash:>8}" for c in checks),
            f"{first[r]:7.2f}s",
        )


def _conclude(runs: list[Run], seconds: dict, first: dict, logits: dict, tolerance: float, reference: dict) -> None:
    """Per thread count: the fastest setting whose results match, and how many steps repay compiling."""
    for threads, ref in reference.items():
        own = [r for r in runs if r.case.setting.threads == threads]
        best = min((r for r in own if logits[r] <= tolerance), key=seconds.get)
        print(
            f"fastest with the same results (logits within {tolerance:g}) at {threads} thread(s): "
            f"{best.case.setting}, {seconds[ref] / seconds[best]:.2f}x {ref.case.setting}"
        )
        for r in (r for r in own if r.case.setting.compiled):
            compiling, saved = first[r] - seconds[r], seconds[ref] - seconds[r]
            repaid = f"repaid after {math.ceil(compiling / saved)} steps" if saved > 0 else "never repaid"
            print(f"  torch.compile at {threads} thread(s): compiling took {compiling:.1f} s, {repaid}")


def _legend(runs: list[Run], first_shape: list[Run], default_threads: int, cold: bool) -> None:
    """What the columns measure."""
    if first_shape:
        case = first_shape[0].case
        print(
            f"speed-up: samples/s against the default setting on {case.grid}, batch {case.batch_size}, at the same "
            "thread count"
        )
    print(
        f"logits: relative change of the network's logits (same weights) against the default setting at "
        f"{default_threads} thread(s); trained: largest change of a class probability after the same "
        f"1 + {len(runs[0].batches)} training steps (training amplifies rounding, so a fp32 setting with another "
        "thread count moves it too); 1st step: seconds of the first training step (with torch.compile: compiling, "
        f"{'without' if cold else 'with'} inductor's on-disk caches)"
    )


def run(args: argparse.Namespace) -> int:
    import torch
    import torch._dynamo.config
    import torch._inductor.config

    from pipeline.engine import retain_freed_memory

    retain_freed_memory()  # the allocator the bundles train with (neurofusion bench malloc compares the two)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    default_threads = torch.get_num_threads()
    thread_counts = sorted({1, default_threads}) if device.type == "cpu" else [default_threads]
    runs = _runs(plan(args, thread_counts, device), max(1, args.steps), device)
    # the settings' runs (the 3D CNN on the first grid and batch size); the default setting is their reference
    first_shape = [r for r in runs if r.case.model == "cnn" and r.batches is runs[0].batches]
    reference = {r.case.setting.threads: r for r in first_shape if r.case.setting == Setting(r.case.setting.threads)}
    held_out = training_batches(runs[0].case, 1, device, seed=1)[0][0]
    # every (setting, shape, thread count) is a graph of its own; none may fall back to eager at the limit
    limit = torch._dynamo.config.patch(recompile_limit=2 * len(runs))
    with limit, torch._inductor.config.patch(force_disable_caches=args.cold_compile):
        logits = _logit_changes(first_shape, reference[default_threads], held_out) if first_shape else {}
        first = {r: _first_step(r) for r in runs}
        trained = _trained_changes(first_shape, reference[default_threads], held_out) if first_shape else {}
        seconds, peaks = _timed_passes(runs, thread_counts, args.repeats)
    torch.set_num_threads(default_threads)
    print(f"device {device}, torch {torch.__version__}; {len(runs[0].batches)} steps a timed pass")
    print("fp32 matmul: " + ", ".join(f"{peaks[t] / 1e9:.0f} GFLOP/s at {t} thread(s)" for t in thread_counts))
    _print_rows(runs, seconds, first, (logits, trained), peaks, reference)
    _legend(runs, first_shape, default_threads, args.cold_compile)
    if first_shape:
        _conclude(first_shape, seconds, first, logits, args.tolerance, reference)
    for threads, run in sorted(reference.items()) if args.profile > 0 else ():
        shares = ", ".join(f"{name} {share:.0%}" for name, share in costliest_operators(run, args.profile))
        print(f"where the default step's CPU time goes at {threads} thread(s): {shares}")
    for threads, run in sorted(reference.items()) if args.convolutions else ():
        _print_convolutions(run, peaks[threads])
    torch.set_num_threads(default_threads)
    return 0
