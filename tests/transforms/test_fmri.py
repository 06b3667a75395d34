"""fMRI signal pipeline on real NIfTI files: ROI series against nilearn, TR, cleaning, time base, augmentation,
sequence modes through the bundles."""

from __future__ import annotations

import json
import shutil
import tracemalloc
import warnings

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import torch
from monai.bundle import ConfigParser
from monai.data import MetaTensor, set_track_meta
from monai.transforms import LoadImage
from nilearn.maskers import NiftiLabelsMasker
from nilearn.signal import clean

from pipeline.cli import main
from pipeline.data.atlas import load_atlas
from pipeline.data.datasets import manifest_datalist
from pipeline.data.timing import TRError, resolve_tr
from pipeline.networks import FMRIClassifier, FusionClassifier
from pipeline.transforms import (
    RandDrift,
    RandROIDropout,
    ROISignals,
    SlidingWindowCorrelation,
    TemporalClean,
    TemporalCleand,
    TemporalPadOrCrop,
    TemporalResample,
    fmri_steps,
    fmri_transforms,
    load_confounds,
)
from tests.conftest import NIBABEL_DATA, REPO

FUNCTIONAL = NIBABEL_DATA / "functional.nii"  # 17 x 21 x 3 voxels of 4 x 4 x 8 mm, 20 volumes, TR 2 s
ANATOMICAL = NIBABEL_DATA / "anatomical.nii"
load = LoadImage(image_only=True, dtype=np.float32)


def nilearn_means(labels, run) -> tuple[np.ndarray, list[int]]:
    """nilearn's ROI means ``[R, T]`` and their label values, in its output order."""
    masker = NiftiLabelsMasker(labels, strategy="mean", resampling_target="data", standardize=None)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # it warns about labels dropped outside the field of view
        signals = masker.fit_transform(run).T
    return signals, [int(masker.region_ids_[i]) for i in range(signals.shape[0])]


def write_nifti(path, data, affine, zooms=None, units=("mm", "sec")):
    image = nib.Nifti1Image(data, affine)
    if zooms:
        image.header.set_zooms(zooms)
    image.header.set_xyzt_units(*units)
    nib.save(image, path)
    return path


def rotation_z(degrees: float) -> np.ndarray:
    angle = np.deg2rad(degrees)
    rotation = np.eye(4)
    rotation[:2, :2] = [[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]]
    return rotation


# --- ROI series ------------------------------------------------------------------------------------------


def test_roi_means_match_nilearn_masker_on_real_epi_with_aal():
    ours = ROISignals("AAL", empty="drop")(load(str(FUNCTIONAL)))
    reference, labels = nilearn_means(load_atlas("AAL").image, str(FUNCTIONAL))
    assert ours.meta["roi_labels"] == labels
    # the run is scaled int16 loaded as float32 (~5e-8 relative); summing in float32 would add ~3e-7
    np.testing.assert_allclose(ours.numpy(), reference, rtol=1e-7, atol=0)


LABEL_GEOMETRIES = {
    "oblique_labels": (np.diag([3.5, 3.5, 3.5, 1]) @ rotation_z(15), np.diag([4.0, 4.0, 4.0, 1])),
    "flipped_finer_labels_partly_outside": (
        np.array([[-2.0, 0, 0, 60], [0, 2, 0, 0], [0, 0, 2, 0], [0, 0, 0, 1]]),
        np.array([[3.0, 0, 0, 10], [0, 3, 0, 12], [0, 0, 3, 6], [0, 0, 0, 1]]),
    ),
    "anisotropic_run": (
        np.diag([3.0, 3.0, 3.0, 1]),
        np.array([[2.5, 0, 0, 1], [0, 3, 0, -2], [0, 0, 4.5, 3], [0, 0, 0, 1]]),
    ),
}


@pytest.mark.parametrize("geometry", LABEL_GEOMETRIES)
def test_roi_means_match_nilearn_on_random_label_images_of_other_geometries(tmp_path, geometry):
    label_affine, run_affine = LABEL_GEOMETRIES[geometry]
    rng = np.random.default_rng(0)
    labels = rng.choice(np.array([0, 3, 7, 20, 100, 101], dtype=np.int16), size=(20, 24, 18))
    atlas = write_nifti(tmp_path / "labels.nii.gz", labels, label_affine)
    run = write_nifti(tmp_path / "run.nii.gz", rng.integers(100, 2000, (22, 20, 16, 7)).astype(np.int16), run_affine)
    ours = ROISignals(str(atlas), empty="drop")(load(str(run)))
    reference, order = nilearn_means(str(atlas), str(run))
    assert ours.meta["roi_labels"] == order
    np.testing.assert_allclose(ours.numpy(), reference, rtol=1e-9, atol=0)  # integer voxels: float64-exact


