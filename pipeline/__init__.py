"""neurofusion: MONAI pipelines that classify CN / MCI / AD from structural MRI and resting-state fMRI."""

from __future__ import annotations

import logging
import warnings

__version__ = "0.1.0"

CLASS_NAMES: tuple[str, ...] = ("CN", "MCI", "AD")
#: how a BOLD run is given to the fMRI encoder (bundle key ``fmri_sequence``): ROI series, dynamic connectivity, frames
SEQUENCES: tuple[str, ...] = ("roi", "dfc", "volume")

# MONAI's LoadImage builds every image reader it knows; where pydicom is installed without the GPU codec
# (nvImageCodec), its NvImgCodecPydicomReader announces on each load that it cannot register a GPU DICOM decoder: a
# notice about a plugin neurofusion never uses, which would bury the one-line messages of the commands.
logging.getLogger("monai.data.nvimgcodec_pydicom_plugin").setLevel(logging.ERROR)
warnings.filterwarnings("ignore", message="NvImgCodecPydicomReader: nvImageCodec decoder plugin", category=UserWarning)
