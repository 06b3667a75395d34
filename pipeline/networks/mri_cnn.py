"""3D CNN encoder and classifier for structural T1 volumes."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from monai.networks.blocks import Convolution
from torch import nn

from pipeline.networks.vectorised import vectorise_backward


class MRIEncoder3D(nn.Module):
    """Stacked 3D convolution blocks (conv - norm - PReLU, stride-2 downsampling), global average pooled to an
    embedding.

    Batch normalisation is the default: the global average pool then measures *how much* of a pattern a scan holds
    (e.g. the CSF volume of enlarged ventricles). Instance normalisation standardises every channel of every scan
    on its own, so right before the pool it erases exactly that amount; on the synthetic cohort it learned
    ventricle enlargement far more slowly and generalised worse.

    Args:
        in_channels: input channels (1 for a T1).
        channels: output channels of each block; every block after the first halves the resolution.
        embed_dim: size of the embedding.
        dropout: dropout before the embedding projection.
        norm: MONAI norm name of the blocks (``"BATCH"``, ``"INSTANCE"``, ...).
        channels_last: run the convolutions in channels-last 3D memory layout: the same results, a faster CPU
            training step (``neurofusion bench train``).
    """

    def __init__(
        self,
        in_channels: int = 1,
        channels: Sequence[int] = (8, 16, 32, 64),
        embed_dim: int = 64,
        dropout: float = 0.2,
        norm: str = "BATCH",
        channels_last: bool = True,
    ) -> None:
        super().__init__()
        blocks = []
        previous = in_channels
        for index, width in enumerate(channels):
            blocks.append(
                Convolution(
                    spatial_dims=3,
                    in_channels=previous,
                    out_channels=width,
                    strides=1 if index == 0 else 2,
                    kernel_size=3,
                    act="PRELU",
                    norm=norm,
                )
            )
            previous = width
        self.features = vectorise_backward(nn.Sequential(*blocks))
        self.pool = nn.AdaptiveAvgPool3d(1)
        self.project = nn.Sequential(nn.Flatten(), nn.Dropout(dropout), nn.Linear(previous, embed_dim), nn.ReLU())
        self.embed_dim = embed_dim
        self.channels_last = channels_last
        self.frozen = False
        if channels_last:
            self.to(memory_format=torch.channels_last_3d)

    def freeze(self) -> MRIEncoder3D:
        """Fix the encoder as it is: no gradients, and evaluation mode even while the network around it trains.

        Without the second part a batch norm would still normalise by batch statistics and update its running ones
        at every training step, and dropout would stay on: a frozen encoder changes nothing at all.
        """
        self.requires_grad_(False)
        self.frozen = True
        return self.train(self.training)

    def train(self, mode: bool = True) -> MRIEncoder3D:
        """``nn.Module.train``; a :meth:`freeze`-d encoder stays in evaluation mode."""
        return super().train(mode and not self.frozen)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """``[B, C, X, Y, Z]`` -> ``[B, embed_dim]``."""
        if self.channels_last:
            image = image.contiguous(memory_format=torch.channels_last_3d)
        return self.project(self.pool(self.features(image)))


class MRIClassifier(nn.Module):
    """3D CNN on a T1 volume -> class logits.

    Args:
        num_classes: number of diagnoses.
        in_channels, channels, embed_dim, dropout, norm, channels_last: see :class:`MRIEncoder3D`.
    """

    def __init__(
        self,
        num_classes: int = 3,
        in_channels: int = 1,
        channels: Sequence[int] = (8, 16, 32, 64),
        embed_dim: int = 64,
        dropout: float = 0.2,
        norm: str = "BATCH",
        channels_last: bool = True,
    ) -> None:
        super().__init__()
        self.encoder = MRIEncoder3D(in_channels, channels, embed_dim, dropout, norm, channels_last)
        self.head = nn.Linear(embed_dim, num_classes)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """``[B, C, X, Y, Z]`` -> logits ``[B, num_classes]``."""
        return self.head(self.encoder(image))