def test_regions_outside_the_field_of_view_are_zero_rows_in_atlas_order_by_default():
    ours = ROISignals("AAL")(load(str(FUNCTIONAL)))
    atlas = load_atlas("AAL")
    empty = [i for i, name in enumerate(atlas.names) if name in ours.meta["roi_empty"]]
    assert ours.shape == (116, 20) and len(empty) == 90
    assert ours.meta["roi_labels"] == list(atlas.labels) and ours.meta["roi_names"] == list(atlas.names)
    assert np.all(ours.numpy()[empty] == 0) and np.all(np.delete(ours.numpy(), empty, axis=0) > 0)


def test_regions_outside_the_field_of_view_can_be_refused():
    with pytest.raises(ValueError, match=r"functional\.nii: 90 atlas regions have no voxel .*: Precentral_L"):
        ROISignals("AAL", empty="error")(load(str(FUNCTIONAL)))


def test_fortran_ordered_run_gives_the_same_means():
    run = load(str(FUNCTIONAL))
    fortran = np.asfortranarray(run.numpy())
    np.testing.assert_allclose(
        ROISignals("AAL")(fortran, affine=run.affine).numpy(), ROISignals("AAL")(run).numpy(), rtol=1e-12
    )


def test_non_finite_voxels_count_as_zero_as_in_nilearn():
    run = load(str(FUNCTIONAL))
    run[8, 10, 1, :5] = float("nan")
    run[9, 10, 1, 3] = float("inf")
    image = nib.Nifti1Image(run.numpy(), nib.load(FUNCTIONAL).affine)
    reference, _ = nilearn_means(load_atlas("AAL").image, image)
    np.testing.assert_allclose(ROISignals("AAL", empty="drop")(run).numpy(), reference, rtol=1e-7, atol=0)


def test_roi_means_allocate_far_less_than_a_float64_copy_of_the_run():
    affine = np.array([[3.0, 0, 0, -90], [0, 3, 0, -126], [0, 0, 3, -72], [0, 0, 0, 1]])
    run = np.random.default_rng(0).random((60, 72, 60, 40), dtype=np.float32)
    signals = ROISignals("AAL")
    signals(run, affine=affine)  # resample the atlas onto this grid once (cached)
    tracemalloc.start()
    signals(run, affine=affine)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < run.nbytes / 2  # a float64 copy would be 2 x run.nbytes


# --- repetition time -------------------------------------------------------------------------------------


def test_tr_in_milliseconds_under_seconds_unit_is_refused_with_a_hint():
    with pytest.raises(TRError, match=r"example4d\.nii\.gz: implausible TR 2000 s .*milliseconds: 2 s"):
        resolve_tr(NIBABEL_DATA / "example4d.nii.gz")


def test_manifest_tr_overrides_an_implausible_header():
    assert resolve_tr(NIBABEL_DATA / "example4d.nii.gz", "2.0") == 2.0


def test_header_tr_is_read_with_its_time_unit(tmp_path):
    data = np.zeros((2, 2, 2, 3), dtype=np.int16)
    bold = write_nifti(tmp_path / "msec.nii", data, np.eye(4), zooms=(2, 2, 2, 2500), units=("mm", "msec"))
    assert resolve_tr(bold) == 2.5


def test_missing_tr_is_refused(tmp_path):
    bold = write_nifti(tmp_path / "no_tr.nii", np.zeros((2, 2, 2, 3), np.int16), np.eye(4), zooms=(2, 2, 2, 0))
    with pytest.raises(TRError, match=r"no_tr\.nii: no TR in the manifest, the sidecar or the header"):
        resolve_tr(bold)


def test_tr_order_is_manifest_then_sidecar_then_header(tmp_path):
    bold = tmp_path / "sub-01_task-rest_bold.nii"
    shutil.copy(FUNCTIONAL, bold)
    assert resolve_tr(bold) == 2.0
    (tmp_path / "sub-01_task-rest_bold.json").write_text(json.dumps({"RepetitionTime": 2.5}))
    assert resolve_tr(bold) == 2.5
    assert resolve_tr(bold, "3.0") == 3.0


