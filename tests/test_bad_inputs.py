"""Broken inputs on every entry point that takes them: a non-zero exit, one message naming the file, row or key and
the problem, and nothing left behind. The corpus is :mod:`tests.bad_inputs`; commands run in this process through
``pipeline.cli.main`` (a few in a subprocess, to see the real standard error and the MONAI bundle command)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from pipeline.cli import _one_line, main
from pipeline.data.manifest import LINE, load_manifest, read_manifest
from pipeline.engine import check_bundle_keys
from pipeline.engine.workflow import run_bundle
from pipeline.errors import BundleKeyError
from pipeline.study.runner import prepare_folds
from pipeline.study.spec import load_study
from tests.bad_inputs import (
    FMRI_CASES,
    GOOD_AGE,
    GOOD_TR,
    HEADER_MANIFEST_CASES,
    IMAGE_CASES,
    MANIFEST_CASES,
    MRI_CASES,
    SIDECAR_CASES,
    SPREADSHEET_CASES,
    STUDY_CASES,
    TABLE_CASES,
    TEXT_CASES,
    TR_CASES,
    nan_scan,
    write_t1,
)
from tests.conftest import REPO, run_cli


def refused(capsys, argv: list[str]) -> str:
    """Run the command, check it fails with one error line on standard error, and return that line."""
    assert main(argv) == 1
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in captured.err, captured.err
    assert lines[0].startswith(f"neurofusion {argv[0]}: error: ")
    return lines[0]


def says(text: str, parts: list[str]) -> bool:
    return all(part in text for part in parts)


# --- manifest check --------------------------------------------------------------------------------------


def test_manifest_check_accepts_the_good_manifest(corpus, capsys):
    assert main(["manifest", "check", str(corpus.manifest()), "--require-diagnosis"]) == 0
    assert "OK, 12 rows, 12 subjects" in capsys.readouterr().out


@pytest.mark.parametrize("case", MANIFEST_CASES)
def test_manifest_check_names_the_row_and_the_problem(corpus, capsys, case):
    manifest = corpus.manifest(case)
    before = corpus.snapshot()
    assert main(["manifest", "check", str(manifest)]) == 1
    captured = capsys.readouterr()
    problems = [line for line in (captured.out + captured.err).splitlines() if str(manifest) in line]
    assert len(problems) == 1 or (len(problems) == 2 and problems[-1].endswith("1 problem(s) found"))
    assert says(problems[0], corpus.expected(case, manifest)), problems
    assert len(captured.err.strip().splitlines()) == 1 and "Traceback" not in captured.err
    assert corpus.snapshot() == before


# --- spreadsheet exports ----------------------------------------------------------------------------------


@pytest.mark.parametrize("case", SPREADSHEET_CASES)
def test_a_spreadsheet_export_is_read_as_the_values_it_holds(corpus, case):
    exported = corpus.spreadsheet(case)
    frame = read_manifest(exported)
    assert frame.drop(columns=LINE).equals(read_manifest(corpus.manifest()).drop(columns=LINE))
    assert frame.loc[0, "tr"] == GOOD_TR and set(frame["age"]) == {GOOD_AGE}  # decimal commas read as points
    rows = [
        i for i, line in enumerate(exported.read_text().splitlines(), 1) if line.lstrip(" \ufeff").startswith("sub-")
    ]
    assert list(frame[LINE]) == rows  # the file's own lines


def test_a_semicolon_export_with_decimal_commas_splits_with_its_values(corpus, tmp_path):
    assert main(["split", str(corpus.spreadsheet("all-of-excel")), "--folds", "2", "--out", str(tmp_path)]) == 0
    fold = read_manifest(tmp_path / "repeat-0_fold-0" / "manifest.csv").set_index("subject_id")
    assert fold.loc["sub-01", "tr"] == GOOD_TR and fold.loc["sub-02", "tr"] == "2.0"  # given; from the header
    assert set(fold["age"]) == {GOOD_AGE}


# --- split ------------------------------------------------------------------------------------------------


def test_split_accepts_the_good_manifest(corpus, tmp_path):
    assert main(["split", str(corpus.manifest()), "--folds", "2", "--out", str(tmp_path / "folds")]) == 0
    assert len(list((tmp_path / "folds").glob("*/manifest.csv"))) == 2


@pytest.mark.parametrize("case", HEADER_MANIFEST_CASES)
def test_split_refuses_a_broken_manifest_and_writes_nothing(corpus, capsys, tmp_path, case):
    manifest = corpus.manifest(case)
    line = refused(capsys, ["split", str(manifest), "--folds", "2", "--out", str(tmp_path / "folds")])
    assert says(line, corpus.expected(case, manifest)), line
    assert not (tmp_path / "folds").exists()


# --- roi --------------------------------------------------------------------------------------------------


def test_roi_accepts_the_good_run(corpus, tmp_path):
    assert main(["roi", str(corpus.bold), "--high-pass", "0.01", "--out", str(tmp_path / "out" / "s.tsv")]) == 0


@pytest.mark.parametrize("case", FMRI_CASES)
def test_roi_refuses_a_broken_run_and_writes_nothing(corpus, capsys, tmp_path, case):
    bold = corpus.image(case)
    line = refused(capsys, ["roi", str(bold), "--out", str(tmp_path / "out" / "s.tsv")])
    assert says(line, corpus.expected(case)), line
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("case", "given", "message"),
    [
        ("tr-missing", None, TR_CASES["tr-missing"].message),
        ("tr-in-ms", None, TR_CASES["tr-in-ms"].message),
        ("tr-missing", "0", "implausible TR 0 s from --tr"),
        ("tr-missing", "2000", "implausible TR 2000 s from --tr (it looks like milliseconds: 2 s?)"),
    ],
)
def test_roi_refuses_an_implausible_tr_when_filtering(corpus, capsys, tmp_path, case, given, message):
    bold = corpus.bold_with_tr(case)
    out = tmp_path / "out" / "s.tsv"
    line = refused(
        capsys, ["roi", str(bold), "--high-pass", "0.01", "--out", str(out), *(["--tr", given] * bool(given))]
    )
    assert says(line, [str(bold), message]), line
    assert not out.parent.exists()


# --- preprocess -------------------------------------------------------------------------------------------


def test_preprocess_accepts_the_good_t1(corpus, tmp_path):
    assert main(["preprocess", "--mri", str(corpus.t1), "--out", str(tmp_path / "out" / "pre.nii.gz")]) == 0


@pytest.mark.parametrize("case", MRI_CASES)
def test_preprocess_refuses_a_broken_t1_and_writes_nothing(corpus, capsys, tmp_path, case):
    t1 = corpus.image(case)
    line = refused(capsys, ["preprocess", "--mri", str(t1), "--out", str(tmp_path / "out" / "pre.nii.gz")])
    assert says(line, corpus.expected(case)), line
    assert not (tmp_path / "out").exists()


def test_refusal_is_one_line_on_the_real_standard_error(corpus, tmp_path):
    t1 = corpus.image("t1-nan-inf")
    result = run_cli("-m", "pipeline.cli", "preprocess", "--mri", str(t1), "--out", str(tmp_path / "p.nii"))
    assert result.returncode == 1
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("neurofusion preprocess: error: mri image has ")
    assert says(line, ["NaN or infinite voxel value(s)", str(t1)])
    assert not (tmp_path / "p.nii").exists()


# --- experiment -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", HEADER_MANIFEST_CASES)
def test_experiment_refuses_a_broken_cohort_before_creating_the_run(corpus, capsys, tmp_path, case):
    manifest = corpus.manifest(case)
    study = corpus.study(None, manifest)
    line = refused(capsys, ["experiment", str(study), "--out", str(tmp_path / "run"), "--quiet"])
    assert says(line, corpus.expected(case, manifest)), line
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("case", STUDY_CASES)
def test_experiment_refuses_a_broken_study_naming_the_key(corpus, capsys, tmp_path, case):
    study = corpus.study(case, corpus.manifest())
    line = refused(capsys, ["experiment", str(study), "--out", str(tmp_path / "run"), "--quiet"])
    assert says(line, [str(study), STUDY_CASES[case][1]]), line
    assert not (tmp_path / "run").exists()


def test_experiment_refuses_broken_voxels_when_training_reads_them_and_leaves_no_run(corpus, capsys, tmp_path):
    # voxels are read by the training chain, not before the run: the failed job and the empty run are removed
    frame = pd.read_csv(corpus.manifest(), dtype=str, keep_default_na=False)
    # a scan of its own for every subject (one file under several subjects is refused before the run)
    frame["mri"] = [write_t1(tmp_path / f"nan-{i}.nii.gz", nan_scan(seed=i)).name for i in range(len(frame))]
    frame.to_csv(tmp_path / "nan.csv", index=False)
    study = corpus.study(None, tmp_path / "nan.csv")
    line = refused(capsys, ["experiment", str(study), "--out", str(tmp_path / "run"), "--quiet"])
    assert says(line, ["NaN or infinite voxel value(s)", f"{tmp_path}/nan-"]), line
    assert not (tmp_path / "run").exists()


# --- bundles (python -m monai.bundle run) ----------------------------------------------------------------


GRID = {"epochs": 1, "mri_pixdim": [6.0, 6.0, 6.0], "mri_spatial_size": [24, 28, 24]}


def bundle_run(corpus, tmp_path, manifest, *args: str):
    config = REPO / "bundles" / "mri_cnn3d" / "configs" / "train.yaml"
    out = tmp_path / "out"
    result = run_cli(
        "-m", "monai.bundle", "run", "--config_file", str(config), "--manifest", str(manifest), "--output_dir",
        str(out / "eval"), "--ckpt_dir", str(out / "ckpt"), "--epochs", "1", "--mri_pixdim", "[6.0,6.0,6.0]",
        "--mri_spatial_size", "[24,28,24]", *args,
    )  # fmt: skip
    return result, out


def with_splits(corpus, manifest):
    frame = pd.read_csv(manifest, dtype=str, keep_default_na=False)
    frame["split"] = ["train", "val", "test", "train"] * (len(frame) // 4) + ["train"] * (len(frame) % 4)
    path = manifest.with_name(f"split_{manifest.name}")
    frame.to_csv(path, index=False)
    return path


def test_bundle_refuses_an_override_of_the_wrong_type_before_writing(corpus, tmp_path):
    result, out = bundle_run(corpus, tmp_path, with_splits(corpus, corpus.manifest()), "--epochs", "five")
    assert result.returncode != 0
    assert "bundle key 'epochs' must be a positive integer, got 'five'" in result.stderr, result.stderr[-2000:]
    assert not out.exists()


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("epochs", "5", "must be a positive integer, got '5' (a number given as text"),
        ("epochs", 0, "must be a positive integer, got 0"),
        ("batch_size", 2.5, "must be a positive integer, got 2.5"),
        ("learning_rate", -0.1, "must be a number >= 0, got -0.1"),
        ("learning_rate", "1e-3", "(a number given as text; in YAML write exponents with a dot, e.g. 1.0e-3)"),
        ("cache_rate", 1.5, "must be a number from 0 to 1, got 1.5"),
        ("mri_spatial_size", [24, 28], "must be three positive integers, e.g. [48, 56, 48], got [24, 28]"),
        ("mri_pixdim", [3.0, 3.0, "x"], "must be three positive numbers (mm)"),
        ("augment", "maybe", "must be true or false, got 'maybe'"),
        ("seed", True, "must be an integer >= 0, got True"),
        ("bn_recalibration_batches", 0, "must be null or a positive integer, got 0"),
    ],
)
def test_bundle_keys_of_the_wrong_type_are_refused_naming_the_key(key, value, message):
    with pytest.raises(BundleKeyError) as refusal:
        check_bundle_keys(**{"epochs": 3, key: value})
    assert str(refusal.value).startswith(f"bundle key '{key}' ") and message in str(refusal.value)


def test_bundle_keys_of_the_right_type_pass():
    check_bundle_keys(epochs=2, learning_rate=0.0, augment="false", resume=True, mri_pixdim=[6, 6.0, 6], seed=0)
    check_bundle_keys(bn_recalibration_batches=None)


@pytest.mark.parametrize("case", ["unknown-diagnosis", "t1-truncated", "t1-nan-inf"])
def test_bundle_refuses_a_broken_manifest_before_writing(corpus, tmp_path, case):
    # the workflow of `python -m monai.bundle run`, in this process (the command line itself is run above)
    manifest = with_splits(corpus, corpus.manifest(case))
    out = tmp_path / "out"
    overrides = {"manifest": str(manifest), "output_dir": str(out / "eval"), "ckpt_dir": str(out / "ckpt"), **GRID}
    with pytest.raises(Exception) as refusal:
        run_bundle(REPO / "bundles" / "mri_cnn3d", ["train.yaml"], log_file=tmp_path / "log.txt", **overrides)
    message = _one_line(refusal.value)  # what `neurofusion experiment` prints for the same failure
    row = case != "t1-nan-inf"  # voxels are read by the chain, which knows the file but not the manifest row
    assert says(message, [p for p in corpus.expected(case, manifest) if row or "sub-13" not in p]), message
    assert not out.exists()


# --- sidecars ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", SIDECAR_CASES)
def test_roi_names_a_sidecar_that_cannot_be_read(corpus, capsys, tmp_path, case):
    corpus.sidecar(case)
    bold = corpus.subject_files(13)[1]
    line = refused(capsys, ["roi", str(bold), "--high-pass", "0.01", "--out", str(tmp_path / "out" / "s.tsv")])
    assert says(line, corpus.expected(case)), line
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("case", ["sidecar-list", "sidecar-truncated"])
def test_predict_names_a_sidecar_that_cannot_be_read(corpus, untrained, capsys, tmp_path, case):
    corpus.sidecar(case)
    bold = corpus.subject_files(13)[1]
    line = refused(capsys, predict(untrained, "fmri_lstm", tmp_path / "out", "--fmri", str(bold)))
    assert says(line, corpus.expected(case)), line
    assert not (tmp_path / "out").exists()


def bids_with_sidecar(corpus, case: str):
    """The DataLad dataset of the corpus (a BIDS dataset) with sub-01's BOLD sidecar broken as ``case`` says."""
    root = corpus.datalad().parent
    sidecar = root / "sub-01" / "func" / "sub-01_task-rest_space-MNI152NLin2009cAsym_bold.json"
    sidecar.unlink()
    corpus.sidecar(case).rename(sidecar)
    return root, sidecar


