"""Networks: 3D CNN (MRI), recurrent (fMRI), and their fusion. All pass ``torch.jit.script``."""

from __future__ import annotations

from pipeline.networks.fmri_rnn import FMRIClassifier, FMRIEncoder, sequence_encoder
from pipeline.networks.fmri_volume import FrameEncoder3D
from pipeline.networks.fusion import FusionClassifier
from pipeline.networks.mri_cnn import MRIClassifier, MRIEncoder3D
from pipeline.networks.pretrained import EncoderWeightsError, load_mri_encoder

__all__ = [
    "EncoderWeightsError",
    "FMRIClassifier",
    "FMRIEncoder",
    "FrameEncoder3D",
    "FusionClassifier",
    "MRIClassifier",
    "MRIEncoder3D",
    "load_mri_encoder",
    "sequence_encoder",
]
