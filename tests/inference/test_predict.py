"""`neurofusion predict`: trained bundles on new subjects, as a clinical-research user runs them.

The bundles are those trained once for the session on the tiny cohort (``trained_bundles``, tests/conftest.py); the
subjects predicted are demo-profile scans (3 mm T1, 4 mm 100-volume BOLD), which pass the bundles' QC thresholds with
one soft finding (the T1's 3 mm voxels).
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import torch

from pipeline.cli import main
from pipeline.commands.predict import parse_overrides
from pipeline.engine.bundle_parts import BUNDLES
from pipeline.engine.workflow import run_bundle
from pipeline.inference import InferenceBundle
from pipeline.inference.outputs import staged
from pipeline.inference.predict import EMPTY_SALIENCY, folder_sha256
from pipeline.inference.report import RESEARCH_ONLY
from tests.conftest import TINY_OVERRIDES, listing, sha256

pytestmark = pytest.mark.slow  # trains bundles: left out by `make test-fast`

MODALITIES = {"mri_cnn3d": ["mri"], "fmri_lstm": ["fmri"], "mri_fmri_fusion": ["mri", "fmri"]}
#: the grid the bundles were trained on, given to predict as to `monai.bundle run`
GRID = {key: TINY_OVERRIDES[key] for key in ("mri_pixdim", "mri_spatial_size", "fmri_timepoints")}
SET = [f"--set={key}={json.dumps(value)}".replace(" ", "") for key, value in GRID.items()]


@pytest.fixture(scope="session")
def subjects(tmp_path_factory):
    """Three demo-profile subjects (CN, MCI, AD): their manifest, without diagnoses."""
    from pipeline.synth import write_cohort

    cohort = tmp_path_factory.mktemp("new_subjects") / "bids"
    write_cohort(cohort, n_cn=1, n_mci=1, n_ad=1, profile="demo", seed=3, progress=False)
    frame = pd.read_csv(cohort / "manifest.csv").drop(columns=["diagnosis"])
    frame.to_csv(cohort / "new.csv", index=False)
    return cohort / "new.csv"


def subject_files(manifest, index: int = 0) -> tuple:
    row = pd.read_csv(manifest).iloc[index]
    return manifest.parent / row["mri"], manifest.parent / row["fmri"]


def predict(bundle, *args: str) -> int:
    return main(["predict", "--bundle", str(bundle), *SET, *args])


def one_line_error(capsys) -> str:
    """The error printed (one line), after a batch's progress bar if any."""
    err = [line for line in capsys.readouterr().err.replace("\r", "\n").splitlines() if line.strip()]
    lines = [line for line in err if not line.startswith("predict: ")]  # the progress bar's
    assert len(lines) == 1, err
    return lines[0]


@pytest.fixture(scope="module", params=BUNDLES)
def batch(request, trained_bundles, subjects, tmp_path_factory):
    """`neurofusion predict --manifest` of the three subjects; returns (bundle name, bundle folder, out)."""
    out = tmp_path_factory.mktemp("batch") / "out"
    bundle = trained_bundles[request.param]
    assert predict(bundle, "--manifest", str(subjects), "--out", str(out)) == 0
    return request.param, bundle, out


# --- predictions ---------------------------------------------------------------------------------------


def test_predictions_are_those_of_monai_bundle_run_inference(batch, subjects, tmp_path):
    name, bundle, out = batch
    run_bundle(
        bundle,
        ["inference.yaml"],
        "infer",
        log_file=tmp_path / "inference.log",
        manifest=str(subjects),
        output_dir=str(tmp_path),
        ckpt_dir=str(bundle / "models"),
        **GRID,
    )
    columns = ["prob_CN", "prob_MCI", "prob_AD"]
    ours = pd.read_csv(out / "predictions.csv").set_index("subject_id")
    theirs = pd.read_csv(tmp_path / "predictions.csv").set_index("subject_id")
    assert sorted(ours.index) == ["sub-001", "sub-002", "sub-003"]
    np.testing.assert_allclose(ours.loc[theirs.index, columns], theirs[columns], atol=1e-5)


