"""The MRI chain on real NIfTI headers (nibabel's test data, nilearn's MNI152 template and files written here),
lazy versus eager resampling, caching and augmentation; and ``neurofusion preprocess``, which writes what the chain
gives the model (the registered path: tests/transforms/test_registration.py)."""

from __future__ import annotations

import shutil

import monai.transforms.lazy.functional as lazy_functional
import nibabel as nib
import numpy as np
import pytest
import torch
from monai.data import CacheDataset
from monai.transforms import LoadImaged, RandFlipd
from nibabel.processing import resample_from_to
from nilearn.datasets import load_mni152_template

from pipeline.cli import main
from pipeline.data.datasets import make_dataset
from pipeline.transforms import DEFAULT_MRI_AUGMENTATION, mri_steps, mri_transforms
from pipeline.transforms.mri import HAS_TORCHIO
from tests.conftest import NIBABEL_DATA

GRID = {"spatial_size": (64, 72, 64), "pixdim": (3.0, 3.0, 3.0)}
ALL_OFF = {name: {"prob": 0.0} for name in DEFAULT_MRI_AUGMENTATION}


def preprocess(path, **kwargs):
    """The evaluation chain's output (a MetaTensor with its affine)."""
    return mri_transforms(track_meta=True, registration="none", **{**GRID, **kwargs})({"image": str(path)})["image"]


def flipped(image: nib.Nifti1Image, axes) -> nib.Nifti1Image:
    """The same brain with the voxel order reversed along ``axes`` (the affine follows, world unchanged)."""
    data = np.asanyarray(image.dataobj)
    affine = image.affine.copy()
    for axis in axes:
        data = np.flip(data, axis)
        affine[:3, 3] += affine[:3, axis] * (image.shape[axis] - 1)
        affine[:3, axis] *= -1
    return nib.Nifti1Image(np.ascontiguousarray(data), affine)


def world_centroid(image) -> np.ndarray:
    """Intensity-weighted centroid (mm) of the bright voxels of a chain output."""
    data = image[0].numpy()
    index = np.argwhere(data > 0.3)
    weights = data[data > 0.3]
    centre = (index * weights[:, None]).sum(axis=0) / weights.sum()
    return (image.affine.numpy() @ np.r_[centre, 1.0])[:3]


@pytest.fixture(scope="module")
def mni(tmp_path_factory):
    """nilearn's MNI152 T1 at 2 mm written in the header variants real scans come in; returns the folder."""
    folder = tmp_path_factory.mktemp("mni")
    template = load_mni152_template(resolution=2)
    data = template.get_fdata().astype(np.float32)
    ras = nib.Nifti1Image(data, template.affine)
    nib.save(ras, folder / "ras.nii.gz")
    nib.save(ras, folder / "ras.nii")
    nib.save(flipped(ras, [0]), folder / "las.nii.gz")
    nib.save(flipped(ras, [0, 1]), folder / "lps.nii.gz")
    nib.save(nib.Nifti2Image(data, template.affine), folder / "nifti2.nii.gz")
    nib.save(nib.Nifti1Image(data[..., None], template.affine), folder / "one_volume_4d.nii.gz")
    for dtype in (np.uint8, np.int16):
        scaled = np.round(data / data.max() * np.iinfo(dtype).max).astype(dtype)
        nib.save(nib.Nifti1Image(scaled, template.affine), folder / f"{np.dtype(dtype).name}.nii.gz")
    tilt = np.deg2rad(12)
    rotation = np.eye(4)
    rotation[[[0], [2]], [0, 2]] = [[np.cos(tilt), np.sin(tilt)], [-np.sin(tilt), np.cos(tilt)]]
    oblique_affine = rotation @ template.affine
    shape = tuple(int(n * 1.2) for n in data.shape)
    centre = template.affine @ np.r_[np.array(data.shape) / 2, 1]
    oblique_affine[:3, 3] += (centre - oblique_affine @ np.r_[np.array(shape) / 2, 1])[:3]
    oblique = resample_from_to(ras, (shape, oblique_affine), order=3)
    nib.save(nib.Nifti1Image(oblique.get_fdata().astype(np.float32), oblique_affine), folder / "oblique.nii.gz")
    return folder