# --- temporal cleaning -----------------------------------------------------------------------------------


def test_temporal_clean_matches_nilearn_signal_clean():
    signals = np.random.default_rng(0).normal(size=(5, 120)).cumsum(axis=1)
    ours = TemporalClean(detrend=True, high_pass=0.01, low_pass=0.1)(torch.tensor(signals), tr=2.0)
    reference = clean(signals.T, detrend=True, standardize="zscore_sample", high_pass=0.01, low_pass=0.1, t_r=2.0).T
    np.testing.assert_allclose(ours.numpy(), reference, rtol=1e-4, atol=1e-5)


def write_confounds(path, volumes: int):
    """An fMRIPrep-like confounds table: motion, a derivative (n/a first row), tissue and global signals."""
    rng = np.random.default_rng(1)
    motion = ["trans_x", "trans_y", "trans_z", "rot_x", "rot_y", "rot_z"]
    table = pd.DataFrame(rng.normal(size=(volumes, 8)).cumsum(axis=0), columns=[*motion, "csf", "white_matter"])
    table["trans_x_derivative1"] = table["trans_x"].diff()
    table["global_signal"] = rng.normal(size=volumes)
    table.to_csv(path, sep="\t", index=False, na_rep="n/a")
    return path


@pytest.fixture
def confounds_tsv(tmp_path):
    """Confounds of a 120-volume run."""
    return write_confounds(tmp_path / "sub-01_desc-confounds_timeseries.tsv", 120)


def test_confound_regression_matches_nilearn_signal_clean(confounds_tsv):
    signals = np.random.default_rng(0).normal(size=(4, 120)).cumsum(axis=1)
    item = {"series": torch.tensor(signals), "tr": 2.0, "confounds": str(confounds_tsv)}
    ours = TemporalCleand("series", high_pass=0.01, low_pass=0.1)(item)["series"]
    table = pd.read_csv(confounds_tsv, sep="\t")
    regressors = table[["trans_x", "trans_y", "trans_z", "rot_x", "rot_y", "rot_z", "csf", "white_matter"]]
    reference = clean(signals.T, confounds=regressors.to_numpy(), high_pass=0.01, low_pass=0.1, t_r=2.0).T
    np.testing.assert_allclose(ours.numpy(), reference, rtol=1e-4, atol=1e-5)


def test_derivative_confounds_take_the_second_row_for_their_missing_first(confounds_tsv):
    confounds = load_confounds(confounds_tsv, ["trans_x*"])
    table = pd.read_csv(confounds_tsv, sep="\t")
    assert confounds.shape == (120, 2) and np.isnan(table["trans_x_derivative1"][0])
    assert confounds[0, 1] == table["trans_x_derivative1"][1]


def test_confound_pattern_matching_no_column_is_refused(confounds_tsv):
    with pytest.raises(ValueError, match=r"confounds_timeseries\.tsv: no confound column matches 'framewise_\*'"):
        load_confounds(confounds_tsv, ["csf", "framewise_*"])


def test_confounds_of_another_length_are_refused(confounds_tsv):
    with pytest.raises(ValueError, match="120 confound rows for a run of 100 volumes"):
        TemporalClean()(torch.randn(3, 100), confounds=load_confounds(confounds_tsv))


def test_run_too_short_to_filter_is_refused_clearly():
    with pytest.raises(ValueError, match="20 volumes is too short to band-pass"):
        TemporalClean(high_pass=0.01, low_pass=0.1)(torch.randn(3, 20), tr=2.0)


def test_band_pass_without_tr_is_refused():
    with pytest.raises(TRError, match="needs the run's TR"):
        TemporalClean(high_pass=0.01)(torch.randn(3, 50), tr=None)


# --- common time base and fixed length -------------------------------------------------------------------


def test_runs_with_different_trs_are_resampled_to_one_time_base():
    def slow_wave(tr: float, steps: int) -> torch.Tensor:
        return torch.sin(2 * torch.pi * 0.03 * tr * torch.arange(steps, dtype=torch.float64))[None]

    resample = TemporalResample(target_tr=2.5)
    fast, slow = resample(slow_wave(2.0, 150), tr=2.0), resample(slow_wave(3.0, 100), tr=3.0)
    assert fast.shape == slow.shape == (1, 120)
    torch.testing.assert_close(fast[:, 5:-5], slow_wave(2.5, 120)[:, 5:-5].float(), atol=0.02, rtol=0)
    torch.testing.assert_close(slow[:, 5:-5], slow_wave(2.5, 120)[:, 5:-5].float(), atol=0.02, rtol=0)