def test_prediction_json_records_probabilities_model_weights_inputs_qc_and_timings(batch, subjects):
    name, bundle, out = batch
    record = json.loads((out / "sub-001" / "prediction.json").read_text())
    assert set(record["probabilities"]) == {"CN", "MCI", "AD"}
    assert sum(record["probabilities"].values()) == pytest.approx(1, abs=1e-5)
    assert record["predicted_class"] == max(record["probabilities"], key=record["probabilities"].get)
    assert record["model"]["name"] == json.loads((bundle / "configs" / "metadata.json").read_text())["name"]
    assert record["model"]["bundle_version"]
    assert record["model"]["weights_sha256"] == sha256(bundle / "models" / "model.pt")
    files = dict(zip(("mri", "fmri"), subject_files(subjects)))
    assert {m: i["sha256"] for m, i in record["inputs"].items()} == {m: sha256(files[m]) for m in MODALITIES[name]}
    assert record["qc"]["passed"] and {f["status"] for f in record["qc"]["findings"]} <= {"pass", "warn"}
    assert record["timings_seconds"]["predict"] > 0
    assert record["research_use_only"] == RESEARCH_ONLY


def test_prediction_records_how_the_t1_was_registered_and_its_similarity_is_a_qc_finding(batch):
    name, _, out = batch
    record = json.loads((out / "sub-001" / "prediction.json").read_text())
    if "mri" not in MODALITIES[name]:
        assert record["registration"] is None
        return
    assert record["registration"]["method"] == "affine" and record["registration"]["similarity"] > 0.5
    (finding,) = [f for f in record["qc"]["findings"] if f["check"] == "registration similarity"]
    assert float(finding["value"]) == pytest.approx(record["registration"]["similarity"])


def test_a_t1_that_does_not_register_is_refused_by_qc_in_one_line_naming_it(trained_bundles, tmp_path, capsys):
    from tests.transforms.test_registration import ellipsoid_phantom

    phantom = ellipsoid_phantom(tmp_path)
    out = tmp_path / "out"
    assert predict(trained_bundles["mri_cnn3d"], "--mri", str(phantom), "--out", str(out)) == 1
    assert f"{phantom}: refused by QC: registration to the MNI152 template failed" in one_line_error(capsys)
    assert not out.exists() or not any(out.rglob("*.json"))


def test_saliency_map_is_in_the_input_mri_space(batch, subjects):
    name, _, out = batch
    if "mri" not in MODALITIES[name]:
        assert not (out / "sub-001" / "saliency.nii.gz").exists()
        return
    t1 = nib.load(subject_files(subjects)[0])
    saliency = nib.load(out / "sub-001" / "saliency.nii.gz")
    assert saliency.shape == t1.shape
    np.testing.assert_allclose(saliency.affine, t1.affine, atol=1e-4)
    values = saliency.get_fdata()
    assert values.min() >= 0 and 0.3 < values.max() <= 1 + 1e-6


def test_report_is_one_self_contained_html_file_with_the_research_statement(batch):
    name, _, out = batch
    page = (out / "sub-002" / "report.html").read_text()
    assert RESEARCH_ONLY in page
    assert not re.search(r"""(src|href)=["'](?!data:)""", page)  # nothing fetched from elsewhere
    assert ("data:image/png;base64," in page) == ("mri" in MODALITIES[name])
    if "fmri" in MODALITIES[name]:  # ROIs ranked by name, the first as in prediction.json
        record = json.loads((out / "sub-002" / "prediction.json").read_text())
        assert re.search(r"<td>1</td><td>([^<]+)</td>", page).group(1) == record["fmri_roi_importance"][0]["roi"]
        assert len(record["fmri_roi_importance"]) == 116
    assert "Input quality control" in page and "voxel size" in page


