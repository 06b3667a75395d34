"""Spatial normalisation of BOLD runs (the mean EPI registered affinely to MNI152, the run's affine replaced): the
planted pose is recovered, a moved run gives the ROI series of the unmoved one, fMRIPrep MNI-space runs are
skipped, ``none`` is today's chain, and a run that cannot be registered is refused in one line."""

from __future__ import annotations

import shutil

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from monai.transforms import LoadImage

from pipeline.cli import main
from pipeline.synth.anatomy import template_space
from pipeline.synth.functional import planted_bold_to_subject
from pipeline.transforms import ROISignals, fmri_steps, fmri_transforms
from pipeline.transforms.fmri_registration import (
    BOLDRegistrationError,
    RegisterBOLD,
    RegisterBOLDd,
    in_mni_space,
    mean_epi,
)
from pipeline.transforms.registration import (
    SIMILARITY,
    TO_SUBJECT,
    Registration,
    RegistrationCache,
    RegistrationError,
)
from tests.conftest import NIBABEL_DATA

GOAL_MM = 2.0  # residual goal at the hippocampi and lateral ventricles, as for T1s
#: ROI-series correlation of a registered run with its unmoved copy (demo profile, 4 mm BOLD; measured: 5th percentile
#: over ROIs 0.988-0.997, median 0.999-1.000 on 8 runs; without registration the 5th percentile is 0.24-0.54)
ROI_P5, ROI_MEDIAN = 0.95, 0.99
FMRIPREP = "space-MNI152NLin2009cAsym_desc-preproc_bold.nii.gz"
load = LoadImage(image_only=True, dtype=np.float32)


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    """One CN and one AD paired subject of the demo profile (4 mm BOLD, each run in its own pose)."""
    from pipeline.synth import write_cohort

    out = tmp_path_factory.mktemp("fmri-registration") / "bids"
    write_cohort(out, n_cn=1, n_mci=0, n_ad=1, n_mri_only=0, profile="demo", progress=False)
    return out


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """A registration cache shared by this module's tests: each run is registered once."""
    return tmp_path_factory.mktemp("bold-registrations")


def run_of(cohort, index: int = 0):
    truth = pd.read_csv(cohort / "synth_truth.tsv", sep="\t").iloc[index]
    sid = truth["participant_id"]
    return cohort / sid / "func" / f"{sid}_task-rest_bold.nii.gz", truth


def unmoved_copy(path, truth, folder, name="unmoved_bold.nii.gz"):
    """The same voxels with the template-aligned affine the truth gives (the run as if it lay in MNI space)."""
    image = nib.load(path)
    affine = np.linalg.inv(planted_bold_to_subject(truth)) @ image.affine
    out = folder / name
    nib.save(nib.Nifti1Image(np.asarray(image.dataobj), affine, image.header), out)
    return out


def roi_correlations(series: np.ndarray, reference: np.ndarray) -> np.ndarray:
    return np.array([np.corrcoef(a, b)[0, 1] for a, b in zip(series, reference)])


def landmarks_mm() -> list[np.ndarray]:
    space = template_space()
    return [centre for centre, _ in space.hippocampi] + [centre for centre, _ in space.ventricles]


def test_registration_recovers_the_planted_bold_pose(cohort, cache):
    for index in (0, 1):
        path, truth = run_of(cohort, index)
        original = load(str(path))
        registered = RegisterBOLD(cache_dir=cache)(original)
        found, planted = registered.meta[TO_SUBJECT], planted_bold_to_subject(truth)
        residual = [np.linalg.norm((found @ [*p, 1])[:3] - (planted @ [*p, 1])[:3]) for p in landmarks_mm()]
        assert max(residual) < GOAL_MM, residual
        assert registered.meta[SIMILARITY] > 0.95
        # the 4D run is not resampled (not even copied); only its affine moves into template space
        assert registered.as_tensor().data_ptr() == original.as_tensor().data_ptr()
        np.testing.assert_allclose(
            registered.affine.numpy(), np.linalg.inv(found) @ original.affine.numpy(), rtol=0, atol=1e-9
        )


