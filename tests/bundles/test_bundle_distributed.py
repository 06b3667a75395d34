"""Multi-process training with torchrun and multi_gpu_train.yaml (gloo on CPU), as on several GPUs."""

from __future__ import annotations

import os
import socket

import pandas as pd
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from pipeline.engine.metrics import ClassificationMetric, classification_metrics
from pipeline.inference.export import load_network
from tests.conftest import REPO, TINY_OVERRIDES, cli_overrides, run_cli

pytestmark = pytest.mark.slow  # trains bundles: left out by `make test-fast`

BUNDLE = REPO / "bundles" / "mri_fmri_fusion"


@pytest.fixture(scope="module")
def ddp_run(fold_dir, tmp_path_factory):
    """The fused bundle trained for one epoch by two torchrun processes; returns the run folder."""
    out = tmp_path_factory.mktemp("ddp")
    files = f"['{BUNDLE / 'configs' / 'train.yaml'}','{BUNDLE / 'configs' / 'multi_gpu_train.yaml'}']"
    overrides = {
        **TINY_OVERRIDES,
        "epochs": 1,
        "manifest": fold_dir / "repeat-0_fold-0" / "manifest.csv",
        "output_dir": out / "eval",
        "ckpt_dir": out / "ckpt",
    }
    torchrun = ["-m", "torch.distributed.run", "--standalone", "--nnodes=1", "--nproc_per_node=2"]
    result = run_cli(*torchrun, "-m", "monai.bundle", "run", "--config_file", files, *cli_overrides(overrides))
    assert result.returncode == 0, result.stderr[-3000:]
    return out


def test_distributed_checkpoint_loads_into_the_single_process_network(ddp_run):
    network, _ = load_network(BUNDLE, ddp_run / "ckpt" / "model.pt")  # strict: no DDP 'module.' prefixes
    resume = torch.load(ddp_run / "ckpt" / "checkpoint.pt", weights_only=True)
    network.load_state_dict(resume["model"])
    assert resume["trainer"]["iteration"] == resume["trainer"]["epoch_length"]  # one epoch done


def test_only_rank_zero_writes_the_learning_curve_and_tensorboard(ddp_run):
    assert list(pd.read_csv(ddp_run / "eval" / "training_log.csv")["epoch"]) == [1]
    assert len(list((ddp_run / "eval" / "tensorboard").iterdir())) == 1


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _metric_on_rank(rank: int, port: int, shares: list, results) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=len(shares))
    try:
        metric = ClassificationMetric("balanced_accuracy")
        pred, label = shares[rank]
        metric.update((pred, label))
        results[rank] = metric.compute()
    finally:
        dist.destroy_process_group()


def test_validation_metric_counts_every_row_of_uneven_process_shares_once():
    generator = torch.Generator().manual_seed(0)
    pred = torch.softmax(torch.randn(5, 3, generator=generator), dim=1)
    label = torch.tensor([0, 1, 2, 1, 0])
    shares = [(pred[:3], label[:3]), (pred[3:], label[3:])]  # what DistributedSampler(even_divisible=False) gives
    results = mp.Manager().dict()
    mp.start_processes(_metric_on_rank, args=(_free_port(), shares, results), nprocs=2, start_method="fork")
    expected = classification_metrics(label.numpy(), pred.numpy())["balanced_accuracy"]
    assert dict(results) == {0: pytest.approx(expected), 1: pytest.approx(expected)}
