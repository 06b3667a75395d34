"""Manifests from BIDS datasets (`manifest from-bids`) and ADNIMERGE-like tables (`manifest from-table`)."""

from __future__ import annotations

import json
import zlib
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from pipeline.cli import main
from pipeline.data.bids import bids_manifest
from pipeline.data.manifest import read_manifest
from pipeline.data.tables import UnmappedLabelsError, parse_label_map, table_manifest, write_checked
from pipeline.errors import ManifestError
from tests.conftest import run_cli

MNI = "space-MNI152NLin2009cAsym"


def nifti(path: Path, shape: tuple[int, ...]) -> None:
    """A small image whose voxels depend on its path: two subjects never share one (validation refuses that)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    data = np.arange(np.prod(shape), dtype=np.float32).reshape(shape) + zlib.crc32(str(path).encode()) % 9973
    nib.save(nib.Nifti1Image(data, np.eye(4)), path)


def tsv(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_csv(path, sep="\t", index=False)


def bids_tree(root: Path, files: list[str], participants: list[dict] | None = None, jsons: dict | None = None) -> Path:
    """A BIDS dataset: small NIfTI images (4D for ``*_bold``), participants.tsv and JSON/TSV side files."""
    root.mkdir(parents=True)
    (root / "dataset_description.json").write_text(json.dumps({"Name": "t", "BIDSVersion": "1.8.0"}))
    for rel in files:
        nifti(root / rel, (3, 4, 3, 5) if "_bold." in rel else (3, 4, 3))
    if participants is not None:
        tsv(root / "participants.tsv", participants)
    for rel, content in (jsons or {}).items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(json.dumps(content))
    return root


def derivatives_tree(root: Path, files: list[str], jsons: dict | None = None) -> Path:
    """An fMRIPrep-like derivatives dataset; ``*.tsv`` files are confounds tables."""
    root.mkdir(parents=True)
    description = {"Name": "fMRIPrep", "BIDSVersion": "1.8.0", "DatasetType": "derivative"}
    (root / "dataset_description.json").write_text(json.dumps({**description, "GeneratedBy": [{"Name": "fMRIPrep"}]}))
    for rel in files:
        if rel.endswith(".tsv"):
            tsv(root / rel, [{"csf": 0.1, "white_matter": 0.2}])
        else:
            nifti(root / rel, (3, 4, 3, 5) if "_bold." in rel else (3, 4, 3))
    for rel, content in (jsons or {}).items():
        (root / rel).write_text(json.dumps(content))
    return root


def rows_of(build) -> dict[tuple[str, str], dict]:
    return {(r["subject_id"], r["session_id"]): r for r in build.frame.to_dict("records")}


@pytest.fixture()
def longitudinal(tmp_path) -> Path:
    """sub-01: sessions M3 (T1+BOLD), M12 (T1), M24 (T1+BOLD) with per-session diagnoses; sub-02: M12 (T1)."""
    root = bids_tree(
        tmp_path / "long",
        [
            "sub-01/ses-M3/anat/sub-01_ses-M3_T1w.nii.gz",
            "sub-01/ses-M3/func/sub-01_ses-M3_task-rest_bold.nii.gz",
            "sub-01/ses-M12/anat/sub-01_ses-M12_T1w.nii.gz",
            "sub-01/ses-M24/anat/sub-01_ses-M24_T1w.nii.gz",
            "sub-01/ses-M24/func/sub-01_ses-M24_task-rest_bold.nii.gz",
            "sub-02/ses-M12/anat/sub-02_ses-M12_T1w.nii.gz",
        ],
        participants=[
            {"participant_id": "sub-01", "diagnosis": "EMCI", "sex": "F"},
            {"participant_id": "sub-02", "diagnosis": "CN", "sex": "M"},
        ],
        jsons={"task-rest_bold.json": {"RepetitionTime": 3.0}},
    )
    sessions = [
        {"session_id": "ses-M3", "diagnosis": "MCI", "age": "70.1"},
        {"session_id": "ses-M12", "diagnosis": "n/a", "age": "70.9"},
        {"session_id": "ses-M24", "diagnosis": "Dementia", "age": "72.0"},
    ]
    tsv(root / "sub-01" / "sub-01_sessions.tsv", sessions)
    return root


@pytest.fixture()
def runs(tmp_path) -> Path:
    """sub-01 with two T1w runs and BOLD runs 1, 2 and 10."""
    anat, func = "sub-01/anat/sub-01", "sub-01/func/sub-01_task-rest"
    files = [f"{anat}_run-1_T1w.nii.gz", f"{anat}_run-2_T1w.nii.gz"]
    files += [f"{func}_run-{r}_bold.nii.gz" for r in (1, 2, 10)]
    return bids_tree(tmp_path / "runs", files, participants=[{"participant_id": "sub-01", "diagnosis": "AD"}])


# --- from-bids ------------------------------------------------------------------------------------------


def test_synthetic_cohort_round_trips_through_from_bids(tiny_cohort, tmp_path):
    out = tmp_path / "elsewhere" / "manifest.csv"
    assert main(["manifest", "from-bids", str(tiny_cohort), "--out", str(out)]) == 0
    ours = read_manifest(out).drop(columns="line").set_index("subject_id").sort_index()
    synth = read_manifest(tiny_cohort / "manifest.csv").drop(columns="line").set_index("subject_id").sort_index()
    assert list(ours.index) == list(synth.index) and len(ours) == 15
    for column in ("session_id", "diagnosis", "age", "sex", "site"):
        assert ours[column].tolist() == synth[column].tolist(), column
    for column in ("mri", "fmri"):
        resolved = [[str(Path(p).resolve()) if p else "" for p in m[column]] for m in (ours, synth)]
        assert resolved[0] == resolved[1], column
    as_float = [[float(v) if v else None for v in m["tr"]] for m in (ours, synth)]
    assert as_float[0] == as_float[1]


def test_every_session_is_a_row_and_the_session_diagnosis_wins(longitudinal):
    rows = rows_of(bids_manifest(longitudinal))
    assert list(rows) == [("sub-01", "ses-M3"), ("sub-01", "ses-M12"), ("sub-01", "ses-M24"), ("sub-02", "ses-M12")]
    diagnoses = [r["diagnosis"] for r in rows.values()]
    assert diagnoses == ["MCI", "MCI", "AD", "CN"]  # M12 is n/a in sessions.tsv: participants.tsv's EMCI -> MCI
    assert rows[("sub-01", "ses-M24")]["age"] == "72.0" and rows[("sub-01", "ses-M24")]["sex"] == "F"


def test_session_first_takes_the_earliest_in_natural_order(longitudinal):
    rows = rows_of(bids_manifest(longitudinal, session="first"))
    assert list(rows) == [("sub-01", "ses-M3"), ("sub-02", "ses-M12")]


def test_session_label_keeps_that_session_and_notes_subjects_without_it(longitudinal):
    build = bids_manifest(longitudinal, session="ses-M24")
    assert list(rows_of(build)) == [("sub-01", "ses-M24")]
    assert any("without images in ses-M24: sub-02" in note for note in build.notes)


def test_unknown_session_is_an_error_listing_the_sessions(longitudinal):
    with pytest.raises(ValueError, match=r"no session ses-M99 .*M3, M12, M24"):
        bids_manifest(longitudinal, session="M99")


def test_pick_first_and_last_order_runs_numerically(runs):
    first = rows_of(bids_manifest(runs, pick="first"))[("sub-01", "")]
    last = rows_of(bids_manifest(runs, pick="last"))[("sub-01", "")]
    assert Path(first["mri"]).name == "sub-01_run-1_T1w.nii.gz"
    assert Path(first["fmri"]).name == "sub-01_task-rest_run-1_bold.nii.gz"
    assert Path(last["mri"]).name == "sub-01_run-2_T1w.nii.gz"
    assert Path(last["fmri"]).name == "sub-01_task-rest_run-10_bold.nii.gz"


def test_pick_all_writes_every_pair_as_distinct_rows_of_one_subject(runs, tmp_path):
    build = bids_manifest(runs, pick="all")
    assert len(build.frame) == 6 and set(build.frame["subject_id"]) == {"sub-01"}
    assert "T1w-run-2_bold-run-10" in set(build.frame["session_id"])
    assert build.frame["session_id"].is_unique
    written = read_manifest(write_checked(build, tmp_path / "m.csv"))
    assert len(written) == 6


def test_tr_follows_bids_inheritance(tmp_path):
    func = "sub-0{0}/func/sub-0{0}_task-rest_bold"
    root = bids_tree(
        tmp_path / "ds",
        [func.format(i) + ".nii.gz" for i in (1, 2, 3)],
        participants=[{"participant_id": f"sub-0{i}", "diagnosis": "CN"} for i in (1, 2, 3)],
        jsons={
            "task-rest_bold.json": {"RepetitionTime": 3.0, "TaskName": "rest"},
            "sub-02/sub-02_task-rest_bold.json": {"RepetitionTime": 2.5},
            func.format(3) + ".json": {"RepetitionTime": 0.8},
        },
    )
    trs = bids_manifest(root).frame["tr"].tolist()
    assert trs == ["3.0", "2.5", "0.8"]  # dataset level, subject level, the run's own sidecar


def test_bold_without_repetition_time_leaves_tr_empty(tmp_path):
    root = bids_tree(
        tmp_path / "ds",
        ["sub-01/func/sub-01_task-rest_bold.nii.gz"],
        participants=[{"participant_id": "sub-01", "diagnosis": "CN"}],
    )
    assert bids_manifest(root).frame["tr"].tolist() == [""]


@pytest.fixture()
def partial(tmp_path) -> Path:
    """sub-01 both modalities, sub-02 T1 only, sub-03 BOLD only, sub-04 listed but without images."""
    return bids_tree(
        tmp_path / "partial",
        [
            "sub-01/anat/sub-01_T1w.nii.gz",
            "sub-01/func/sub-01_task-rest_bold.nii.gz",
            "sub-02/anat/sub-02_T1w.nii.gz",
            "sub-03/func/sub-03_task-rest_bold.nii.gz",
        ],
        participants=[{"participant_id": f"sub-0{i}", "diagnosis": d} for i, d in enumerate("CN AD AD MCI".split(), 1)],
    )


def test_subjects_with_one_modality_keep_the_other_path_empty(partial):
    build = bids_manifest(partial)
    rows = rows_of(build)
    assert rows[("sub-02", "")]["mri"] and rows[("sub-02", "")]["fmri"] == ""
    assert rows[("sub-03", "")]["fmri"] and rows[("sub-03", "")]["mri"] == ""
    assert any("have no T1w or BOLD image: sub-04" in note for note in build.notes)


def test_summary_counts_subjects_per_diagnosis_and_modality(partial, tmp_path, capsys):
    assert main(["manifest", "from-bids", str(partial), "--out", str(tmp_path / "m.csv")]) == 0
    lines = [line.split() for line in capsys.readouterr().out.splitlines()]
    assert ["CN", "1", "0", "0", "1"] in lines  # both, MRI only, fMRI only, subjects
    assert ["AD", "0", "1", "1", "2"] in lines
    assert ["total", "1", "1", "1", "3"] in lines


@pytest.fixture()
def odd_labels(tmp_path) -> Path:
    """Diagnoses CN, 'Probable AD', n/a, SMC, and sub-05 with images but absent from participants.tsv."""
    labels = {"01": "cn", "02": "Probable AD", "03": "n/a", "04": "SMC"}
    return bids_tree(
        tmp_path / "odd",
        [f"sub-0{i}/anat/sub-0{i}_T1w.nii.gz" for i in range(1, 6)],
        participants=[{"participant_id": f"sub-{k}", "diagnosis": v} for k, v in labels.items()],
    )


def test_unmapped_labels_fail_and_name_their_subjects(odd_labels):
    with pytest.raises(UnmappedLabelsError) as caught:
        bids_manifest(odd_labels)
    assert caught.value.unmapped == {"Probable AD": ["sub-02"], "<missing>": ["sub-03", "sub-05"]}


def test_drop_unmapped_leaves_them_out_and_says_so(odd_labels):
    build = bids_manifest(odd_labels, drop_unmapped=True)
    assert rows_of(build).keys() == {("sub-01", ""), ("sub-04", "")}  # 'cn' matches CN ignoring case; SMC -> CN
    assert any("'Probable AD': sub-02" in note for note in build.notes)


def test_label_map_replaces_the_defaults_and_can_exclude_a_label(odd_labels, tmp_path):
    spec = tmp_path / "map.json"
    spec.write_text(json.dumps({"CN": "CN", "Probable AD": "AD", "SMC": None}))
    build = bids_manifest(odd_labels, label_map=str(spec), drop_unmapped=True)
    assert {k[0]: r["diagnosis"] for k, r in rows_of(build).items()} == {"sub-01": "CN", "sub-02": "AD"}
    assert any("excluded by the map 'SMC': sub-04" in note for note in build.notes)


def test_inline_label_map_with_an_unknown_class_is_rejected():
    assert parse_label_map("SMC=CN, probable ad = AD") == {"smc": "CN", "probable ad": "AD"}
    with pytest.raises(ValueError, match="'LMCI' maps to 'Dementia'"):
        parse_label_map("LMCI=Dementia")


def test_cli_lists_unmapped_labels_and_writes_nothing(odd_labels, tmp_path):
    out = tmp_path / "m.csv"
    result = run_cli("-m", "pipeline.cli", "manifest", "from-bids", str(odd_labels), "--out", str(out))
    assert result.returncode == 1
    assert "unmapped diagnosis 'Probable AD': 1 subject(s): sub-02" in result.stdout
    assert "unmapped diagnosis <missing>: 2 subject(s): sub-03, sub-05" in result.stdout
    assert len(result.stderr.strip().splitlines()) == 1 and "--drop-unmapped" in result.stderr
    assert not out.exists()


def test_missing_diagnosis_column_is_named_unless_unlabelled(partial):
    with pytest.raises(ValueError, match="no column 'DX' in participants.tsv"):
        bids_manifest(partial, diagnosis_column="DX")
    assert "diagnosis" not in bids_manifest(partial, diagnosis_column=None).frame.columns


def test_invalid_image_refuses_to_write(tmp_path):
    root = bids_tree(
        tmp_path / "ds",
        ["sub-01/anat/sub-01_T1w.nii.gz"],
        participants=[{"participant_id": "sub-01", "diagnosis": "CN"}],
    )
    nifti(root / "sub-01/func/sub-01_task-rest_bold.nii.gz", (3, 4, 3))  # a 3D "BOLD run"
    out = tmp_path / "m.csv"
    with pytest.raises(ManifestError, match=f"{out}:2: sub-01: fmri must be a 4D BOLD run"):
        write_checked(bids_manifest(root), out)
    assert not out.exists()


@pytest.fixture()
def with_derivatives(tmp_path) -> tuple[Path, Path]:
    """Raw sub-01 and sub-02 (TR 2 s at dataset level); fMRIPrep outputs and confounds for sub-01 only."""
    raw = bids_tree(
        tmp_path / "raw",
        [f"sub-0{i}/{d}/sub-0{i}_{n}.nii.gz" for i in (1, 2) for d, n in (("anat", "T1w"), ("func", "task-rest_bold"))],
        participants=[{"participant_id": "sub-01", "diagnosis": "AD"}, {"participant_id": "sub-02", "diagnosis": "CN"}],
        jsons={"task-rest_bold.json": {"RepetitionTime": 2.0}},
    )
    func = "sub-01/func/sub-01_task-rest"
    deriv = derivatives_tree(
        tmp_path / "fmriprep",
        [
            f"sub-01/anat/sub-01_{MNI}_desc-preproc_T1w.nii.gz",
            f"{func}_{MNI}_desc-preproc_bold.nii.gz",
            f"{func}_space-T1w_desc-preproc_bold.nii.gz",
            f"{func}_desc-confounds_timeseries.tsv",
        ],
        jsons={f"{func}_{MNI}_desc-preproc_bold.json": {"SkullStripped": False}},
    )
    return raw, deriv


def test_derivatives_are_preferred_with_their_confounds(with_derivatives, tmp_path):
    raw, deriv = with_derivatives
    out = tmp_path / "out" / "m.csv"
    build = bids_manifest(raw, derivatives=[deriv])
    write_checked(build, out)
    first = read_manifest(out).iloc[0]
    assert Path(first["mri"]).resolve() == deriv / f"sub-01/anat/sub-01_{MNI}_desc-preproc_T1w.nii.gz"
    assert Path(first["fmri"]).resolve() == deriv / f"sub-01/func/sub-01_task-rest_{MNI}_desc-preproc_bold.nii.gz"
    assert first["tr"] == "2.0"  # the preprocessed sidecar lacks it: the raw run's (inherited) value
    assert (
        out.parent / first["confounds"]
    ).resolve() == deriv / "sub-01/func/sub-01_task-rest_desc-confounds_timeseries.tsv"


def test_sessions_without_derivatives_fall_back_to_raw_and_are_noted(with_derivatives):
    raw, deriv = with_derivatives
    build = bids_manifest(raw, derivatives=[deriv])
    second = rows_of(build)[("sub-02", "")]
    assert second["fmri"] == str(raw / "sub-02/func/sub-02_task-rest_bold.nii.gz") and second["confounds"] == ""
    assert any(note.startswith("BOLD: 1 session(s) preprocessed, 1 raw") and "sub-02" in note for note in build.notes)


def test_subject_level_preprocessed_t1_serves_every_session(tmp_path):
    raw = bids_tree(
        tmp_path / "raw",
        [f"sub-01/ses-{s}/anat/sub-01_ses-{s}_T1w.nii.gz" for s in ("A", "B")],
        participants=[{"participant_id": "sub-01", "diagnosis": "MCI"}],
    )
    deriv = derivatives_tree(tmp_path / "fmriprep", [f"sub-01/anat/sub-01_{MNI}_desc-preproc_T1w.nii.gz"])
    mris = bids_manifest(raw, derivatives=[deriv]).frame["mri"].tolist()
    assert mris == [str(deriv / f"sub-01/anat/sub-01_{MNI}_desc-preproc_T1w.nii.gz")] * 2


# --- from-table -----------------------------------------------------------------------------------------


@pytest.fixture()
def adni(tmp_path) -> tuple[Path, Path]:
    """ADNIMERGE-like table and an image folder laid out as {PTID}/{VISCODE}/{anat,func}."""
    images = tmp_path / "nifti"
    for rel in (
        "002_S_0001/bl/anat/t1_T1w.nii.gz",
        "002_S_0001/bl/func/rest_bold.nii.gz",
        "002_S_0001/m12/anat/t1_T1w.nii.gz",
        "003_S_0003/bl/func/rest_bold.nii.gz",
    ):
        nifti(images / rel, (3, 4, 3, 5) if "bold" in rel else (3, 4, 3))
    table = tmp_path / "ADNIMERGE.csv"
    table.write_text(
        "RID,PTID,VISCODE,DX,AGE,PTGENDER\n"
        "1,002_S_0001,bl,CN,71.2,Female\n"
        "1,002_S_0001,m12,Dementia,71.2,Female\n"
        "2,003_S_0002,bl,,80.0,Male\n"
        "3,003_S_0003,bl,MCI,66.5,Male\n"
    )
    return table, images


def test_table_rows_join_images_by_pattern(adni):
    table, images = adni
    build = table_manifest(table, images)
    rows = rows_of(build)
    assert list(rows) == [("002_S_0001", "bl"), ("002_S_0001", "m12"), ("003_S_0003", "bl")]
    assert [r["diagnosis"] for r in rows.values()] == ["CN", "AD", "MCI"]
    assert rows[("002_S_0001", "m12")]["fmri"] == "" and rows[("003_S_0003", "bl")]["mri"] == ""
    assert rows[("002_S_0001", "bl")]["sex"] == "Female" and "age" in build.frame.columns
    assert any("1 of 4 table rows that match no image: 003_S_0002 bl" in note for note in build.notes)


def test_from_table_command_writes_a_valid_manifest(adni, tmp_path):
    table, images = adni
    out = tmp_path / "m.csv"
    assert main(["manifest", "from-table", str(table), "--images-root", str(images), "--out", str(out)]) == 0
    frame = read_manifest(out)
    assert frame["mri"].iloc[0] == str(images / "002_S_0001/bl/anat/t1_T1w.nii.gz")


def test_an_image_matching_several_rows_is_an_error(adni):
    table, images = adni
    with pytest.raises(ValueError, match=r"t1_T1w.nii.gz matches the rows on lines 2, 3"):
        table_manifest(table, images, mri_pattern="{subject}/bl/anat/*T1w.nii*", fmri_pattern="")


def test_unknown_pattern_placeholder_is_named(adni):
    table, images = adni
    with pytest.raises(ValueError, match=r"uses \{EXAMDATE\}"):
        table_manifest(table, images, mri_pattern="{subject}/{EXAMDATE}/*.nii.gz")


def test_repeated_subject_visit_is_an_error(adni):
    table, images = adni
    table.write_text(table.read_text() + "3,003_S_0003,bl,MCI,66.5,Male\n")
    with pytest.raises(ValueError, match="appears on lines 5, 6"):
        table_manifest(table, images)


def test_missing_table_column_is_named(adni):
    table, images = adni
    with pytest.raises(ValueError, match="no column.*DX_bl"):
        table_manifest(table, images, diagnosis_column="DX_bl")


@pytest.mark.parametrize("command", ["from-bids", "from-table"])
def test_builders_explain_themselves(command, capsys):
    with pytest.raises(SystemExit) as caught:
        main(["manifest", command, "--help"])
    assert caught.value.code == 0
    assert "--label-map" in capsys.readouterr().out


def test_a_semicolon_table_with_decimal_commas_is_read(adni):
    table, images = adni
    text = table.read_text().replace(",", ";").replace("71.2", "71,2")
    table.write_text("\ufeff" + text.replace("\n", "\r\n"))  # Excel's export in a comma-decimal locale
    rows = rows_of(table_manifest(table, images))
    assert rows[("002_S_0001", "bl")]["age"] == "71.2" and rows[("002_S_0001", "bl")]["diagnosis"] == "CN"


def test_table_lines_are_the_files_own_after_blank_lines(adni):
    table, images = adni
    lines = table.read_text().splitlines()
    table.write_text("\n".join([lines[0], "", *lines[1:], "", "3,003_S_0003,bl,MCI,66.5,Male"]) + "\n")
    with pytest.raises(ValueError, match="appears on lines 6, 8"):
        table_manifest(table, images)
