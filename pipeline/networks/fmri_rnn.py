"""Recurrent encoder and classifier for fMRI ROI time series ``[B, R, T]``."""

from __future__ import annotations

import torch
from torch import nn


class FMRIEncoder(nn.Module):
    """LSTM (or GRU) over time; each step reads the ``R`` ROI values. The embedding pools the top layer's outputs
    over time: their mean, their standard deviation and the last output. The standard deviation carries synchrony:
    when the ROIs a unit weighs fluctuate together (strong coupling, e.g. within the default-mode network) its
    output swings more than when they drift apart.

    Args:
        n_rois: ROIs per time step (116 for AAL).
        hidden_size: recurrent units per direction.
        num_layers: stacked recurrent layers.
        cell: ``"lstm"`` or ``"gru"``.
        bidirectional: read the sequence in both directions.
        embed_dim: size of the embedding.
        dropout: dropout between recurrent layers and before the projection.
    """

    def __init__(
        self,
        n_rois: int = 116,
        hidden_size: int = 64,
        num_layers: int = 1,
        cell: str = "lstm",
        bidirectional: bool = False,
        embed_dim: int = 64,
        dropout: float = 0.2,
    ) -> None:
        super().__init__()
        recurrent = {"lstm": nn.LSTM, "gru": nn.GRU}
        if cell not in recurrent:
            raise ValueError(f"cell must be 'lstm' or 'gru', got {cell!r}")
        self.rnn = recurrent[cell](
            input_size=n_rois,
            hidden_size=hidden_size,
            num_layers=num_layers,
            batch_first=True,
            bidirectional=bidirectional,
            dropout=dropout if num_layers > 1 else 0.0,
        )
        width = hidden_size * (2 if bidirectional else 1)
        self.project = nn.Sequential(nn.Dropout(dropout), nn.Linear(3 * width, embed_dim), nn.ReLU())
        self.embed_dim = embed_dim

    def forward(self, series: torch.Tensor) -> torch.Tensor:
        """``[B, R, T]`` -> ``[B, embed_dim]``."""
        outputs, _ = self.rnn(series.transpose(1, 2))
        pooled = [outputs.mean(dim=1), outputs.std(dim=1), outputs[:, -1]]
        return self.project(torch.cat(pooled, dim=1))


class FMRIClassifier(nn.Module):
    """Recurrent network on ROI time series -> class logits.

    Args:
        num_classes: number of diagnoses.
        n_rois, hidden_size, num_layers, cell, bidirectional, embed_dim, dropout: see :class:`FMRIEncoder`.
    """

    def __init__(
        self,
        num_classes: int = 3,
        n_rois: int = 116,
        hidden_size: int = 64,
        num_layers: int = 1,
        cell: str = "lstm",
        bidirectional: bool = False,
        embed_dim: int = 64,
        dropout: float = 0.2,
    ) -> None:
        super().__init__()
        self.encoder = FMRIEncoder(n_rois, hidden_size, num_layers, cell, bidirectional, embed_dim, dropout)
        self.head = nn.Linear(embed_dim, num_classes)

    def forward(self, series: torch.Tensor) -> torch.Tensor:
        """``[B, R, T]`` -> logits ``[B, num_classes]``."""
        return self.head(self.encoder(series))