def test_batch_table_has_a_row_per_subject(batch):
    name, _, out = batch
    table = pd.read_csv(out / "predictions.csv")
    assert list(table["subject_id"]) == ["sub-001", "sub-002", "sub-003"]
    assert {"prob_CN", "prob_MCI", "prob_AD", "predicted", "missing_fmri", "warnings"} <= set(table.columns)
    assert not table["missing_fmri"].any()
    assert sorted(p.name for p in out.iterdir()) == ["predictions.csv", "sub-001", "sub-002", "sub-003"]


# --- one subject, files and folders ----------------------------------------------------------------------


def test_one_subject_named_from_its_bids_file_name(trained_bundles, subjects, tmp_path, capsys):
    t1, bold = subject_files(subjects, 2)
    out = tmp_path / "out"
    assert predict(trained_bundles["mri_fmri_fusion"], "--mri", str(t1), "--fmri", str(bold), "--out", str(out)) == 0
    assert capsys.readouterr().out.startswith("sub-003: ")
    assert sorted(p.name for p in (out / "sub-003").iterdir()) == ["prediction.json", "report.html", "saliency.nii.gz"]


def test_nothing_is_overwritten_without_force(trained_bundles, subjects, tmp_path, capsys):
    t1, _ = subject_files(subjects)
    out = tmp_path / "out"
    args = ["--mri", str(t1), "--out", str(out)]
    assert predict(trained_bundles["mri_cnn3d"], *args) == 0
    (out / "notes.txt").write_text("mine")
    before = listing(out)
    capsys.readouterr()
    assert predict(trained_bundles["mri_cnn3d"], *args) == 1
    assert "sub-001: exists; use --force" in one_line_error(capsys)
    assert listing(out) == before
    assert predict(trained_bundles["mri_cnn3d"], *args, "--force") == 0
    after = listing(out)
    assert after["notes.txt"] == before["notes.txt"] and after.keys() == before.keys()
    assert after["sub-001/prediction.json"] != before["sub-001/prediction.json"]  # a new run (created time)


def test_a_force_replacement_failing_midway_restores_every_previous_output(tmp_path, monkeypatch):
    out = tmp_path / "out"
    for name in ("sub-001", "sub-002", "sub-003"):
        (out / name).mkdir(parents=True)
        (out / name / "prediction.json").write_text(f"old {name}")
    (out / "predictions.csv").write_text("old table")
    (out / "notes.txt").write_text("mine")
    before = listing(out)
    rename = Path.rename

    def failing_rename(self, target):  # the second new entry cannot be moved into place
        if self.parent.name.startswith(".neurofusion-predict-") and self.name == "sub-002":
            raise OSError("disk gone")
        return rename(self, target)

    monkeypatch.setattr(Path, "rename", failing_rename)
    entries = ["sub-001", "sub-002", "sub-003", "predictions.csv"]
    with pytest.raises(OSError, match="disk gone"), staged(out, entries, force=True) as staging:
        for name in entries[:3]:
            (staging / name).mkdir()
            (staging / name / "prediction.json").write_text(f"new {name}")
        (staging / "predictions.csv").write_text("new table")
    assert listing(out) == before
    assert sorted(p.name for p in out.iterdir()) == sorted([*entries, "notes.txt"])  # no staging folder left


def test_nothing_is_written_outside_out(trained_bundles, subjects, tmp_path, monkeypatch):
    inputs = subjects.parent
    before = listing(inputs)
    monkeypatch.chdir(tmp_path)
    assert predict(trained_bundles["mri_fmri_fusion"], "--manifest", str(subjects), "--out", "out") == 0
    assert listing(inputs) == before
    assert [p.name for p in tmp_path.iterdir()] == ["out"]
    assert not [p for p in (tmp_path / "out").iterdir() if p.name.startswith(".")]


# --- missing modality ---------------------------------------------------------------------------------


def test_fused_bundle_refuses_an_mri_alone_without_allow_missing_fmri(trained_bundles, subjects, tmp_path, capsys):
    t1, _ = subject_files(subjects)
    assert predict(trained_bundles["mri_fmri_fusion"], "--mri", str(t1), "--out", str(tmp_path / "out")) == 1
    assert "--allow-missing-fmri" in one_line_error(capsys)
    assert not (tmp_path / "out").exists()


