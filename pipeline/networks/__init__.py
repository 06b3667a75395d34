"""Networks: 3D CNN (MRI), recurrent (fMRI), and their fusion. All pass ``torch.jit.script``."""

from __future__ import annotations

from pipeline.networks.fmri_rnn import FMRIClassifier, FMRIEncoder
from pipeline.networks.fusion import FusionClassifier
from pipeline.networks.mri_cnn import MRIClassifier, MRIEncoder3D

__all__ = ["FMRIClassifier", "FMRIEncoder", "FusionClassifier", "MRIClassifier", "MRIEncoder3D"]
