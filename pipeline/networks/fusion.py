"""Fused 3DCNN-LSTM classifier: MRI and fMRI embeddings concatenated, then a shared head; MRI alone when the fMRI
is missing."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from pipeline.networks.fmri_rnn import sequence_encoder
from pipeline.networks.mri_cnn import MRIEncoder3D


class FusionClassifier(nn.Module):
    """Late fusion of a 3D CNN (T1) and a recurrent network (fMRI sequence, any mode of
    :func:`~pipeline.networks.fmri_rnn.sequence_encoder`).

    ``forward(image, series)``: the MRI is the first input (``image``), the fMRI sequence the second, so MONAI's
    ``PrepareBatchExtraInput(extra_keys="series")`` feeds it. ``forward(image)`` (no fMRI) is the MRI-only path: a
    learned "missing fMRI" embedding stands in for the fMRI encoder's. Training with ``modality_dropout`` > 0
    substitutes it for that fraction of the samples' fMRI embeddings, so the head learns to classify without fMRI.

    ``mri_dropout`` > 0 zeroes the MRI embedding of another fraction of the training samples (never both for one
    sample: ModDrop, Neverova et al. 2016). The head then has to classify those from the fMRI alone, so the fMRI
    encoder keeps learning when the MRI encoder, faster to learn (and pretrained by a transfer), would otherwise fit
    the training subjects on its own and leave the fMRI encoder almost no gradient.

    Args:
        num_classes: number of diagnoses.
        mri_channels: channels of the CNN blocks.
        mri_embed_dim: MRI embedding size.
        n_rois: ROIs per fMRI time step.
        fmri_hidden_size: recurrent units.
        fmri_num_layers: stacked recurrent layers.
        fmri_cell: ``"lstm"`` or ``"gru"``.
        fmri_embed_dim: fMRI embedding size.
        fusion_dim: hidden size of the fused head.
        dropout: dropout in encoders and head.
        fmri_sequence: ``"roi"``, ``"dfc"`` or ``"volume"``.
        fmri_frame_channels: frame CNN channels in ``volume`` mode.
        modality_dropout: probability, per training sample, of replacing the fMRI embedding by the missing one.
        mri_dropout: probability, per training sample, of zeroing the MRI embedding instead; at most
            ``1 - modality_dropout``.
    """

    def __init__(
        self,
        num_classes: int = 3,
        mri_channels: Sequence[int] = (8, 16, 32, 64),
        mri_embed_dim: int = 64,
        n_rois: int = 116,
        fmri_hidden_size: int = 64,
        fmri_num_layers: int = 1,
        fmri_cell: str = "lstm",
        fmri_embed_dim: int = 64,
        fusion_dim: int = 64,
        dropout: float = 0.2,
        fmri_sequence: str = "roi",
        fmri_frame_channels: Sequence[int] = (8, 16, 32),
        modality_dropout: float = 0.0,
        mri_dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.modality_dropout = float(modality_dropout)
        self.mri_dropout = float(mri_dropout)
        if not 0.0 <= self.modality_dropout <= 1.0:
            raise ValueError(f"modality_dropout must be a probability in [0, 1], got {modality_dropout}")
        if not 0.0 <= self.mri_dropout <= 1.0 - self.modality_dropout:
            raise ValueError(
                f"mri_dropout must be a probability in [0, 1 - modality_dropout] = [0, {1.0 - self.modality_dropout:g}]"
                f" (a sample never loses both modalities), got {mri_dropout}"
            )
        self.mri_encoder = MRIEncoder3D(1, mri_channels, mri_embed_dim, dropout)
        self.fmri_encoder = sequence_encoder(
            fmri_sequence,
            n_rois,
            fmri_hidden_size,
            fmri_num_layers,
            fmri_cell,
            False,
            fmri_embed_dim,
            dropout,
            fmri_frame_channels,
        )
        self.missing_fmri = nn.Parameter(torch.zeros(fmri_embed_dim))
        self.head = nn.Sequential(
            nn.Linear(mri_embed_dim + fmri_embed_dim, fusion_dim),
            nn.ReLU(),
            nn.Dropout(dropout),
            nn.Linear(fusion_dim, num_classes),
        )

    def forward(self, image: torch.Tensor, series: torch.Tensor | None = None) -> torch.Tensor:
        """``[B, 1, X, Y, Z]`` and the fMRI sequence ``[B, ..., T]`` (or None) -> logits ``[B, num_classes]``."""
        mri = self.mri_encoder(image)
        missing = self.missing_fmri.expand(mri.shape[0], -1)
        if series is None:
            return self.fuse(mri, missing)
        fmri = self.fmri_encoder(series)
        if self.training:  # the missing embedding stays in the graph: DistributedDataParallel sees it used
            draw = torch.rand(fmri.shape[0], 1, device=fmri.device)
            fmri = torch.where(draw < self.modality_dropout, missing, fmri)
            mri_dropped = (draw >= self.modality_dropout) & (draw < self.modality_dropout + self.mri_dropout)
            mri = torch.where(mri_dropped, torch.zeros_like(mri), mri)
        return self.fuse(mri, fmri)

    def fuse(self, mri_embedding: torch.Tensor, fmri_embedding: torch.Tensor) -> torch.Tensor:
        """Logits from the two embeddings (``[B, mri_embed_dim]``, ``[B, fmri_embed_dim]``)."""
        return self.head(torch.cat([mri_embedding, fmri_embedding], dim=1))