def test_allow_missing_fmri_predicts_and_flags_it_in_every_output(trained_bundles, subjects, tmp_path):
    frame = pd.read_csv(subjects)
    frame.loc[0, "fmri"] = ""
    frame["mri"] = [str(subjects.parent / p) for p in frame["mri"]]
    frame["fmri"] = [str(subjects.parent / p) if p else "" for p in frame["fmri"].fillna("")]
    frame.to_csv(tmp_path / "partial.csv", index=False)
    out = tmp_path / "out"
    bundle = trained_bundles["mri_fmri_fusion"]
    assert predict(bundle, "--manifest", str(tmp_path / "partial.csv"), "--out", str(out), "--allow-missing-fmri") == 0
    record = json.loads((out / "sub-001" / "prediction.json").read_text())
    assert record["missing_modalities"] == ["fmri"]
    assert "fMRI missing" in record["warnings"][0]
    assert "fMRI missing" in (out / "sub-001" / "report.html").read_text()
    assert "fMRI missing" in nib.load(out / "sub-001" / "saliency.nii.gz").header["descrip"].tobytes().decode()
    table = pd.read_csv(out / "predictions.csv").set_index("subject_id")
    assert table["missing_fmri"].to_dict() == {"sub-001": True, "sub-002": False, "sub-003": False}
    full = json.loads((out / "sub-002" / "prediction.json").read_text())
    assert full["missing_modalities"] == [] and not any("fMRI missing" in w for w in full["warnings"])


# --- saliency methods ----------------------------------------------------------------------------------------

SALIENCY_METHODS = ["vanilla_grad", "gradcam", "occlusion"]


@pytest.mark.parametrize("method", SALIENCY_METHODS)
@pytest.mark.parametrize("name", ["mri_cnn3d", "mri_fmri_fusion"])
def test_each_saliency_method_maps_the_input_mri_space_in_0_1_and_is_named_in_the_outputs(
    name, method, trained_bundles, subjects, tmp_path
):
    t1, bold = subject_files(subjects)
    inputs = ["--mri", str(t1)] + (["--fmri", str(bold)] if name == "mri_fmri_fusion" else [])
    out = tmp_path / "out"
    assert predict(trained_bundles[name], *inputs, f"--set=saliency_method={method}", "--out", str(out)) == 0
    reference, saliency = nib.load(t1), nib.load(out / "sub-001" / "saliency.nii.gz")
    assert saliency.shape == reference.shape
    np.testing.assert_allclose(saliency.affine, reference.affine, atol=1e-4)
    values = saliency.get_fdata()
    assert np.isfinite(values).all() and values.min() >= 0 and values.max() <= 1 + 1e-6
    record = json.loads((out / "sub-001" / "prediction.json").read_text())
    # Grad-CAM keeps positive evidence only: a briefly trained network may have none, which must be said
    empty = [w for w in record["warnings"] if w.startswith(EMPTY_SALIENCY)]
    assert (values.max() > 0) != bool(empty)
    assert record["saliency_method"] == method
    assert f"Saliency method <code>{method}</code>" in (out / "sub-001" / "report.html").read_text()


def test_an_unknown_saliency_method_is_refused_in_one_line_naming_the_key_and_nothing_is_written(
    trained_bundles, subjects, tmp_path, capsys
):
    t1, _ = subject_files(subjects)
    out = tmp_path / "out"
    assert predict(trained_bundles["mri_cnn3d"], "--mri", str(t1), "--set=saliency_method=lime", "--out", str(out)) == 1
    message = one_line_error(capsys)
    assert "bundle key 'saliency_method' must be one of vanilla_grad, gradcam, occlusion, got 'lime'" in message
    assert not out.exists()