@pytest.mark.parametrize("case", SIDECAR_CASES)
def test_from_bids_names_a_sidecar_that_cannot_be_read(corpus, capsys, tmp_path, case):
    root, sidecar = bids_with_sidecar(corpus, case)
    line = refused(capsys, ["manifest", "from-bids", str(root), "--out", str(tmp_path / "m.csv")])
    named = sidecar.with_suffix(".nii.gz") if case == "sidecar-tr-text" else sidecar  # pybids merges sidecars
    assert says(line, [SIDECAR_CASES[case][1], str(named)]), line
    assert not (tmp_path / "m.csv").exists()


# --- symbolic links (DataLad, git-annex) -------------------------------------------------------------------


def assert_links_and_sidecar_tr(manifest):
    """Every image path is the link a user sees (not resolved into .git/annex) and every TR the sidecar's 3 s."""
    fold = read_manifest(manifest)
    for path in [*fold["mri"], *fold["fmri"]]:
        assert ".git" not in path and Path(path).is_symlink() and Path(path).is_absolute(), path
    assert set(fold["tr"]) == {"3.0"}, fold["tr"]
    assert set(load_manifest(manifest)["tr"]) == {"3.0"}


def test_split_of_a_datalad_dataset_keeps_the_links_and_the_sidecar_tr(corpus, tmp_path):
    manifest = corpus.datalad()
    assert main(["split", str(manifest), "--folds", "2", "--out", str(tmp_path / "folds")]) == 0
    for fold in (tmp_path / "folds").glob("*/manifest.csv"):
        assert_links_and_sidecar_tr(fold)


