"""Behaviour of the synthetic cohort writer (tiny profile)."""

from __future__ import annotations

import csv
import dataclasses
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from nilearn.image import index_img, resample_to_img

from pipeline.data.atlas import load_atlas
from pipeline.synth import (
    ATROPHY_REGIONS,
    DMN_REGIONS,
    MANIFEST_COLUMNS,
    PROFILES,
    atrophy_mask,
    network_of,
    write_cohort,
)

TINY = PROFILES["tiny"]
HIPPOCAMPUS = ("Hippocampus_L", "Hippocampus_R")
PAIRED = ["sub-001", "sub-002", "sub-003", "sub-004", "sub-005", "sub-006"]
MRI_ONLY = ["sub-m0001", "sub-m0002", "sub-m0003", "sub-m0004"]


def _write(out: Path, **kwargs) -> Path:
    kwargs = {"n_cn": 0, "n_mci": 0, "n_ad": 0, "profile": "tiny", "progress": False, **kwargs}
    return write_cohort(out, **kwargs)


def _read_csv(path: Path, delimiter: str = ",") -> list[dict]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle, delimiter=delimiter))


def _data(path: Path) -> np.ndarray:
    return np.asarray(nib.load(str(path)).dataobj)


@pytest.fixture(scope="module")
def cohort(tmp_path_factory) -> Path:
    """2 CN / 2 MCI / 2 AD paired subjects plus 4 MRI-only subjects; returns the dataset root."""
    manifest = _write(tmp_path_factory.mktemp("synth") / "cohort", n_cn=2, n_mci=2, n_ad=2, n_mri_only=4, seed=3)
    return manifest.parent


@pytest.fixture(scope="module")
def matched(tmp_path_factory) -> dict[tuple[str, float], Path]:
    """The same three subjects (same seed and index) written once as CN and once as AD, with and without
    structural effect: every difference between a CN and an AD version is the disease effect."""
    root = tmp_path_factory.mktemp("matched")
    cohorts = {}
    for effect in (0.0, 3.0):
        for diagnosis, counts in (("CN", {"n_cn": 3}), ("AD", {"n_ad": 3})):
            out = root / f"{diagnosis}-{effect}"
            cohorts[diagnosis, effect] = _write(out, structural_effect=effect, seed=11, **counts).parent
    return cohorts


def test_every_subject_has_a_t1_and_only_paired_subjects_have_rest_bold(cohort):
    for sid in PAIRED + MRI_ONLY:
        assert (cohort / sid / "anat" / f"{sid}_T1w.nii.gz").is_file()
        assert (cohort / sid / "anat" / f"{sid}_T1w.json").is_file()
    for sid in PAIRED:
        assert (cohort / sid / "func" / f"{sid}_task-rest_bold.nii.gz").is_file()
        assert (cohort / sid / "func" / f"{sid}_task-rest_bold.json").is_file()
    for sid in MRI_ONLY:
        assert not (cohort / sid / "func").exists()


def test_dataset_description_and_readme_declare_a_synthetic_raw_bids_dataset(cohort):
    description = json.loads((cohort / "dataset_description.json").read_text())
    assert description["BIDSVersion"] == "1.8.0"
    assert description["DatasetType"] == "raw"
    assert description["Name"] and description["GeneratedBy"][0]["Name"] == "neurofusion.synth"
    assert "SYNTHETIC" in (cohort / "README").read_text()
    assert set(json.loads((cohort / "participants.json").read_text())) >= {"diagnosis", "age", "sex", "site"}


def test_participants_tsv_balances_labels_as_requested(cohort):
    rows = _read_csv(cohort / "participants.tsv", delimiter="\t")
    assert list(rows[0]) == ["participant_id", "diagnosis", "age", "sex", "site"]
    assert [r["participant_id"] for r in rows] == PAIRED + MRI_ONLY
    paired = [r["diagnosis"] for r in rows[:6]]
    mri_only = [r["diagnosis"] for r in rows[6:]]
    assert paired == ["CN", "CN", "MCI", "MCI", "AD", "AD"]
    assert sorted(mri_only) == ["AD", "CN", "CN", "MCI"]  # 4 split as evenly as possible
    assert all(55 <= float(r["age"]) <= 95 and r["sex"] in {"F", "M"} and r["site"] for r in rows)


def test_t1_is_3d_int16_on_the_profile_voxel_size_in_mm(cohort):
    img = nib.load(str(cohort / "sub-001" / "anat" / "sub-001_T1w.nii.gz"))
    assert img.ndim == 3
    assert img.get_data_dtype() == np.int16
    assert np.allclose(nib.affines.voxel_sizes(img.affine), TINY.t1_voxel_mm)
    assert np.allclose(img.header.get_zooms(), TINY.t1_voxel_mm)
    assert img.header.get_xyzt_units()[0] == "mm"
    assert int(img.header["sform_code"]) > 0 and int(img.header["qform_code"]) > 0
    assert np.allclose(img.header.get_qform(), img.affine)


