"""No-atlas fMRI input: a small 3D CNN shared over the frames of a downsampled run (the CNN half of a CNN-LSTM)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from pipeline.networks.mri_cnn import MRIEncoder3D


class FrameEncoder3D(nn.Module):
    """Encode every frame of ``[B, X, Y, Z, T]`` with one 3D CNN (weights shared over time) -> ``[B, frame_dim, T]``,
    a feature sequence a recurrent encoder reads like ROI series.

    Args:
        channels: output channels of the CNN blocks (every block after the first halves the resolution).
        frame_dim: features per frame.
        dropout: dropout before each frame's projection.
    """

    def __init__(self, channels: Sequence[int] = (8, 16, 32), frame_dim: int = 32, dropout: float = 0.2) -> None:
        super().__init__()
        self.cnn = MRIEncoder3D(1, channels, frame_dim, dropout)
        self.frame_dim = frame_dim

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        """``[B, X, Y, Z, T]`` -> ``[B, frame_dim, T]``."""
        batch, steps = frames.shape[0], frames.shape[4]
        stacked = frames.permute(0, 4, 1, 2, 3).reshape(
            batch * steps, 1, frames.shape[1], frames.shape[2], frames.shape[3]
        )
        return self.cnn(stacked).reshape(batch, steps, self.frame_dim).transpose(1, 2)