def test_output_is_the_model_grid_in_unit_range_with_the_head_filling_it(mni):
    image = preprocess(mni / "ras.nii.gz")
    assert image.shape == (1, 64, 72, 64) and image.dtype == torch.float32
    assert float(image.min()) >= 0 and float(image.max()) <= 1
    assert float((image > 0.1).float().mean()) > 0.2


@pytest.mark.parametrize("variant", ["las", "lps"])
def test_same_brain_in_another_voxel_order_gives_the_same_array(mni, variant):
    ras = preprocess(mni / "ras.nii.gz")
    other = preprocess(mni / f"{variant}.nii.gz")
    torch.testing.assert_close(other.as_tensor(), ras.as_tensor(), atol=1e-4, rtol=0)
    np.testing.assert_allclose(other.affine, ras.affine, atol=1e-4)


def test_oblique_scan_is_resampled_onto_a_world_aligned_grid_where_the_brain_stays(mni):
    oblique = preprocess(mni / "oblique.nii.gz")
    ras = preprocess(mni / "ras.nii.gz")
    np.testing.assert_allclose(oblique.affine[:3, :3], np.diag([3.0, 3.0, 3.0]), atol=1e-6)
    np.testing.assert_allclose(world_centroid(oblique), world_centroid(ras), atol=1.0)


def test_big_endian_real_anatomical_gives_the_same_array_as_a_native_endian_ras_copy(tmp_path):
    big_endian = nib.load(NIBABEL_DATA / "anatomical.nii")
    assert big_endian.header.endianness == ">"
    copy = flipped(nib.Nifti1Image(big_endian.get_fdata().astype("<f4"), big_endian.affine), [0])
    nib.save(copy, tmp_path / "native.nii.gz")
    grid = {"spatial_size": (24, 32, 24), "pixdim": (2.5, 2.5, 2.5)}
    torch.testing.assert_close(
        preprocess(NIBABEL_DATA / "anatomical.nii", **grid).as_tensor(),
        preprocess(tmp_path / "native.nii.gz", **grid).as_tensor(),
        atol=1e-4,
        rtol=0,
    )


def load_step() -> LoadImaged:
    """The chain's loader on its own (the checks around it refuse a 2-volume file as a T1)."""
    return next(step for step in mri_steps(registration="none")[0] if isinstance(step, LoadImaged))


def test_real_nifti2_loads_with_nibabels_values_and_affine():
    path = NIBABEL_DATA / "example_nifti2.nii.gz"
    reference = nib.load(path)
    loaded = load_step()({"image": str(path)})["image"]
    np.testing.assert_array_equal(loaded.numpy(), np.moveaxis(reference.get_fdata(), -1, 0))
    np.testing.assert_allclose(loaded.affine, reference.affine, atol=1e-5)


@pytest.mark.parametrize("variant", ["ras.nii", "nifti2.nii.gz", "one_volume_4d.nii.gz"])
def test_container_variants_give_the_same_array(mni, variant):
    torch.testing.assert_close(preprocess(mni / variant).as_tensor(), preprocess(mni / "ras.nii.gz").as_tensor())


@pytest.mark.parametrize("dtype", ["uint8", "int16"])
def test_integer_datatypes_give_the_float_array_up_to_quantisation(mni, dtype):
    integer = preprocess(mni / f"{dtype}.nii.gz")
    torch.testing.assert_close(integer.as_tensor(), preprocess(mni / "ras.nii.gz").as_tensor(), atol=0.01, rtol=0)


def test_scl_slope_and_inter_are_applied_on_load(tmp_path):
    stored = np.arange(4 * 5 * 6, dtype=np.int16).reshape(4, 5, 6)
    image = nib.Nifti1Image(stored, np.eye(4))
    image.header.set_slope_inter(0.5, 10.0)
    nib.save(image, tmp_path / "scaled.nii")
    loaded = load_step()({"image": str(tmp_path / "scaled.nii")})["image"]
    np.testing.assert_allclose(loaded[0].numpy(), stored * 0.5 + 10.0)