def test_bold_is_4d_with_n_volumes_and_tr_in_header_and_sidecar(cohort):
    func = cohort / "sub-002" / "func"
    img = nib.load(str(func / "sub-002_task-rest_bold.nii.gz"))
    assert img.ndim == 4 and img.shape[3] == TINY.n_volumes
    assert img.get_data_dtype() == np.int16
    assert np.allclose(img.header.get_zooms(), (TINY.fmri_voxel_mm,) * 3 + (TINY.tr,))
    assert img.header.get_xyzt_units() == ("mm", "sec")
    sidecar = json.loads((func / "sub-002_task-rest_bold.json").read_text())
    assert sidecar["RepetitionTime"] == TINY.tr and sidecar["TaskName"] == "rest"


def test_bold_lies_on_a_scanner_grid_in_the_pose_the_truth_records(cohort):
    from nilearn.datasets import load_mni152_brain_mask

    from pipeline.synth.anatomy import output_grid, resample_nearest
    from pipeline.synth.functional import planted_bold_to_subject

    truth = {r["participant_id"]: r for r in _read_csv(cohort / "synth_truth.tsv", delimiter="\t")}
    template = load_mni152_brain_mask(resolution=1)
    for sid in PAIRED[:3]:
        row = {key: float(value) for key, value in truth[sid].items() if key[-2:-1] == "_" and key[-1].isdigit()}
        moved = [row[f"bold_rotation_deg_{i}"] - row[f"rotation_deg_{i}"] for i in range(3)]
        assert 0 < max(map(abs, moved)) <= 2.0  # the T1's pose plus a small motion between the runs
        img = nib.load(str(cohort / sid / "func" / f"{sid}_task-rest_bold.nii.gz"))
        assert img.shape[:3] != output_grid(TINY.fmri_voxel_mm)[0]  # not the template's grid
        brain = np.asarray(img.dataobj).mean(axis=-1) > 100  # background noise is below 3
        planted = np.linalg.inv(planted_bold_to_subject(row)) @ img.affine  # run voxels -> template mm
        dice = {}
        for name, affine in (("planted", planted), ("as stored", img.affine)):
            mask = resample_nearest(np.asarray(template.dataobj), template.affine, img.shape[:3], affine) > 0
            dice[name] = 2 * (mask & brain).sum() / (mask.sum() + brain.sum())
        assert dice["planted"] > 0.9 and dice["planted"] > dice["as stored"] + 0.03, dice


def test_manifest_paths_are_relative_and_resolve_to_files(cohort):
    rows = _read_csv(cohort / "manifest.csv")
    assert tuple(rows[0]) == MANIFEST_COLUMNS
    assert [r["subject_id"] for r in rows] == PAIRED + MRI_ONLY
    for row in rows:
        assert row["session_id"] == ""
        for key in ("mri", "fmri"):
            if row[key]:
                assert not Path(row[key]).is_absolute() and (cohort / row[key]).is_file()
    assert all(r["fmri"] and float(r["tr"]) == TINY.tr for r in rows[:6])
    assert all(r["fmri"] == "" and r["tr"] == "" for r in rows[6:])


def test_paired_and_mri_only_manifests_split_the_rows(cohort):
    paired = _read_csv(cohort / "manifest_paired.csv")
    mri_only = _read_csv(cohort / "manifest_mri_only.csv")
    assert [r["subject_id"] for r in paired] == PAIRED
    assert [r["subject_id"] for r in mri_only] == MRI_ONLY
    assert tuple(paired[0]) == tuple(mri_only[0]) == MANIFEST_COLUMNS


def test_a_seed_reproduces_the_cohort_and_another_seed_changes_it(cohort, tmp_path):
    again = _write(tmp_path / "again", n_cn=2, n_mci=2, n_ad=2, n_mri_only=4, seed=3).parent
    other = _write(tmp_path / "other", n_cn=2, n_mci=2, n_ad=2, n_mri_only=4, seed=4).parent
    assert (again / "manifest.csv").read_text() == (cohort / "manifest.csv").read_text()
    for row in _read_csv(cohort / "manifest.csv"):
        for key in ("mri", "fmri"):
            if row[key]:
                assert np.array_equal(_data(again / row[key]), _data(cohort / row[key]))
                assert not np.array_equal(_data(other / row[key]), _data(cohort / row[key]))


def test_adding_subjects_does_not_change_earlier_ones(cohort, tmp_path):
    bigger = _write(tmp_path / "bigger", n_cn=2, n_mci=2, n_ad=3, n_mri_only=5, seed=3).parent
    for sid in ("sub-001", "sub-006", "sub-m0004"):
        t1 = f"{sid}/anat/{sid}_T1w.nii.gz"
        assert np.array_equal(_data(bigger / t1), _data(cohort / t1))


def test_worker_processes_write_the_same_cohort_as_one_process(cohort, tmp_path):
    parallel = _write(tmp_path / "parallel", n_cn=2, n_mci=2, n_ad=2, n_mri_only=4, seed=3, workers=2).parent
    for name in ("manifest.csv", "synth_truth.tsv", "participants.tsv"):
        assert (parallel / name).read_text() == (cohort / name).read_text()
    files = sorted(p.relative_to(cohort) for p in cohort.rglob("*.nii.gz"))
    assert files == sorted(p.relative_to(parallel) for p in parallel.rglob("*.nii.gz"))
    assert all(np.array_equal(_data(parallel / f), _data(cohort / f)) for f in files)


