"""Distributed data-parallel training under ``torchrun``: process group, device and network of this process.

``torchrun`` starts one process per GPU (or per CPU slot) and sets ``RANK``, ``LOCAL_RANK`` and ``WORLD_SIZE``;
the bundles' ``multi_gpu_train.yaml`` calls these helpers so the YAML stays free of backend logic.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist
from torch import nn


def local_device() -> torch.device:
    """``cuda:LOCAL_RANK`` when CUDA is available, else the CPU."""
    if torch.cuda.is_available():
        return torch.device(f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}")
    return torch.device("cpu")


def init_distributed() -> None:
    """Join the process group torchrun describes: NCCL on GPUs, gloo on CPUs (no-op when already joined)."""
    if dist.is_initialized():
        return
    if torch.cuda.is_available():
        torch.cuda.set_device(local_device())
        dist.init_process_group(backend="nccl")
    else:
        dist.init_process_group(backend="gloo")


def destroy_distributed() -> None:
    """Leave the process group (no-op outside one)."""
    if dist.is_initialized():
        dist.destroy_process_group()


def is_main_process() -> bool:
    """True outside distributed runs and on rank 0: the process that writes files and logs."""
    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


def distributed_network(network: nn.Module, device: torch.device) -> nn.parallel.DistributedDataParallel:
    """``network`` on ``device`` wrapped for data-parallel training (batch norms synchronised across GPUs).

    Checkpoints written through MONAI / ignite handlers store the unwrapped module, so they load into the
    single-process network.

    Args:
        network: the bundle's ``network_def``.
        device: this process's device (:func:`local_device`).
    """
    if device.type == "cuda":
        network = nn.SyncBatchNorm.convert_sync_batchnorm(network)
        return nn.parallel.DistributedDataParallel(network.to(device), device_ids=[device])
    return nn.parallel.DistributedDataParallel(network.to(device))
