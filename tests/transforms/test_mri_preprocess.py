"""``neurofusion preprocess``: the written volume is what the model sees; without registration it overlays on the
input in a viewer (the registered path: tests/transforms/test_registration.py)."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest

from pipeline.cli import main
from pipeline.transforms import mri_transforms

NONE = ["--registration", "none"]  # a phantom, not a brain: the scanner-space chain
LANDMARK_MM = np.array([25.0, 10.0, 12.0])  # off the midline: a left-right mix-up moves it to x = -25


@pytest.fixture(scope="module")
def oblique_lps_head(tmp_path_factory):
    """A head (ellipsoid) with one bright landmark sphere, stored LPS on a 10-degree tilted 2.5 mm grid."""
    tilt = np.deg2rad(10)
    affine = np.diag([-2.5, -2.5, 2.5, 1.0])
    rotation = np.eye(4)
    rotation[:2, :2] = [[np.cos(tilt), -np.sin(tilt)], [np.sin(tilt), np.cos(tilt)]]
    affine = rotation @ affine
    shape = (64, 72, 60)
    affine[:3, 3] = -(affine[:3, :3] @ (np.array(shape) / 2))
    index = np.stack(np.meshgrid(*map(np.arange, shape), indexing="ij"), axis=-1)
    world = index @ affine[:3, :3].T + affine[:3, 3]
    head = ((world / [65.0, 80.0, 60.0]) ** 2).sum(axis=-1) < 1
    landmark = np.linalg.norm(world - LANDMARK_MM, axis=-1) < 20.0  # > 0.5% of the voxels: sets the 99.5th percentile
    data = (100.0 * head + 200.0 * landmark).astype(np.int16)
    path = tmp_path_factory.mktemp("head") / "oblique_lps.nii.gz"
    nib.save(nib.Nifti1Image(data, affine), path)
    return path


def test_written_landmark_keeps_its_world_coordinate(oblique_lps_head, tmp_path):
    out = tmp_path / "pre.nii.gz"
    assert main(["preprocess", "--mri", str(oblique_lps_head), "--out", str(out), *NONE]) == 0
    written = nib.load(out)
    data = written.get_fdata()
    bright = np.argwhere(data > 0.66)
    centre = (bright * data[data > 0.66][:, None]).sum(axis=0) / data[data > 0.66].sum()
    np.testing.assert_allclose(nib.affines.apply_affine(written.affine, centre), LANDMARK_MM, atol=1.0)
    assert nib.aff2axcodes(written.affine) == ("R", "A", "S")


def test_written_volume_is_what_the_model_reads(oblique_lps_head, tmp_path):
    out = tmp_path / "pre.nii"
    assert main(["preprocess", "--mri", str(oblique_lps_head), "--out", str(out), *NONE]) == 0
    model_input = mri_transforms(registration="none")({"image": str(oblique_lps_head)})["image"]
    np.testing.assert_allclose(nib.load(out).get_fdata(), model_input[0].numpy(), atol=1e-6)


def test_bundle_sets_the_grid_from_its_train_yaml(oblique_lps_head, tmp_path):
    out = tmp_path / "pre.nii.gz"
    assert main(["preprocess", "--mri", str(oblique_lps_head), "--out", str(out), "--bundle", "mri_cnn3d", *NONE]) == 0
    written = nib.load(out)
    assert written.shape == (48, 56, 48)
    np.testing.assert_allclose(written.header.get_zooms(), (3.0, 3.0, 3.0))


def test_spatial_size_and_pixdim_options_override_the_bundle(oblique_lps_head, tmp_path):
    out = tmp_path / "pre.nii.gz"
    grid = ["--spatial-size", "20", "24", "20", "--pixdim", "6", "6", "6"]
    assert (
        main(["preprocess", "--mri", str(oblique_lps_head), "--out", str(out), "--bundle", "mri_cnn3d", *grid, *NONE])
        == 0
    )
    written = nib.load(out)
    assert written.shape == (20, 24, 20)
    np.testing.assert_allclose(written.header.get_zooms(), (6.0, 6.0, 6.0))


def test_bundle_without_a_grid_key_is_a_one_line_error_naming_the_file_and_key(oblique_lps_head, tmp_path, capsys):
    config = tmp_path / "bundle" / "configs" / "train.yaml"
    config.parent.mkdir(parents=True)
    config.write_text("mri_spatial_size: [32, 32, 32]\n")
    out = str(tmp_path / "x.nii.gz")
    assert main(["preprocess", "--mri", str(oblique_lps_head), "--out", out, "--bundle", str(config.parents[1])]) == 1
    assert capsys.readouterr().err == f"neurofusion preprocess: error: {config}: no key 'mri_pixdim'\n"


def test_unreadable_input_is_a_one_line_error_naming_it(tmp_path, capsys):
    broken = tmp_path / "t1.nii.gz"
    broken.write_text("not a NIfTI")
    assert main(["preprocess", "--mri", str(broken), "--out", str(tmp_path / "x.nii.gz")]) == 1
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("neurofusion preprocess: error: ") and str(broken) in lines[0]