def test_manifest_items_carry_tr_and_confounds_into_a_common_time_base(tmp_path):
    confounds_tsv = write_confounds(tmp_path / "confounds.tsv", 20)
    for name, tr in (("a", 2.0), ("b", 3.0)):
        write_nifti(tmp_path / f"{name}.nii", np.asarray(nib.load(FUNCTIONAL).dataobj), nib.load(FUNCTIONAL).affine,
                    zooms=(4, 4, 8, tr))  # fmt: skip
    rows = "subject_id,diagnosis,fmri,confounds,split\ns1,CN,a.nii,,train\ns2,AD,b.nii,{},train\n"
    (tmp_path / "manifest.csv").write_text(rows.format(confounds_tsv.name))
    items = manifest_datalist(tmp_path / "manifest.csv", ["train"], ["fmri"])
    assert [(i["tr"], i["confounds"]) for i in items] == [(2.0, ""), (3.0, str(confounds_tsv))]
    chain = fmri_transforms("series", timepoints=12, high_pass=None, low_pass=None, common_tr=2.5, registration="none")
    outputs = [chain(item) for item in items]
    assert [o["tr"] for o in outputs] == [2.5, 2.5]
    assert outputs[0]["series"].shape == outputs[1]["series"].shape == (116, 12)


def test_fmri_chain_gives_zscored_fixed_length_roi_series():
    out = fmri_transforms(keys="series", timepoints=16, high_pass=None, low_pass=None, registration="none")(
        {"series": str(FUNCTIONAL), "tr": 2.0}
    )["series"]
    assert out.shape == (116, 16) and out.dtype == torch.float32
    active = out.abs().sum(dim=1) > 0
    assert active.sum() == 26
    full = fmri_transforms(keys="series", timepoints=20, high_pass=None, low_pass=None, registration="none")(
        {"series": str(FUNCTIONAL), "tr": 2.0}
    )["series"]
    torch.testing.assert_close(full[active].mean(dim=1), torch.zeros(26), atol=1e-5, rtol=0)
    torch.testing.assert_close(full[active].std(dim=1), torch.ones(26), atol=1e-4, rtol=0)


def test_evaluation_takes_the_centre_window_and_pads_short_runs_symmetrically():
    series = torch.arange(10.0).repeat(2, 1)
    assert TemporalPadOrCrop(4)(series)[0].tolist() == [3, 4, 5, 6]
    assert TemporalPadOrCrop(14)(series)[0].tolist() == [0, 0] + list(range(10)) + [0, 0]


def test_random_window_is_drawn_only_when_training_with_augmentation():
    deterministic, random = fmri_steps("series", train=True, augment=False)
    assert random == [] and type(deterministic[-1]).__name__ == "TemporalPadOrCropd"
    _, random = fmri_steps("series", train=True, augment=True)
    assert type(random[0]).__name__ == "RandTemporalCropd"


# --- augmentation ----------------------------------------------------------------------------------------

ALL_ON = {
    "noise": {"prob": 1.0},
    "amplitude": {"prob": 1.0},
    "roi_dropout": {"prob": 1.0, "fraction": 0.5},
    "drift": {"prob": 1.0},
}
MODES = {"roi": {}, "dfc": {"dfc_window": 6, "dfc_step": 2}, "volume": {"volume_size": (8, 10, 8)}}


@pytest.mark.parametrize("sequence", MODES)
def test_fmri_augmentation_is_reproducible_under_a_seed(sequence):
    options = {"timepoints": 12, "high_pass": None, "low_pass": None, "sequence": sequence, **MODES[sequence]}
    options["registration"] = "none"  # nibabel's functional.nii: three 8 mm slices, in MNI space already
    chain = fmri_transforms("series", train=True, augment=True, augmentation=ALL_ON, **options)
    runs = [chain.set_random_state(seed)({"series": str(FUNCTIONAL), "tr": 2.0})["series"] for seed in (7, 7, 8)]
    torch.testing.assert_close(runs[0], runs[1])
    assert not torch.allclose(runs[0], runs[2])
    plain = fmri_transforms("series", **options)({"series": str(FUNCTIONAL), "tr": 2.0})["series"]
    assert plain.shape == runs[0].shape and not torch.allclose(plain, runs[0])