def test_study_folds_of_a_datalad_dataset_keep_the_links_and_the_sidecar_tr(corpus, tmp_path):
    prepare_folds(load_study(corpus.study(None, corpus.datalad())), tmp_path / "run")
    folds = list((tmp_path / "run").glob("folds/paired/*/manifest.csv"))
    assert len(folds) == 2
    for fold in folds:
        assert_links_and_sidecar_tr(fold)


def test_from_bids_of_a_datalad_dataset_keeps_the_links(corpus, tmp_path):
    root = corpus.datalad().parent
    assert main(["manifest", "from-bids", str(root), "--out", str(tmp_path / "m.csv")]) == 0
    assert_links_and_sidecar_tr(tmp_path / "m.csv")


def test_a_datalad_file_not_fetched_is_named(corpus, capsys):
    manifest = corpus.datalad(fetched=False)
    assert main(["manifest", "check", str(manifest), "--headers-only"]) == 1
    run = manifest.parent / "sub-01" / "func" / "sub-01_task-rest_space-MNI152NLin2009cAsym_bold.nii.gz"
    problems = [line for line in capsys.readouterr().out.splitlines() if str(manifest) in line]
    assert problems == [
        f"{manifest}:2: sub-01: fmri file not found: {run} (a symbolic link to a missing file: a DataLad / "
        "git-annex file not fetched? `datalad get` it)"
    ]


