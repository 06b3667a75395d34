"""Recurrent encoder and classifier for fMRI sequences ``[B, ..., T]`` (time last).

Sequence modes (``sequence``), matching :func:`pipeline.transforms.fmri_steps`:

- ``"roi"``: ROI time series ``[B, R, T]``, read by :class:`FMRIEncoder` directly;
- ``"dfc"``: sliding-window ROI-pair correlations ``[B, R (R - 1) / 2, W]``, read the same way;
- ``"volume"``: downsampled frames ``[B, X, Y, Z, T]``, a 3D CNN shared over time
  (:class:`~pipeline.networks.fmri_volume.FrameEncoder3D`) then :class:`FMRIEncoder` (a CNN-LSTM).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from pipeline import SEQUENCES
from pipeline.networks.fmri_volume import FrameEncoder3D

#: statistics of the recurrent outputs over time that :class:`FMRIEncoder` can pool
POOLINGS = ("mean", "std", "last")
DEFAULT_POOLING = ("mean", "std")


class FMRIEncoder(nn.Module):
    """LSTM (or GRU) over time; each step reads the ``R`` ROI values. The embedding pools the top layer's outputs
    over time (``pooling``): by default their mean and their standard deviation. The standard deviation carries
    synchrony: when the ROIs a unit weighs fluctuate together (strong coupling, e.g. within the default-mode network)
    its output swings more than when they drift apart. The last output (``"last"``) is not pooled by default: it
    reflects the final few time points, which let the network memorise its training subjects (on a 300-subject
    paired synthetic cohort, pooling it as well left the LSTM at chance; bundles/experiments/README.md).

    Args:
        n_rois: features per time step: ROIs (116 for AAL), ROI pairs or frame features.
        hidden_size: recurrent units per direction.
        num_layers: stacked recurrent layers.
        cell: ``"lstm"`` or ``"gru"``.
        bidirectional: read the sequence in both directions.
        embed_dim: size of the embedding.
        dropout: dropout between recurrent layers and before the projection.
        pooling: statistics of the outputs over time that form the embedding, a non-empty subset of
            :data:`POOLINGS` in any order.
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
        pooling: Sequence[str] = DEFAULT_POOLING,
    ) -> None:
        super().__init__()
        recurrent = {"lstm": nn.LSTM, "gru": nn.GRU}
        if cell not in recurrent:
            raise ValueError(f"cell must be 'lstm' or 'gru', got {cell!r}")
        if not pooling or set(pooling) - set(POOLINGS) or len(set(pooling)) < len(pooling):
            raise ValueError(f"pooling must be distinct names of {', '.join(POOLINGS)}, got {list(pooling)}")
        self.pooling: list[str] = list(pooling)
        self.rnn = recurrent[cell](
            input_size=n_rois,
            hidden_size=hidden_size,
            num_layers=num_layers,
            batch_first=True,
            bidirectional=bidirectional,
            dropout=dropout if num_layers > 1 else 0.0,
        )
        width = hidden_size * (2 if bidirectional else 1)
        self.project = nn.Sequential(nn.Dropout(dropout), nn.Linear(len(pooling) * width, embed_dim), nn.ReLU())
        self.embed_dim = embed_dim

    def forward(self, series: torch.Tensor) -> torch.Tensor:
        """``[B, R, T]`` -> ``[B, embed_dim]``."""
        outputs, _ = self.rnn(series.transpose(1, 2))
        pooled = []
        for name in self.pooling:
            if name == "mean":
                pooled.append(outputs.mean(dim=1))
            elif name == "std":
                pooled.append(outputs.std(dim=1))
            else:
                pooled.append(outputs[:, -1])
        return self.project(torch.cat(pooled, dim=1))


def sequence_encoder(
    sequence: str = "roi",
    n_rois: int = 116,
    hidden_size: int = 64,
    num_layers: int = 1,
    cell: str = "lstm",
    bidirectional: bool = False,
    embed_dim: int = 64,
    dropout: float = 0.2,
    frame_channels: Sequence[int] = (8, 16, 32),
    frame_dim: int = 32,
    pooling: Sequence[str] = DEFAULT_POOLING,
) -> nn.Module:
    """The encoder of one sequence mode: ``[B, ..., T]`` -> ``[B, embed_dim]``.

    Args:
        sequence: ``"roi"``, ``"dfc"`` or ``"volume"`` (see the module docstring).
        n_rois: atlas ROIs (``roi``, ``dfc``; unused by ``volume``).
        hidden_size, num_layers, cell, bidirectional, embed_dim, dropout, pooling: see :class:`FMRIEncoder`.
        frame_channels, frame_dim: the frame CNN of ``volume`` mode, see :class:`FrameEncoder3D`.
    """
    recurrent = {"hidden_size": hidden_size, "num_layers": num_layers, "cell": cell, "bidirectional": bidirectional}
    recurrent.update(embed_dim=embed_dim, dropout=dropout, pooling=pooling)
    if sequence == "roi":
        return FMRIEncoder(n_rois, **recurrent)
    if sequence == "dfc":
        return FMRIEncoder(n_rois * (n_rois - 1) // 2, **recurrent)
    if sequence == "volume":
        return nn.Sequential(FrameEncoder3D(frame_channels, frame_dim, dropout), FMRIEncoder(frame_dim, **recurrent))
    raise ValueError(f"fmri sequence must be one of {', '.join(SEQUENCES)}, got {sequence!r}")


class FMRIClassifier(nn.Module):
    """Recurrent network on an fMRI sequence -> class logits.

    Args:
        num_classes: number of diagnoses.
        n_rois, hidden_size, num_layers, cell, bidirectional, embed_dim, dropout, pooling: see :class:`FMRIEncoder`.
        sequence, frame_channels, frame_dim: see :func:`sequence_encoder`.
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
        sequence: str = "roi",
        frame_channels: Sequence[int] = (8, 16, 32),
        frame_dim: int = 32,
        pooling: Sequence[str] = DEFAULT_POOLING,
    ) -> None:
        super().__init__()
        self.encoder = sequence_encoder(
            sequence,
            n_rois,
            hidden_size,
            num_layers,
            cell,
            bidirectional,
            embed_dim,
            dropout,
            frame_channels,
            frame_dim,
            pooling,
        )
        self.head = nn.Linear(embed_dim, num_classes)

    def forward(self, series: torch.Tensor) -> torch.Tensor:
        """``[B, ..., T]`` -> logits ``[B, num_classes]``."""
        return self.head(self.encoder(series))
