"""MRI and fMRI MONAI chains on real NIfTI files (nibabel's test data, nilearn's MNI152 template)."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import torch
from nilearn.datasets import load_mni152_template

from pipeline.transforms import (
    subject_transforms,
)
from tests.conftest import NIBABEL_DATA

FUNCTIONAL = NIBABEL_DATA / "functional.nii"


@pytest.fixture(scope="module")
def mni_t1(tmp_path_factory):
    """nilearn's MNI152 T1 at 2 mm, saved as ras.nii.gz (the MRI chain's own tests are in test_mri.py)."""
    folder = tmp_path_factory.mktemp("mni")
    image = load_mni152_template(resolution=2)
    ras = nib.Nifti1Image(image.get_fdata().astype(np.float32), image.affine)
    nib.save(ras, folder / "ras.nii.gz")
    return folder


def test_augmentation_is_reproducible_under_a_seed(mni_t1):
    data = {"image": str(mni_t1 / "ras.nii.gz"), "series": str(FUNCTIONAL), "tr": 2.0}
    options = {
        "mri": {"spatial_size": (32, 36, 32), "pixdim": (6, 6, 6)},
        # nibabel's functional.nii: three 8 mm slices, in MNI space already
        "fmri": {"timepoints": 12, "high_pass": None, "low_pass": None, "registration": "none"},
    }
    outputs = []
    for _ in range(2):
        chain = subject_transforms(["mri", "fmri"], train=True, augment=True, **options)
        chain.set_random_state(seed=7)
        outputs.append(chain(dict(data)))
    torch.testing.assert_close(outputs[0]["image"], outputs[1]["image"])
    torch.testing.assert_close(outputs[0]["series"], outputs[1]["series"])
    plain = subject_transforms(["mri", "fmri"], train=False, **options)(dict(data))
    assert not torch.allclose(outputs[0]["image"], plain["image"])


def test_deterministic_steps_precede_random_ones():
    from monai.transforms import RandomizableTrait

    chain = subject_transforms(["mri", "fmri"], train=True, augment=True)
    random = [isinstance(t, RandomizableTrait) for t in chain.transforms]
    first_random = random.index(True)
    assert all(random[first_random:-1])