# --- predict ----------------------------------------------------------------------------------------------

#: the corpus's scans are coarse and short (6 mm T1, 16 mm 40-volume BOLD): the bundles' QC limits opened for them
RELAXED_QC = {
    "mri_cnn3d": ["--set=qc#mri#voxel_mm=[0.5,10]"],
    "fmri_lstm": ["--set=qc#fmri#voxel_mm=[1,20]", "--set=qc#fmri#min_volumes=10"],
}


@pytest.fixture(scope="module")
def untrained(tmp_path_factory) -> dict[str, str]:
    """Initial weights of the MRI and the fMRI bundle: enough for predict to get as far as its checks."""
    from pipeline.bench.infer import untrained_weights

    folder = tmp_path_factory.mktemp("weights")
    return {
        name: str(untrained_weights(REPO / "bundles" / name, folder / f"{name}.pt"))
        for name in ("mri_cnn3d", "fmri_lstm")
    }


def predict(untrained, bundle: str, out, *inputs: str) -> list[str]:
    return ["predict", "--bundle", str(REPO / "bundles" / bundle), "--ckpt", untrained[bundle], "--out", str(out)] + [
        *inputs,
        *RELAXED_QC[bundle],
    ]


def test_predict_accepts_the_good_scans(corpus, untrained, tmp_path):
    assert main(predict(untrained, "fmri_lstm", tmp_path / "out", "--fmri", str(corpus.bold))) == 0
    assert main(predict(untrained, "mri_cnn3d", tmp_path / "out", "--mri", str(corpus.t1))) == 0