def test_an_override_of_the_wrong_type_is_refused_before_anything_is_written(
    trained_bundles, subjects, tmp_path, capsys
):
    t1, _ = subject_files(subjects)
    out = tmp_path / "out"
    assert predict(trained_bundles["mri_cnn3d"], "--mri", str(t1), "--set=mri_pixdim=[2,2,x]", "--out", str(out)) == 1
    assert "--set: bundle key 'mri_pixdim' must be three positive numbers" in one_line_error(capsys)
    assert not out.exists()


# --- weights ------------------------------------------------------------------------------------------


class _Payload:
    """Unpickling this would create ``marker``: a checkpoint that runs code."""

    def __init__(self, marker) -> None:
        self.marker = marker

    def __reduce__(self):
        return open, (str(self.marker), "w")


def test_weights_that_would_run_code_are_refused(trained_bundles, subjects, tmp_path, capsys):
    bundle = trained_bundles["mri_cnn3d"]
    marker = tmp_path / "pwned"
    state = torch.load(bundle / "models" / "model.pt", weights_only=True)
    torch.save({**state, "extra": _Payload(marker)}, tmp_path / "evil.pt")
    t1, _ = subject_files(subjects)
    assert predict(bundle, "--mri", str(t1), "--ckpt", str(tmp_path / "evil.pt"), "--out", str(tmp_path / "out")) == 1
    assert f"{tmp_path / 'evil.pt'}: refused: not a plain state dict" in one_line_error(capsys)
    assert not marker.exists() and not (tmp_path / "out").exists()
    with pytest.raises(ValueError, match="weights_only"):
        InferenceBundle(bundle, tmp_path / "evil.pt")


# --- QC: refusals and warnings ----------------------------------------------------------------------------


def _save(data: np.ndarray, like: nib.Nifti1Image, path, affine=None) -> None:
    """``data`` as float32 (NaN kept) with the header of ``like``."""
    header = like.header.copy()
    header.set_data_dtype(np.float32)
    nib.save(nib.Nifti1Image(data, like.affine if affine is None else affine, header), path)