def test_a_moved_run_gives_the_roi_series_of_the_unmoved_run(cohort, cache, tmp_path):
    for index in (0, 1):
        path, truth = run_of(cohort, index)
        reference = ROISignals("AAL")(load(str(unmoved_copy(path, truth, tmp_path)))).numpy()
        registered = ROISignals("AAL")(RegisterBOLD(cache_dir=cache)(load(str(path)))).numpy()
        unregistered = ROISignals("AAL")(load(str(path))).numpy()
        good, bad = roi_correlations(registered, reference), roi_correlations(unregistered, reference)
        assert np.percentile(good, 5) > ROI_P5 and np.median(good) > ROI_MEDIAN, (np.percentile(good, 5), good.min())
        assert np.percentile(bad, 5) < 0.8  # the planted pose matters: unregistered, regions are taken elsewhere


def test_the_chain_registers_by_default_and_none_is_the_chain_without_registration(cohort, cache):
    path, _ = run_of(cohort)
    options = {"timepoints": 64, "high_pass": None, "low_pass": None}
    deterministic, _ = fmri_steps("series", **options)
    assert [type(step).__name__ for step in deterministic[:5]] == [
        "CheckImageFiled",
        "LoadImaged",
        "CheckImageValuesd",
        "RegisterBOLDd",
        "ROISignalsd",
    ]
    plain, _ = fmri_steps("series", registration="none", **options)
    assert "RegisterBOLDd" not in [type(step).__name__ for step in plain]
    item = {"series": str(path), "tr": 3.0}
    none = fmri_transforms("series", registration="none", **options)(dict(item))["series"]
    registered = fmri_transforms("series", registration_options={"cache_dir": cache}, **options)(dict(item))["series"]
    assert none.shape == registered.shape == (116, 64) and not torch.allclose(none, registered)


def test_none_reproduces_the_roi_series_of_the_run_as_it_is(cohort, tmp_path, capsys):
    path, _ = run_of(cohort)
    today = ROISignals("AAL")(load(str(path)))
    run = load(str(path))
    assert RegisterBOLD("none")(run) is run
    ours = RegisterBOLDd(keys="series", mode="none")({"series": run})["series"]
    np.testing.assert_array_equal(ROISignals("AAL")(ours).numpy(), today.numpy())
    out = tmp_path / "none.npy"
    assert main(["roi", str(path), "--out", str(out), "--registration", "none"]) == 0
    np.testing.assert_array_equal(np.load(out), today.numpy())


def test_roi_command_gives_the_series_the_model_sees(cohort, cache, tmp_path):
    path, _ = run_of(cohort)
    out = tmp_path / "auto.npy"
    assert main(["roi", str(path), "--out", str(out), "--registration-cache", str(cache)]) == 0
    expected = ROISignals("AAL")(RegisterBOLD(cache_dir=cache)(load(str(path)))).numpy()
    np.testing.assert_array_equal(np.load(out), expected)


@pytest.mark.parametrize(
    "name, mni",
    [
        (f"sub-01_task-rest_{FMRIPREP}", True),
        ("sub-01_task-rest_space-MNI152NLin6Asym_res-2_desc-preproc_bold.nii.gz", True),
        ("sub-01_ses-1_task-rest_space-MNIPediatricAsym_cohort-2_bold.nii", True),
        ("sub-01_task-rest_space-T1w_desc-preproc_bold.nii.gz", False),
        ("sub-01_task-rest_bold.nii.gz", False),
        ("sub-01_task-MNIrest_bold.nii.gz", False),
    ],
)
def test_mni_space_is_read_from_the_bids_space_entity(name, mni):
    assert in_mni_space(f"/data/derivatives/fmriprep/sub-01/func/{name}") is mni


def test_fmriprep_mni_space_runs_skip_registration_under_auto(cohort, tmp_path):
    path, truth = run_of(cohort)
    sid = truth["participant_id"]
    fmriprep = unmoved_copy(path, truth, tmp_path, f"{sid}_task-rest_{FMRIPREP}")
    run = load(str(fmriprep))
    skipped = RegisterBOLD("auto")(run)
    assert skipped is run and TO_SUBJECT not in skipped.meta
    chain = {"timepoints": 64, "high_pass": None, "low_pass": None}
    item = {"series": str(fmriprep), "tr": 3.0}
    auto = fmri_transforms("series", **chain)(dict(item))["series"]
    none = fmri_transforms("series", registration="none", **chain)(dict(item))["series"]
    torch.testing.assert_close(auto, none, rtol=0, atol=0)