@pytest.mark.parametrize("case", MRI_CASES + FMRI_CASES + ["tr-missing", "tr-in-ms"])
def test_predict_refuses_a_broken_scan_and_writes_nothing(corpus, untrained, capsys, tmp_path, case):
    if case in TR_CASES:
        bundle, given = "fmri_lstm", ["--fmri", str(corpus.bold_with_tr(case))]
    else:
        kind = "mri" if case in MRI_CASES else "fmri"
        bundle, given = {"mri": "mri_cnn3d", "fmri": "fmri_lstm"}[kind], [f"--{kind}", str(corpus.image(case))]
    if case.endswith("-missing") and case in IMAGE_CASES:  # predict checks its arguments first
        line = refused(capsys, predict(untrained, bundle, tmp_path / "out", *given))
        assert says(line, [given[1], "no such file"]), line
    else:
        line = refused(capsys, predict(untrained, bundle, tmp_path / "out", *given))
        assert says(line, corpus.expected(case)), line
    assert not (tmp_path / "out").exists()


# inference needs no diagnosis: predict ignores the column (tests/test_output_safety.py)
@pytest.mark.parametrize(
    "case",
    [
        "tr-zero",
        *(c for c in TABLE_CASES if c != "unknown-diagnosis"),
        *(c for c in TEXT_CASES if not c.startswith("row-after")),
    ],
)
def test_predict_refuses_a_broken_manifest_and_writes_nothing(corpus, untrained, capsys, tmp_path, case):
    manifest = corpus.manifest(case)
    line = refused(capsys, predict(untrained, "fmri_lstm", tmp_path / "out", "--manifest", str(manifest)))
    assert says(line, corpus.expected(case, manifest)), line
    assert not (tmp_path / "out").exists()


def test_bundle_inference_refuses_an_override_of_the_wrong_type_before_writing(corpus, tmp_path):
    config = REPO / "bundles" / "fmri_lstm" / "configs" / "inference.yaml"
    out = tmp_path / "out"
    result = run_cli(
        "-m", "monai.bundle", "run", "--config_file", str(config), "--manifest", str(corpus.manifest()),
        "--output_dir", str(out), "--batch_size", "two",
    )  # fmt: skip
    assert result.returncode != 0
    assert "bundle key 'batch_size' must be a positive integer, got 'two'" in result.stderr, result.stderr[-2000:]
    assert not out.exists()