def _truncated(src, path):
    nib.save(nib.load(src), path.with_suffix(""))  # uncompressed .nii
    data = path.with_suffix("").read_bytes()
    path.with_suffix("").write_bytes(data[: len(data) // 2])
    return path.with_suffix("")


def _variant(kind: str, src, path):
    """Write a broken copy of ``src`` (a T1 or a BOLD run) at ``path``; returns the path given to predict."""
    image = nib.load(src)
    data = np.asanyarray(image.dataobj).astype(np.float32)
    if kind == "unreadable":
        path.write_bytes(b"this is not an image\n" * 20)
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "truncated":
        return _truncated(src, path)
    elif kind == "4d":
        _save(np.stack([data, data], axis=-1), image, path)
    elif kind == "nan":
        data[10:14, 10:14, 10:14] = np.nan
        _save(data, image, path)
    elif kind == "blank":
        _save(np.zeros_like(data), image, path)
    elif kind == "voxel size":
        _save(data, image, path, affine=image.affine @ np.diag([2.0, 2.0, 2.0, 1.0]))
    elif kind == "field of view":
        _save(data[:, :, 20:40], image, path)
    elif kind == "atlas coverage":
        moved = image.affine.copy()
        moved[:3, 3] += 250.0
        _save(data, image, path, affine=moved)
    elif kind == "volumes":
        _save(data[..., :40], image, path)
    elif kind == "static":
        _save(np.repeat(data[..., :1], data.shape[-1], axis=-1), image, path)
    elif kind == "3d":
        _save(data[..., 0], image, path)
    else:
        nib.save(image, path)
    return path


REFUSALS = [  # (bundle, input, variant, extra arguments, reason in the message)
    ("mri_cnn3d", "mri", "unreadable", [], "not a readable NIfTI"),
    ("mri_cnn3d", "mri", "empty", [], "file is empty"),
    ("mri_cnn3d", "mri", "truncated", [], "file is truncated"),
    ("mri_cnn3d", "mri", "4d", [], "must be a 3D T1 image"),
    ("mri_cnn3d", "mri", "nan", [], "NaN or infinite"),
    ("mri_cnn3d", "mri", "blank", [], "blank: every voxel is 0"),
    ("mri_cnn3d", "mri", "voxel size", [], r"voxel size: 6 x 6 x 6 mm \(allowed 0.5-4, qc#mri#voxel_mm\)"),
    ("mri_cnn3d", "mri", "field of view", [], r"field of view: .*60 mm \(allowed 120-400, qc#mri#fov_mm\)"),
    ("mri_cnn3d", "mri", "atlas coverage", [], r"atlas coverage: 0% of AAL .*qc#mri#min_atlas_coverage"),
    ("fmri_lstm", "fmri", "3d", [], "must be a 4D BOLD run"),
    ("fmri_lstm", "fmri", "volumes", [], r"volumes: 40 \(needs >= 50, qc#fmri#min_volumes\)"),
    ("fmri_lstm", "fmri", "static", [], "no signal over time"),
    ("fmri_lstm", "fmri", "copy", ["--tr", "7"], r"TR: 7 s .*\(allowed 0.3-5, qc#fmri#tr_seconds\)"),
    ("fmri_lstm", "fmri", "copy", ["--tr", "3000"], r"implausible TR 3000 s from --tr \(it looks like milliseconds"),
]


@pytest.mark.parametrize("bundle, modality, variant, extra, reason", REFUSALS, ids=[f"{r[1]}-{r[2]}" for r in REFUSALS])
def test_a_scan_failing_qc_is_refused_in_one_line_naming_it_and_nothing_is_written(
    bundle, modality, variant, extra, reason, trained_bundles, subjects, tmp_path, capsys
):
    source = subject_files(subjects)[0 if modality == "mri" else 1]
    given = _variant(variant, source, tmp_path / f"sub-009_{variant.replace(' ', '')}.nii.gz")
    out = tmp_path / "out"
    assert predict(trained_bundles[bundle], f"--{modality}", str(given), *extra, "--out", str(out)) == 1
    message = one_line_error(capsys)
    assert message.startswith(f"neurofusion predict: error: {given}: refused by QC: "), message
    assert re.search(reason, message), message
    assert not out.exists()


def test_a_refusal_late_in_a_batch_leaves_the_output_folder_as_it_was(trained_bundles, subjects, tmp_path, capsys):
    frame = pd.read_csv(subjects)
    frame["mri"] = [str(subjects.parent / p) for p in frame["mri"]]
    broken = _variant("nan", frame.loc[2, "mri"], tmp_path / "sub-003_T1w.nii.gz")
    frame.loc[2, "mri"] = str(broken)
    frame.drop(columns=["fmri"]).to_csv(tmp_path / "batch.csv", index=False)
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    assert predict(trained_bundles["mri_cnn3d"], "--manifest", str(tmp_path / "batch.csv"), "--out", str(out)) == 1
    assert f"{broken}: refused by QC" in one_line_error(capsys)
    assert [p.name for p in out.iterdir()] == ["notes.txt"]


def test_soft_findings_are_warnings_in_the_prediction_and_the_report(trained_bundles, subjects, tmp_path):
    t1, bold = subject_files(subjects)
    image = nib.load(t1)
    tilt = np.deg2rad(15)
    rotation = np.eye(4)
    rotation[1:3, 1:3] = [[np.cos(tilt), -np.sin(tilt)], [np.sin(tilt), np.cos(tilt)]]
    oblique = tmp_path / "sub-001_T1w.nii.gz"
    nib.save(nib.Nifti1Image(np.asanyarray(image.dataobj), rotation @ image.affine, image.header), oblique)
    out = tmp_path / "out"
    bundle = trained_bundles["mri_fmri_fusion"]
    assert predict(bundle, "--mri", str(oblique), "--fmri", str(bold), "--tr", "2.5", "--out", str(out)) == 0
    record = json.loads((out / "sub-001" / "prediction.json").read_text())
    warned = [(f["modality"], f["check"]) for f in record["qc"]["findings"] if f["status"] == "warn"]
    assert {("mri", "voxel size"), ("mri", "orientation"), ("fmri", "TR")} <= set(warned)
    assert any(w.startswith("mri orientation: RAS, 15.0 deg oblique") for w in record["warnings"])
    assert any("the header says 3 s" in w for w in record["warnings"])
    assert record["inputs"]["fmri"]["tr_seconds"] == 2.5
    page = (out / "sub-001" / "report.html").read_text()
    assert page.count('<tr class="warn">') == len(warned)
    np.testing.assert_allclose(nib.load(out / "sub-001" / "saliency.nii.gz").affine, rotation @ image.affine, atol=1e-4)


# --- DICOM ------------------------------------------------------------------------------------------------


def write_dicom_series(image: nib.Nifti1Image, folder) -> None:
    """One MR DICOM file per axial slice of ``image`` (int16 voxels, the NIfTI scaling as rescale slope and
    intercept), positioned in LPS patient space from the NIfTI affine."""
    pydicom = pytest.importorskip("pydicom", reason="writing the test's DICOM series needs pydicom")
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid

    folder.mkdir()
    raw = np.asanyarray(image.dataobj.get_unscaled()).astype(np.int16)
    slope = 1.0 if image.dataobj.slope is None or np.isnan(image.dataobj.slope) else float(image.dataobj.slope)
    inter = 0.0 if image.dataobj.inter is None or np.isnan(image.dataobj.inter) else float(image.dataobj.inter)
    lps = np.diag([-1.0, -1.0, 1.0, 1.0]) @ image.affine
    zooms = np.linalg.norm(lps[:3, :3], axis=0)
    study, series, frame = generate_uid(), generate_uid(), generate_uid()
    for k in range(raw.shape[2]):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = MRImageStorage
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID, ds.SOPInstanceUID = MRImageStorage, meta.MediaStorageSOPInstanceUID
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study, series, frame
        ds.Modality, ds.PatientID, ds.PatientName = "MR", "test", "Test^Subject"
        ds.SeriesNumber, ds.InstanceNumber, ds.AcquisitionNumber = 1, k + 1, 1
        ds.ImageOrientationPatient = [*(lps[:3, 0] / zooms[0]), *(lps[:3, 1] / zooms[1])]
        ds.ImagePositionPatient = [float(v) for v in (lps @ [0, 0, k, 1])[:3]]
        ds.PixelSpacing = [float(zooms[1]), float(zooms[0])]  # between rows (j), between columns (i)
        ds.SliceThickness = float(zooms[2])
        ds.Rows, ds.Columns = raw.shape[1], raw.shape[0]
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleSlope, ds.RescaleIntercept = slope, inter
        ds.PixelData = np.ascontiguousarray(raw[:, :, k].T).tobytes()  # rows along j, columns along i
        pydicom.dcmwrite(folder / f"slice{k:04d}.dcm", ds, enforce_file_format=True)


def test_dicom_series_converts_with_the_geometry_and_values_of_the_nifti(subjects, tmp_path):
    from pipeline.inference.dicom import dicom_series_to_nifti

    t1 = nib.load(subject_files(subjects)[0])
    write_dicom_series(t1, tmp_path / "dicom")
    converted = nib.load(dicom_series_to_nifti(tmp_path / "dicom", tmp_path / "t1.nii.gz"))
    original, back = nib.as_closest_canonical(t1), nib.as_closest_canonical(converted)
    assert back.shape == original.shape
    np.testing.assert_allclose(back.affine, original.affine, atol=1e-3)
    np.testing.assert_allclose(back.get_fdata(), original.get_fdata(), rtol=1e-5, atol=1e-3)


def test_a_dicom_folder_as_mri_predicts_as_its_nifti(trained_bundles, subjects, tmp_path):
    t1 = subject_files(subjects)[0]
    write_dicom_series(nib.load(t1), tmp_path / "dicom")
    bundle, out = trained_bundles["mri_cnn3d"], tmp_path / "out"  # not the folder holding the input: refused
    assert predict(bundle, "--mri", str(tmp_path / "dicom"), "--subject", "from-dicom", "--out", str(out)) == 0
    assert predict(bundle, "--mri", str(t1), "--subject", "from-nifti", "--out", str(out)) == 0
    dicom, nifti = (json.loads((out / s / "prediction.json").read_text()) for s in ("from-dicom", "from-nifti"))
    assert dicom["inputs"]["mri"]["format"] == "DICOM series"
    assert (out / "from-dicom" / "mri_from_dicom.nii.gz").is_file()
    assert dicom["probabilities"] == pytest.approx(nifti["probabilities"], abs=1e-5)
    saliency = nib.load(out / "from-dicom" / "saliency.nii.gz")
    np.testing.assert_allclose(saliency.affine, nib.load(out / "from-dicom" / "mri_from_dicom.nii.gz").affine)


def test_a_mistyped_set_key_is_refused_instead_of_running_with_the_default(trained_bundles, subjects, tmp_path, capsys):
    t1, _ = subject_files(subjects)
    out = tmp_path / "out"
    assert (
        predict(trained_bundles["mri_cnn3d"], "--mri", str(t1), "--set=saliency_methd=gradcam", "--out", str(out)) == 1
    )
    assert "--set saliency_methd: " in one_line_error(capsys) and not out.exists()


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ("qc#mri#voxel_mm=2", "qc#mri#voxel_mm must be a range [low, high] of two numbers, got 2"),
        ("qc#mri#warn_voxel_mm=big", "qc#mri#warn_voxel_mm must be a number, got 'big'"),
    ],
)
def test_a_qc_threshold_of_the_wrong_type_is_refused_naming_it(
    trained_bundles, subjects, tmp_path, setting, message, capsys
):
    t1, _ = subject_files(subjects)
    out = tmp_path / "out"
    assert predict(trained_bundles["mri_cnn3d"], "--mri", str(t1), f"--set={setting}", "--out", str(out)) == 1
    assert message in one_line_error(capsys) and not out.exists()