def test_registration_repeats_exactly_and_the_cache_gives_the_same_matrix(cohort, tmp_path):
    path, _ = run_of(cohort, 1)
    run = load(str(path))
    first, second = RegisterBOLD()(run), RegisterBOLD()(run)
    np.testing.assert_array_equal(first.meta[TO_SUBJECT], second.meta[TO_SUBJECT])
    cached = RegisterBOLD(cache_dir=tmp_path)(run)
    (entry,) = tmp_path.glob("*.npz")
    again = RegisterBOLD(cache_dir=tmp_path)(run)
    np.testing.assert_array_equal(cached.meta[TO_SUBJECT], first.meta[TO_SUBJECT])
    np.testing.assert_array_equal(again.meta[TO_SUBJECT], first.meta[TO_SUBJECT])
    found = RegistrationCache(tmp_path).get(entry.stem)
    assert found.bias is None and found.similarity == first.meta[SIMILARITY]


def test_a_registration_that_stretches_the_head_implausibly_is_refused():
    slab_like = Registration(np.diag([1.0, 1.0, 0.3, 1.0]), None, np.eye(4), 0.95)
    with pytest.raises(BOLDRegistrationError, match=r"head scale 0.30-1.00 of the template's is outside 0.75-1.33"):
        RegisterBOLD().check(slab_like, "run.nii.gz")
    RegisterBOLD().check(Registration(np.diag([1.1, 0.9, 1.0, 1.0]), None, np.eye(4), 0.95), "run.nii.gz")


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="fmri_registration must be one of"):
        fmri_steps("series", registration="rigid")
    with pytest.raises(ValueError, match="seed must be >= 1"):
        RegisterBOLD(seed=0)
    with pytest.raises(ValueError, match="4D"):
        mean_epi(np.zeros((4, 4, 4)))


def slab_of(path, folder, slices: int = 4):
    """A few axial slices of the run (the rest of the field of view empty)."""
    image = nib.load(path)
    data = np.asarray(image.dataobj).copy()
    middle = data.shape[2] // 2
    data[:, :, :middle] = 0
    data[:, :, middle + slices :] = 0
    out = folder / "slab_bold.nii.gz"
    nib.save(nib.Nifti1Image(data, image.affine, image.header), out)
    return out


@pytest.mark.parametrize("run", ["nibabel functional.nii", "slab"])
def test_a_run_that_cannot_be_registered_is_refused_in_one_line(cohort, tmp_path, capsys, run):
    if run == "slab":
        path = slab_of(run_of(cohort)[0], tmp_path)
    else:  # real EPI: three 8 mm slices, not named as in MNI space
        path = tmp_path / "sub-01_task-rest_bold.nii"
        shutil.copy(NIBABEL_DATA / "functional.nii", path)
    out = tmp_path / "series.tsv"
    assert main(["roi", str(path), "--out", str(out)]) == 1
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and str(path) in lines[0], lines
    assert "registration of the mean EPI to the MNI152 template failed" in lines[0] and not out.exists()
    with pytest.raises(Exception) as caught:
        fmri_transforms("series", timepoints=16, high_pass=None, low_pass=None)({"series": str(path), "tr": 2.0})
    failure = RegistrationError.within(caught.value)
    assert isinstance(failure, BOLDRegistrationError) and failure.source == str(path)


def test_a_study_registers_each_bold_run_once_before_its_fold_jobs_and_the_chain_reads_it(cohort, tmp_path):
    from pipeline.study.executor import Execution
    from pipeline.study.runner import register_subjects, registration_cache
    from pipeline.study.spec import load_study

    study = tmp_path / "study.yaml"
    cohorts = {"paired": {"manifest": str(cohort / "manifest.csv")}}
    study.write_text(yaml.safe_dump({"name": "bold", "cohorts": cohorts, "models": ["fmri_lstm"], "cv": {"folds": 2}}))
    register_subjects(load_study(study), tmp_path / "run", Execution(jobs=1), progress=False)
    cache = registration_cache(tmp_path / "run")
    entries = sorted(cache.glob("*.npz"))
    assert len(entries) == 2  # the two BOLD runs; the LSTM reads no T1
    chain = fmri_transforms("series", timepoints=64, registration_options={"cache_dir": cache})
    for index in (0, 1):
        chain({"series": str(run_of(cohort, index)[0]), "tr": 3.0})
    assert sorted(cache.glob("*.npz")) == entries  # the fold jobs' chain found each run's registration