def test_drift_adds_one_slow_sinusoid_to_every_series():
    series = torch.zeros(3, 50)
    drifted = RandDrift(prob=1.0, boundaries=(0.2, 0.3), frequencies=(0.05, 0.1)).set_random_state(0)(series)
    torch.testing.assert_close(drifted[0], drifted[2])
    assert 0.15 < float(drifted.abs().max()) <= 0.3


def test_unknown_augmentation_setting_is_refused():
    with pytest.raises(KeyError, match="fMRI augmentation 'drift': unknown setting"):
        fmri_steps("series", train=True, augment=True, augmentation={"drift": {"amplitude": 1}})


@pytest.mark.parametrize("fraction", [1.0, -0.1, 1.5])
def test_a_roi_dropout_fraction_outside_zero_to_one_is_refused(fraction):
    with pytest.raises(ValueError, match=r"RandROIDropout: fraction must be in \[0, 1\), got"):
        RandROIDropout(prob=1.0, fraction=fraction)


def test_an_augmentation_probability_above_one_is_refused_not_clamped():
    with pytest.raises(ValueError, match=r"RandROIDropout: prob must be in \[0, 1\], got 1.5"):
        fmri_steps("series", train=True, augment=True, augmentation={"roi_dropout": {"prob": 1.5}})


def test_cleaned_series_carry_their_metadata_only_while_monai_tracks_it():
    signals = ROISignals("AAL")(load(str(FUNCTIONAL)))
    cleaned = TemporalClean()(signals)
    assert isinstance(cleaned, MetaTensor) and cleaned.meta["roi_names"] == signals.meta["roi_names"]
    set_track_meta(False)
    try:
        assert type(TemporalClean()(signals)) is torch.Tensor
    finally:
        set_track_meta(True)


# --- sequence modes --------------------------------------------------------------------------------------


def test_sliding_window_correlations_match_numpy():
    series = torch.randn(5, 40, dtype=torch.float64)
    dfc = SlidingWindowCorrelation(window=10, step=5)(series)
    rows, cols = np.triu_indices(5, k=1)
    assert dfc.shape == (10, 7)
    for w in range(7):
        expected = np.corrcoef(series[:, 5 * w : 5 * w + 10].numpy())[rows, cols]
        np.testing.assert_allclose(dfc[:, w].numpy(), expected, atol=1e-5)


def test_a_constant_series_correlates_zero():
    series = torch.randn(3, 20)
    series[1] = 0
    dfc = SlidingWindowCorrelation(window=10, step=10)(series)
    assert torch.isfinite(dfc).all() and torch.all(dfc[[0, 2]] == 0)  # pairs (0, 1) and (1, 2)


def test_volume_mode_gives_the_same_ras_frames_in_either_voxel_order(tmp_path):
    image = nib.load(FUNCTIONAL)
    flip = np.diag([-1.0, 1, 1, 1])
    flip[0, 3] = image.shape[0] - 1
    flipped = write_nifti(tmp_path / "flipped.nii", np.asarray(image.dataobj)[::-1].copy(), image.affine @ flip,
                          zooms=image.header.get_zooms())  # fmt: skip
    chain = fmri_transforms("series", timepoints=20, high_pass=None, low_pass=None, sequence="volume")
    frames = [chain({"series": str(path), "tr": 2.0})["series"] for path in (FUNCTIONAL, flipped)]
    assert frames[0].shape == (16, 20, 16, 20) and frames[0].abs().sum() > 0
    torch.testing.assert_close(frames[0], frames[1])


def test_unknown_sequence_mode_is_refused():
    with pytest.raises(ValueError, match="fmri sequence must be one of roi, dfc, volume, got 'graph'"):
        fmri_steps("series", sequence="graph")
    with pytest.raises(ValueError, match="fmri sequence must be one of roi, dfc, volume, got 'graph'"):
        FMRIClassifier(sequence="graph")


def test_too_few_dfc_windows_are_refused():
    with pytest.raises(ValueError, match="dfc: 32 time points give fewer than 2 windows of 30"):
        fmri_steps("series", timepoints=32, sequence="dfc")


SEQUENCE_INPUTS = {"roi": (2, 116, 16), "dfc": (2, 45, 5), "volume": (2, 8, 10, 8, 6)}