def _with_qform_and_sform(data, qform, sform, sform_code) -> nib.Nifti1Image:
    image = nib.Nifti1Image(data, None)
    image.header.set_qform(qform, code=1)
    image.header.set_sform(sform, code=sform_code)
    return nib.Nifti1Image(data, None, image.header)


def test_sform_takes_precedence_over_qform(mni, tmp_path):
    ras = nib.load(mni / "ras.nii.gz")
    shifted = ras.affine.copy()
    shifted[:3, 3] += 40.0
    image = _with_qform_and_sform(ras.get_fdata().astype(np.float32), shifted, ras.affine, sform_code=2)
    nib.save(image, tmp_path / "sform.nii.gz")
    np.testing.assert_allclose(preprocess(tmp_path / "sform.nii.gz").affine, preprocess(mni / "ras.nii.gz").affine)


def test_qform_is_used_when_the_sform_code_is_zero(mni, tmp_path):
    ras = nib.load(mni / "ras.nii.gz")
    shifted = ras.affine.copy()
    shifted[:3, 3] += 40.0
    image = _with_qform_and_sform(ras.get_fdata().astype(np.float32), ras.affine, shifted, sform_code=0)
    nib.save(image, tmp_path / "qform.nii.gz")
    np.testing.assert_allclose(preprocess(tmp_path / "qform.nii.gz").affine, preprocess(mni / "ras.nii.gz").affine)


def test_lazy_deterministic_chain_matches_the_eager_one(mni):
    lazy = preprocess(mni / "lps.nii.gz")
    eager = preprocess(mni / "lps.nii.gz", lazy=False)
    torch.testing.assert_close(lazy.as_tensor(), eager.as_tensor(), atol=1e-4, rtol=0)
    np.testing.assert_allclose(lazy.affine, eager.affine, atol=1e-4)


def _augmented(path, lazy: bool, seed: int = 3):
    chain = mri_transforms(
        registration="none", train=True, augment=True, augmentation={**ALL_OFF, "affine": {"prob": 1.0}}, lazy=lazy
    )
    chain.set_random_state(seed)
    return chain({"image": str(path)})["image"]


def test_lazy_affine_augmentation_matches_eager_within_the_stated_tolerance(mni):
    """One interpolation instead of two: correlation >= 0.98 and mean absolute difference <= 0.03 of the range."""
    lazy = _augmented(mni / "oblique.nii.gz", lazy=True).flatten()
    eager = _augmented(mni / "oblique.nii.gz", lazy=False).flatten()
    assert np.corrcoef(lazy, eager)[0, 1] >= 0.98
    assert float((lazy - eager).abs().mean()) <= 0.03


def test_crop_spacing_padding_and_affine_are_one_resample(mni, monkeypatch):
    calls = []
    resample = lazy_functional.resample
    monkeypatch.setattr(lazy_functional, "resample", lambda *a, **k: calls.append(1) or resample(*a, **k))
    _augmented(mni / "oblique.nii.gz", lazy=True)
    assert len(calls) == 1


def test_scan_already_on_the_target_grid_comes_back_compact_not_as_a_view_of_the_loaded_array(mni):
    image = mri_transforms(registration="none", spatial_size=(64, 72, 64), pixdim=(2.0, 2.0, 2.0))(
        {"image": str(mni / "ras.nii.gz")}
    )
    assert image["image"].untyped_storage().nbytes() == image["image"].numel() * 4


def test_in_memory_cache_serves_the_preprocessed_scan_and_augments_it_anew_each_time(mni, tmp_path):
    path = tmp_path / "t1.nii.gz"
    shutil.copy(mni / "ras.nii.gz", path)
    chain = mri_transforms(
        registration="none", train=True, augment=True, augmentation={**ALL_OFF, "affine": {"prob": 1.0}}, **GRID
    )
    dataset = make_dataset([{"image": str(path)}], chain, cache_rate=1.0)
    assert isinstance(dataset, CacheDataset)
    path.unlink()  # from here on only the cache has the scan
    first, second = dataset[0]["image"], dataset[0]["image"]
    assert first.shape == (1, *GRID["spatial_size"])
    assert not torch.equal(first, second)


