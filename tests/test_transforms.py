"""MRI and fMRI MONAI chains on real NIfTI files (nibabel's test data, nilearn's MNI152 template)."""

from __future__ import annotations

import json
import shutil

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.transforms import LoadImage
from nilearn.datasets import load_mni152_template
from nilearn.maskers import NiftiLabelsMasker

from pipeline.atlas import load_atlas
from pipeline.transforms import (
    ROISignals,
    TemporalClean,
    TRError,
    fmri_transforms,
    mri_transforms,
    resolve_tr,
    subject_transforms,
)
from tests.conftest import NIBABEL_DATA

FUNCTIONAL = NIBABEL_DATA / "functional.nii"


@pytest.fixture(scope="module")
def mni_t1(tmp_path_factory):
    """nilearn's MNI152 T1 at 2 mm, saved RAS and re-saved in LAS orientation (same brain, other voxel order)."""
    folder = tmp_path_factory.mktemp("mni")
    image = load_mni152_template(resolution=2)
    ras = nib.Nifti1Image(image.get_fdata().astype(np.float32), image.affine)
    nib.save(ras, folder / "ras.nii.gz")
    flip = np.diag([-1.0, 1, 1, 1])
    flip[0, 3] = ras.shape[0] - 1
    las = nib.Nifti1Image(ras.get_fdata()[::-1].copy(), ras.affine @ flip)
    nib.save(las, folder / "las.nii.gz")
    return folder


def test_roi_signals_match_nilearn_labels_masker_on_real_epi():
    atlas = load_atlas("AAL")
    ours = ROISignals("AAL")(LoadImage(image_only=True)(str(FUNCTIONAL)))
    masker = NiftiLabelsMasker(atlas.image, strategy="mean", resampling_target="data")
    reference = masker.fit_transform(str(FUNCTIONAL)).T
    present = [i for i, name in enumerate(atlas.names) if name not in ours.meta["roi_empty"]]
    assert ours.shape == (116, 20)
    assert len(present) == reference.shape[0]
    np.testing.assert_allclose(ours.numpy()[present], reference, rtol=1e-5)
    assert np.all(ours.numpy()[[i for i in range(116) if i not in present]] == 0)


def test_fmri_chain_gives_zscored_fixed_length_roi_series():
    out = fmri_transforms(keys="series", timepoints=16, high_pass=None, low_pass=None)(
        {"series": str(FUNCTIONAL), "tr": 2.0}
    )["series"]
    assert out.shape == (116, 16) and out.dtype == torch.float32
    active = out.abs().sum(dim=1) > 0
    assert active.sum() == 26
    full = fmri_transforms(keys="series", timepoints=20, high_pass=None, low_pass=None)(
        {"series": str(FUNCTIONAL), "tr": 2.0}
    )["series"]
    torch.testing.assert_close(full[active].mean(dim=1), torch.zeros(26), atol=1e-5, rtol=0)
    torch.testing.assert_close(full[active].std(dim=1), torch.ones(26), atol=1e-4, rtol=0)


def test_temporal_clean_matches_nilearn_signal_clean():
    from nilearn.signal import clean

    signals = np.random.default_rng(0).normal(size=(5, 120)).cumsum(axis=1)
    ours = TemporalClean(detrend=True, high_pass=0.01, low_pass=0.1)(torch.tensor(signals), tr=2.0)
    reference = clean(signals.T, detrend=True, standardize="zscore_sample", high_pass=0.01, low_pass=0.1, t_r=2.0).T
    np.testing.assert_allclose(ours.numpy(), reference, rtol=1e-4, atol=1e-5)


def test_run_too_short_to_filter_is_refused_clearly():
    with pytest.raises(ValueError, match="20 volumes is too short to band-pass"):
        TemporalClean(high_pass=0.01, low_pass=0.1)(torch.randn(3, 20), tr=2.0)


def test_band_pass_without_tr_is_refused():
    with pytest.raises(TRError, match="needs the run's TR"):
        TemporalClean(high_pass=0.01)(torch.randn(3, 50), tr=None)


def test_tr_in_milliseconds_under_seconds_unit_is_refused():
    with pytest.raises(TRError, match=r"implausible TR 2000 s .*milliseconds: 2 s"):
        resolve_tr(NIBABEL_DATA / "example4d.nii.gz")


def test_tr_order_is_manifest_then_sidecar_then_header(tmp_path):
    bold = tmp_path / "sub-01_task-rest_bold.nii"
    shutil.copy(FUNCTIONAL, bold)
    assert resolve_tr(bold) == 2.0
    (tmp_path / "sub-01_task-rest_bold.json").write_text(json.dumps({"RepetitionTime": 2.5}))
    assert resolve_tr(bold) == 2.5
    assert resolve_tr(bold, "3.0") == 3.0


def test_mri_chain_output_shape_and_range(mni_t1):
    image = mri_transforms(keys="image", spatial_size=(64, 72, 64), pixdim=(3, 3, 3))(
        {"image": str(mni_t1 / "ras.nii.gz")}
    )["image"]
    assert image.shape == (1, 64, 72, 64)
    assert float(image.min()) >= 0 and float(image.max()) <= 1
    assert float((image > 0.1).float().mean()) > 0.2


def test_same_brain_in_two_orientations_gives_the_same_input(mni_t1):
    chain = mri_transforms(keys="image", spatial_size=(64, 72, 64), pixdim=(3, 3, 3))
    ras = chain({"image": str(mni_t1 / "ras.nii.gz")})["image"]
    las = chain({"image": str(mni_t1 / "las.nii.gz")})["image"]
    torch.testing.assert_close(ras, las, atol=1e-4, rtol=0)


def test_augmentation_is_reproducible_under_a_seed(mni_t1):
    data = {"image": str(mni_t1 / "ras.nii.gz"), "series": str(FUNCTIONAL), "tr": 2.0}
    options = {
        "mri": {"spatial_size": (32, 36, 32), "pixdim": (6, 6, 6)},
        "fmri": {"timepoints": 12, "high_pass": None, "low_pass": None},
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