@pytest.mark.parametrize("sequence", SEQUENCE_INPUTS)
def test_networks_in_every_sequence_mode_script_and_classify(sequence):
    n_rois = 10 if sequence == "dfc" else 116
    series = torch.randn(SEQUENCE_INPUTS[sequence])
    for network, inputs in (
        (FMRIClassifier(n_rois=n_rois, sequence=sequence), (series,)),
        (FusionClassifier(n_rois=n_rois, fmri_sequence=sequence), (torch.randn(2, 1, 16, 16, 16), series)),
    ):
        network.eval()
        with torch.no_grad():
            logits = network(*inputs)
            torch.testing.assert_close(torch.jit.script(network)(*inputs), logits)
        assert logits.shape == (2, 3)


BUNDLE_OVERRIDES = {
    "fmri_timepoints": 12,
    "high_pass": None,
    "low_pass": None,
    "fmri_dfc_window": 6,
    "fmri_dfc_step": 2,
    "fmri_volume_size": [8, 10, 8],
    "mri_spatial_size": [16, 16, 16],
    "mri_pixdim": [4.0, 4.0, 4.0],
}


@pytest.mark.parametrize("config, chain", [("train.yaml", "train#preprocessing"), ("inference.yaml", "preprocessing")])
@pytest.mark.parametrize("bundle", ["fmri_lstm", "mri_fmri_fusion"])
@pytest.mark.parametrize("sequence", MODES)
def test_bundle_chain_feeds_its_network_in_every_sequence_mode(bundle, config, chain, sequence):
    parser = ConfigParser()
    parser.read_config(str(REPO / "bundles" / bundle / "configs" / config))
    # nibabel's anatomical.nii is a 66 x 82 x 50 mm partial field of view and functional.nii three 8 mm slices (both
    # in MNI space already): not registrable, and not the point here
    parser.update(
        {
            **BUNDLE_OVERRIDES,
            "fmri_sequence": sequence,
            "augment": True,
            "device": "cpu",
            "mri_registration": "none",
            "fmri_registration": "none",
        }
    )
    keys = parser.get_parsed_content("data_keys")
    item = {keys["fmri"]: str(FUNCTIONAL), "tr": 2.0, keys.get("mri", "mri"): str(ANATOMICAL)}
    transform = parser.get_parsed_content(chain)
    batch = [transform(dict(item)) for _ in range(2)]
    inputs = [torch.stack([b[keys[m]] for b in batch]) for m in parser.get_parsed_content("modalities")]
    network = parser.get_parsed_content("network_def").eval()
    with torch.no_grad():
        assert network(*inputs).shape == (2, 3)


# --- command line and benchmark --------------------------------------------------------------------------


def test_roi_command_writes_the_raw_means_nilearn_gives(tmp_path, capsys):
    argv = ["roi", str(FUNCTIONAL), "--out", str(tmp_path / "s.tsv"), "--empty", "drop", "--registration", "none"]
    assert main(argv) == 0
    table = pd.read_csv(tmp_path / "s.tsv", sep="\t")
    reference, labels = nilearn_means(load_atlas("AAL").image, str(FUNCTIONAL))
    atlas = load_atlas("AAL")
    assert list(table.columns) == [atlas.names[atlas.labels.index(label)] for label in labels]
    np.testing.assert_allclose(table.to_numpy().T, reference, rtol=1e-7, atol=0)
    assert "26 ROIs x 20 volumes" in capsys.readouterr().out


def test_roi_command_cleans_with_confounds_when_asked(tmp_path):
    confounds = write_confounds(tmp_path / "confounds.tsv", 20)
    out = tmp_path / "clean.npy"
    argv = ["roi", str(FUNCTIONAL), "--out", str(out), "--empty", "drop", "--detrend", "--standardize"]
    argv += ["--registration", "none"]
    assert main([*argv, "--confounds", str(confounds), "--confound-columns", "csf", "trans_x*"]) == 0
    raw = ROISignals("AAL", empty="drop")(load(str(FUNCTIONAL))).numpy()
    regressors = load_confounds(confounds, ["csf", "trans_x*"])
    reference = clean(raw.T, detrend=True, standardize="zscore_sample", confounds=regressors).T
    np.testing.assert_allclose(np.load(out), reference, rtol=1e-4, atol=1e-5)


def test_bench_roi_prints_both_times_the_ratio_and_peak_memory(capsys):
    assert main(["bench", "roi", "--bold", str(FUNCTIONAL), "--repeats", "1"]) == 0
    out = capsys.readouterr().out
    assert "nilearn NiftiLabelsMasker" in out and "neurofusion ROISignals, warm" in out
    assert out.count("ratio") == 2 and "peak memory: ours" in out