def test_disk_cache_gives_the_uncached_output(mni, tmp_path):
    data = [{"image": str(mni / "las.nii.gz")}]
    chain = mri_transforms(registration="none", **GRID)
    first = make_dataset(data, chain, cache_dir=tmp_path)[0]["image"]
    assert len(list(tmp_path.glob("*.pt"))) == 1
    again = make_dataset(data, chain, cache_dir=tmp_path)[0]["image"]
    torch.testing.assert_close(again, first)
    torch.testing.assert_close(first, preprocess(mni / "las.nii.gz").as_tensor())


ARTEFACTS = [name for name in DEFAULT_MRI_AUGMENTATION if name not in ("motion", "ghosting")]


@pytest.mark.parametrize("name", ARTEFACTS)
def test_each_augmentation_changes_the_image_when_drawn(mni, name):
    chain = mri_transforms(
        registration="none", train=True, augment=True, augmentation={**ALL_OFF, name: {"prob": 1.0}}, **GRID
    )
    chain.set_random_state(0)
    augmented = chain({"image": str(mni / "ras.nii.gz")})["image"]
    assert len(chain.transforms) == len(mri_steps(registration="none")[0]) + 2
    assert not torch.allclose(augmented, preprocess(mni / "ras.nii.gz").as_tensor(), atol=1e-3)


def test_left_right_flip_is_off_by_default():
    _, random = mri_steps(registration="none", train=True, augment=True)
    assert DEFAULT_MRI_AUGMENTATION["flip"]["prob"] == 0
    assert random and not any(isinstance(t, RandFlipd) for t in random)


def test_augmentation_with_probability_zero_is_left_out():
    _, random = mri_steps(registration="none", train=True, augment=True, augmentation=ALL_OFF)
    assert random == []


def test_unknown_augmentation_setting_names_the_transform():
    with pytest.raises(KeyError, match="'gibbs': unknown setting"):
        mri_steps(registration="none", train=True, augment=True, augmentation={"gibbs": {"strength": 1}})


@pytest.mark.skipif(HAS_TORCHIO, reason="TorchIO is installed")
def test_motion_without_torchio_is_a_one_line_error_naming_the_extra():
    with pytest.raises(ImportError, match=r"'motion' needs TorchIO: pip install 'neurofusion\[torchio\]'"):
        mri_steps(registration="none", train=True, augment=True, augmentation={"motion": {"prob": 0.5}})


@pytest.mark.parametrize("name", ["motion", "ghosting"])
def test_motion_and_ghosting_run_through_monais_torchio_bridge(mni, name):
    pytest.importorskip("torchio")
    torch.manual_seed(0)
    chain = mri_transforms(
        registration="none", train=True, augment=True, augmentation={**ALL_OFF, name: {"prob": 1.0}}, **GRID
    )
    augmented = chain({"image": str(mni / "ras.nii.gz")})["image"]
    assert augmented.shape == (1, *GRID["spatial_size"])
    assert not torch.allclose(augmented, preprocess(mni / "ras.nii.gz").as_tensor(), atol=1e-3)


def test_chain_adds_no_per_subject_keys_that_could_fail_to_collate(tmp_path):
    """A study's folds share a disk cache, so a batch mixes items cached by one chain with items computed by
    another; bookkeeping keys (e.g. CropForeground's coordinates, numpy from one path, tensors from another) broke
    collation. The chain must return only the keys it was given."""
    from pipeline.transforms import subject_transforms

    image = tmp_path / "t1.nii.gz"
    template = load_mni152_template(resolution=2)
    nib.save(nib.Nifti1Image(template.get_fdata().astype(np.float32), template.affine), image)
    options = {"spatial_size": (32, 36, 32), "pixdim": (6, 6, 6)}
    for train, augment in ((False, False), (True, True)):
        out = subject_transforms(["mri"], train=train, augment=augment, mri=options)({"image": str(image), "label": 1})
        assert set(out) == {"image", "label"}


# --- neurofusion preprocess: the written volume is what the model sees, and overlays on the input in a viewer -----

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