def test_refuses_a_non_empty_output_folder(tmp_path):
    out = tmp_path / "taken"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(ValueError, match="not empty"):
        _write(out, n_cn=1)
    assert [p.name for p in out.iterdir()] == ["keep.txt"]


def test_a_failure_leaves_no_half_written_cohort(tmp_path, monkeypatch):
    import pipeline.synth.cohort as cohort_module

    def broken(*args, **kwargs):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(cohort_module, "synthesize_bold", broken)
    with pytest.raises(RuntimeError, match="disk on fire"):
        _write(tmp_path / "cohort", n_cn=1)
    assert list(tmp_path.iterdir()) == []


def _hippocampal_means(root: Path) -> np.ndarray:
    means = []
    for row in _read_csv(root / "manifest.csv"):
        img = nib.load(str(root / row["mri"]))
        means.append(np.asarray(img.dataobj)[atrophy_mask(img, HIPPOCAMPUS)].mean())
    return np.array(means)


def test_structural_effect_darkens_the_hippocampus_in_ad(matched):
    cn, ad = _hippocampal_means(matched["CN", 3.0]), _hippocampal_means(matched["AD", 3.0])
    assert np.all(ad < cn)
    assert ad.mean() < 0.95 * cn.mean()


def test_without_structural_effect_the_diagnosis_leaves_the_t1_unchanged(matched):
    cn, ad = matched["CN", 0.0], matched["AD", 0.0]
    for row in _read_csv(cn / "manifest.csv"):
        assert np.array_equal(_data(cn / row["mri"]), _data(ad / row["mri"]))
    assert np.array_equal(_hippocampal_means(cn), _hippocampal_means(ad))


def _dmn_coupling(root: Path) -> np.ndarray:
    """Mean pairwise correlation of DMN ROI mean signals, per subject."""
    atlas = load_atlas("AAL")
    dmn = [atlas.labels[atlas.index_of(name)] for name in DMN_REGIONS]
    coupling = []
    for row in _read_csv(root / "manifest.csv"):
        img = nib.load(str(root / row["fmri"]))
        labels = np.asarray(
            resample_to_img(
                atlas.image, index_img(img, 0), interpolation="nearest", force_resample=True, copy_header=True
            ).dataobj
        )
        data = np.asarray(img.dataobj, dtype=np.float64)
        signals = np.array([data[labels == label].mean(axis=0) for label in dmn if (labels == label).any()])
        corr = np.corrcoef(signals)
        coupling.append(corr[np.triu_indices_from(corr, k=1)].mean())
    return np.array(coupling)


def test_dmn_coupling_is_stronger_in_cn_than_in_ad(matched):
    cn, ad = _dmn_coupling(matched["CN", 0.0]), _dmn_coupling(matched["AD", 0.0])
    assert np.all(cn > ad)
    assert cn.mean() - ad.mean() > 0.1


def test_atrophy_mask_maps_regions_onto_any_reference_grid(cohort):
    bold = nib.load(str(cohort / "sub-001" / "func" / "sub-001_task-rest_bold.nii.gz"))
    full = atrophy_mask(bold)
    hippocampus = atrophy_mask(bold, HIPPOCAMPUS)
    assert full.shape == bold.shape[:3] and full.dtype == bool
    assert hippocampus.any() and np.all(full[hippocampus]) and full.sum() > hippocampus.sum()
    with pytest.raises(ValueError, match="not atrophy regions"):
        atrophy_mask(bold, ["Precuneus_L"])


def test_every_aal_region_belongs_to_a_network_and_dmn_regions_to_the_default_mode():
    names = load_atlas("AAL").names
    assert all(network_of(name) != "none" for name in names)
    assert set(DMN_REGIONS) <= set(names) and set(ATROPHY_REGIONS) <= set(names)
    assert {network_of(name) for name in DMN_REGIONS} == {"default"}


def test_profiles_are_frozen_and_ordered_by_resolution():
    assert set(PROFILES) >= {"tiny", "demo", "full"}
    assert PROFILES["full"].t1_voxel_mm < PROFILES["demo"].t1_voxel_mm < PROFILES["tiny"].t1_voxel_mm
    with pytest.raises(dataclasses.FrozenInstanceError):
        PROFILES["demo"].tr = 1.0


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"n_cn": -1}, "non-negative"),
        ({"n_cn": 1, "profile": "huge"}, "unknown synth profile"),
        ({"n_cn": 1, "structural_effect": -1.0}, "structural_effect"),
        ({}, "empty"),
    ],
)
def test_bad_arguments_are_rejected_with_a_clear_message(tmp_path, kwargs, message):
    with pytest.raises(ValueError, match=message):
        _write(tmp_path / "cohort", **kwargs)
