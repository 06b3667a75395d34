"""Outputs never destroy inputs: ``--force`` replaces only what a command wrote, an output folder inside an input
dataset is refused, and no command writes over one of its own input files."""

from __future__ import annotations

import shutil

import pandas as pd
import pytest

from pipeline.cli import main
from tests.conftest import REPO
from tests.inference.test_predict import listing
from tests.test_bad_inputs import RELAXED_QC, refused, untrained  # noqa: F401 (fixture)


def predict_mri(untrained, out, *args: str) -> list[str]:  # noqa: F811
    bundle = REPO / "bundles" / "mri_cnn3d"
    return ["predict", "--bundle", str(bundle), "--ckpt", untrained["mri_cnn3d"], "--out", str(out), *args] + [
        *RELAXED_QC["mri_cnn3d"]
    ]


@pytest.fixture
def bids(corpus, tmp_path):
    """A one-subject BIDS dataset (the corpus's T1 and BOLD run under sub-01/anat and sub-01/func)."""
    root = tmp_path / "bids"
    (root / "sub-01" / "anat").mkdir(parents=True)
    (root / "sub-01" / "func").mkdir()
    (root / "dataset_description.json").write_text('{"Name": "safety", "BIDSVersion": "1.9.0"}')
    shutil.copy(corpus.t1, root / "sub-01" / "anat" / "sub-01_T1w.nii.gz")
    shutil.copy(corpus.bold, root / "sub-01" / "func" / "sub-01_task-rest_bold.nii.gz")
    return root


def test_predict_into_the_input_bids_root_with_force_is_refused_and_keeps_the_subject(
    bids,
    untrained,  # noqa: F811
    capsys,
):
    before = listing(bids)
    t1 = bids / "sub-01" / "anat" / "sub-01_T1w.nii.gz"
    line = refused(capsys, predict_mri(untrained, bids, "--mri", str(t1), "--force"))
    assert "inside the input BIDS dataset" in line and str(bids / "derivatives") in line, line
    assert "use --force" not in line
    assert listing(bids) == before


def test_predict_into_the_derivatives_of_the_input_dataset_is_accepted(bids, untrained):  # noqa: F811
    out = bids / "derivatives" / "neurofusion"
    t1 = bids / "sub-01" / "anat" / "sub-01_T1w.nii.gz"
    assert main(predict_mri(untrained, out, "--mri", str(t1))) == 0
    assert (out / "sub-01" / "prediction.json").is_file()


def test_an_output_folder_holding_an_input_is_refused(corpus, untrained, capsys):  # noqa: F811
    before = corpus.snapshot()
    line = refused(capsys, predict_mri(untrained, corpus.folder, "--mri", str(corpus.t1), "--force"))
    assert f"holds the input {corpus.t1}" in line, line
    assert corpus.snapshot() == before


def test_force_never_replaces_a_subject_folder_holding_files_predict_did_not_write(
    corpus,
    untrained,  # noqa: F811
    tmp_path,
    capsys,
):
    out = tmp_path / "out"
    (out / "sub-01" / "anat").mkdir(parents=True)
    (out / "sub-01" / "prediction.json").write_text("old")
    (out / "sub-01" / "anat" / "mine.nii.gz").write_text("not predict's")
    before = listing(out)
    line = refused(capsys, predict_mri(untrained, out, "--mri", str(corpus.t1), "--subject", "sub-01", "--force"))
    assert "holds anat/" in line and "not written by neurofusion predict" in line, line
    assert "use --force" not in line
    assert listing(out) == before


def test_force_replaces_a_folder_of_predict_outputs(corpus, untrained, tmp_path):  # noqa: F811
    out = tmp_path / "out"
    args = predict_mri(untrained, out, "--mri", str(corpus.t1), "--subject", "sub-01")
    assert main(args) == 0
    first = listing(out)
    assert main([*args, "--force"]) == 0
    assert listing(out).keys() == first.keys()


def test_a_manifest_subject_id_that_is_not_a_folder_name_is_predicted_under_a_safe_name(
    corpus,
    untrained,  # noqa: F811
    tmp_path,
):
    manifest = tmp_path / "odd.csv"
    rows = [{"subject_id": "site A/sub 01", "mri": corpus.t1.name}, {"subject_id": "sub-02", "mri": corpus.t1.name}]
    pd.DataFrame(rows).to_csv(manifest, index=False)
    out = tmp_path / "out"
    assert main(predict_mri(untrained, out, "--manifest", str(manifest))) == 0
    assert sorted(p.name for p in out.iterdir()) == ["predictions.csv", "site_A_sub_01", "sub-02"]
    table = pd.read_csv(out / "predictions.csv")
    assert list(table["subject_id"]) == ["site A/sub 01", "sub-02"]
    assert list(table["folder"]) == ["site_A_sub_01", "sub-02"]


def test_predict_ignores_diagnoses_it_does_not_need(corpus, untrained, tmp_path):  # noqa: F811
    manifest = tmp_path / "labelled.csv"
    rows = [{"subject_id": "sub-01", "diagnosis": "Alzheimer's disease", "mri": corpus.t1.name}]
    pd.DataFrame(rows).to_csv(manifest, index=False)
    assert main(predict_mri(untrained, tmp_path / "out", "--manifest", str(manifest))) == 0
    assert (tmp_path / "out" / "sub-01" / "prediction.json").is_file()


# --- output equals input -------------------------------------------------------------------------------


@pytest.mark.parametrize("which", ["bold", "atlas", "confounds"])
def test_roi_refuses_to_write_over_its_input(corpus, tmp_path, capsys, which):
    atlas = tmp_path / "atlas.nii.gz"
    shutil.copy(corpus.t1, atlas)  # any NIfTI: the refusal comes before it is read
    confounds = tmp_path / "confounds.tsv"
    confounds.write_text("csf\n1\n")
    target = {"bold": corpus.bold, "atlas": atlas, "confounds": confounds}[which]
    before = target.read_bytes()
    args = ["roi", str(corpus.bold), str(atlas), "--confounds", str(confounds), "--out", str(target)]
    line = refused(capsys, args)
    assert f"--out {target}: the output is the" in line, line
    assert target.read_bytes() == before


def test_export_refuses_to_write_over_the_checkpoint(untrained, tmp_path, capsys):  # noqa: F811
    bundle = tmp_path / "mri_cnn3d"
    shutil.copytree(REPO / "bundles" / "mri_cnn3d", bundle, ignore=shutil.ignore_patterns("models", "eval"))
    ckpt = bundle / "models" / "model.pt"
    ckpt.parent.mkdir()
    shutil.copy(untrained["mri_cnn3d"], ckpt)
    before = ckpt.read_bytes()
    line = refused(capsys, ["export", str(bundle), "--out", str(ckpt)])
    assert "the output is the checkpoint" in line, line
    assert ckpt.read_bytes() == before