def test_set_values_read_exponents_as_numbers():
    assert parse_overrides(["qc#mri#min_atlas_coverage=5e-1", "mri_pixdim=[2, 2, 2]"]) == {
        "qc#mri#min_atlas_coverage": 0.5,
        "mri_pixdim": [2, 2, 2],
    }


def test_a_dicom_series_hash_covers_files_in_subfolders(tmp_path):
    (tmp_path / "series" / "run1").mkdir(parents=True)
    (tmp_path / "series" / "run1" / "IM0001").write_bytes(b"slice")
    first = folder_sha256(tmp_path / "series")
    assert first != hashlib.sha256().hexdigest()  # not the hash of an empty folder
    (tmp_path / "series" / "run1" / "IM0001").write_bytes(b"other slice")
    assert folder_sha256(tmp_path / "series") != first


# --- benchmark ----------------------------------------------------------------------------------------------


@pytest.fixture
def keep_torch_threads():
    """bench --threads sets torch's global thread count; later tests get the original back."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def test_bench_infer_prints_stages_total_and_the_goal(subjects, capsys, keep_torch_threads):
    t1, bold = subject_files(subjects)
    args = ["--t1", str(t1), "--bold", str(bold), "--tr", "3", "--repeats", "1", "--threads", "1"]
    assert main(["bench", "infer", *args]) == 0
    out = capsys.readouterr().out
    for stage in ("qc", "load", "preprocess", "predict", "saliency", "roi importance", "total"):
        assert re.search(rf"^  {stage} +\d+ +\d+$", out, re.M), out
    assert re.search(r"^goal: warm total <= 4 s per subject: (met|missed) \(\d+\.\d\d s median\)$", out, re.M)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--t1", "t1.nii.gz"], "give both --t1 and --bold"),
        (["--ckpt", "missing.pt"], "missing.pt: no such weights file"),
    ],
)
def test_bench_infer_refuses_arguments_it_would_otherwise_ignore(args, message, capsys):
    assert main(["bench", "infer", *args]) != 0
    assert message in one_line_error(capsys)
