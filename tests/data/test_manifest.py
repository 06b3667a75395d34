"""Manifest validation: every problem is reported with its file, line and subject."""

from __future__ import annotations

import gzip
import shutil
from pathlib import Path

import pytest

from pipeline.data.manifest import load_manifest, read_manifest, validate_manifest
from pipeline.errors import ManifestError
from tests.conftest import NIBABEL_DATA


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


@pytest.fixture()
def images(tmp_path) -> Path:
    """A folder with a real T1 (nibabel's anatomical.nii) and a real BOLD run (functional.nii)."""
    shutil.copy(NIBABEL_DATA / "anatomical.nii", tmp_path / "t1.nii")
    shutil.copy(NIBABEL_DATA / "functional.nii", tmp_path / "bold.nii")
    return tmp_path


def test_valid_manifest_resolves_relative_paths_against_its_folder(images):
    path = write(images / "m.csv", "subject_id,diagnosis,mri,fmri\nsub-01,CN,t1.nii,bold.nii\n")
    frame = load_manifest(path, require_diagnosis=True)
    assert frame.loc[0, "mri"] == str(images / "t1.nii")
    assert Path(frame.loc[0, "fmri"]).is_file()


def test_missing_required_column_is_named(images):
    path = write(images / "m.csv", "participant,diagnosis,mri\nsub-01,CN,t1.nii\n")
    with pytest.raises(ManifestError, match="missing required column.*subject_id"):
        read_manifest(path)


def test_unknown_diagnosis_names_line_and_subject(images):
    path = write(images / "m.csv", "subject_id,diagnosis,mri\nsub-01,CN,t1.nii\nsub-02,Dementia,t1.nii\n")
    problems = validate_manifest(read_manifest(path), check_files=False)
    assert len(problems) == 1
    assert f"{path}:3: sub-02: unknown diagnosis 'Dementia'" in problems[0]


def test_duplicate_subject_session_rows_are_reported(images):
    text = "subject_id,session_id,diagnosis,mri\nsub-01,bl,CN,t1.nii\nsub-01,m12,CN,t1.nii\nsub-01,bl,CN,t1.nii\n"
    problems = validate_manifest(read_manifest(write(images / "m.csv", text)))
    assert problems == [f"{images / 'm.csv'}: duplicate subject/session rows on lines 2, 4"]


def test_missing_and_unreadable_files_are_reported(images):
    (images / "broken.nii.gz").write_bytes(b"not a nifti at all")
    text = "subject_id,diagnosis,mri\nsub-01,CN,absent.nii.gz\nsub-02,AD,broken.nii.gz\n"
    problems = validate_manifest(read_manifest(write(images / "m.csv", text)))
    assert "sub-01: mri file not found" in problems[0]
    assert "sub-02: mri file is not a readable NIfTI" in problems[1]


def test_wrong_dimensionality_is_refused(images):
    text = "subject_id,mri,fmri\nsub-01,bold.nii,t1.nii\n"
    problems = validate_manifest(read_manifest(write(images / "m.csv", text)))
    assert any("mri must be a 3D T1 image, got shape (17, 21, 3, 20)" in p for p in problems)
    assert any("fmri must be a 4D BOLD run" in p for p in problems)


def test_subject_in_two_partitions_is_an_error(images):
    text = "subject_id,session_id,diagnosis,mri,split\nsub-01,bl,CN,t1.nii,train\nsub-01,m12,CN,t1.nii,test\n"
    with pytest.raises(ManifestError, match="sub-01 is in several partitions"):
        load_manifest(write(images / "m.csv", text))


def test_diagnosis_required_only_when_asked(images):
    path = write(images / "m.csv", "subject_id,mri\nsub-01,t1.nii\n")
    assert validate_manifest(read_manifest(path)) == []
    assert "missing diagnosis" in validate_manifest(read_manifest(path), require_diagnosis=True)[0]


def test_bad_tr_is_reported(images):
    path = write(images / "m.csv", "subject_id,fmri,tr\nsub-01,bold.nii,0\nsub-02,bold.nii,fast\n")
    problems = validate_manifest(read_manifest(path))
    assert "tr must be a positive number" in problems[0]
    assert "tr is not a number" in problems[1]


def test_paths_survive_rewriting_into_another_folder(images):
    (images / "conf.tsv").write_text("a\tb\n1\t2\n")
    path = write(images / "m.csv", "subject_id,fmri,confounds\nsub-01,bold.nii,conf.tsv\n")
    from pipeline.data.manifest import write_manifest

    write_manifest(read_manifest(path), images / "folds" / "f0" / "m.csv")
    moved = load_manifest(images / "folds" / "f0" / "m.csv")
    assert moved.loc[0, "confounds"] == str(images / "conf.tsv")
    assert moved.loc[0, "fmri"] == str(images / "bold.nii")
    assert "../../conf.tsv" in (images / "folds" / "f0" / "m.csv").read_text()


def test_missing_confounds_file_is_reported(images):
    path = write(images / "m.csv", "subject_id,fmri,confounds\nsub-01,bold.nii,absent.tsv\n")
    assert "confounds file not found" in validate_manifest(read_manifest(path))[0]


def test_one_image_under_two_subject_ids_is_refused_naming_both_rows(images):
    path = write(
        images / "m.csv", "subject_id,diagnosis,mri\nsub-006,CN,t1.nii\nsub-007,AD,bold.nii\nSUB-006,AD,t1.nii\n"
    )
    problems = validate_manifest(read_manifest(path), check_files=True)
    assert problems[-2:] == [
        f"{path}: subject IDs 'sub-006' (line 2) and 'SUB-006' (line 4) differ only by case: one subject under two "
        "IDs? Spell it one way",
        f"{path}: one image under different subjects (the same file): line 2 (sub-006) mri {images / 't1.nii'}; "
        f"line 4 (SUB-006) mri {images / 't1.nii'}",
    ]


def test_one_image_compressed_twice_is_the_same_image(images):
    raw = (images / "t1.nii").read_bytes()
    (images / "a.nii.gz").write_bytes(gzip.compress(raw, compresslevel=1))
    (images / "b.nii.gz").write_bytes(gzip.compress(raw, compresslevel=9))
    path = write(images / "m.csv", "subject_id,mri\nsub-01,a.nii.gz\nsub-02,b.nii.gz\nsub-03,t1.nii\n")
    problems = validate_manifest(read_manifest(path))
    assert problems == [
        f"{path}: one image under different subjects (identical header and data): line 2 (sub-01) mri "
        f"{images / 'a.nii.gz'}; line 3 (sub-02) mri {images / 'b.nii.gz'}"
    ]  # the .nii of the same image is not compared with the .nii.gz files (a fingerprint reads a few blocks)


def test_sessions_of_one_subject_may_share_a_t1(images):
    path = write(images / "m.csv", "subject_id,session_id,mri,fmri\nsub-01,bl,t1.nii,bold.nii\nsub-01,m12,t1.nii,\n")
    assert validate_manifest(read_manifest(path)) == []


def test_load_writes_each_runs_tr_from_its_sidecar(images):
    (images / "bold.json").write_text('{"RepetitionTime": 3.0}')
    path = write(images / "m.csv", "subject_id,mri,fmri,tr\nsub-01,t1.nii,bold.nii,\nsub-02,,bold2.nii,1.5\n")
    shutil.copy(images / "bold.nii", images / "bold2.nii")
    (images / "bold2.nii").write_bytes((images / "bold2.nii").read_bytes()[:-4] + b"\0\0\0\1")  # other voxels
    assert list(load_manifest(path)["tr"]) == ["3.0", "1.5"]  # the sidecar's; the manifest's as given
