"""Study runner on the tiny cohort: fold jobs through the bundles, results, report, resume, leakage guard."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from pipeline.cli import main
from pipeline.manifest import ManifestError
from pipeline.study.runner import plan_jobs, prepare_folds
from pipeline.study.spec import StudyError, load_study
from tests.conftest import REPO

SMOKE = REPO / "bundles" / "experiments" / "smoke.yaml"


@pytest.fixture(scope="module")
def study_run(tiny_cohort, tmp_path_factory):
    out = tmp_path_factory.mktemp("study") / "run"
    status = main(
        [
            "experiment",
            str(SMOKE),
            "--cohort",
            f"paired={tiny_cohort / 'manifest_paired.csv'}",
            "--out",
            str(out),
            "--quiet",
        ]
    )
    assert status == 0
    return out


def test_one_result_row_per_fold_job_with_provenance(study_run):
    results = pd.read_csv(study_run / "results.csv")
    assert len(results) == 3 * 2 * 2  # models x augmentation x folds
    assert set(results["model"]) == {"mri_cnn3d", "fmri_lstm", "mri_fmri_fusion"}
    for column in (
        "accuracy",
        "balanced_accuracy",
        "macro_f1",
        "auc_ovr",
        "seed",
        "git_commit",
        "manifest_sha256",
        "bundle_version",
        "monai_version",
    ):
        assert column in results.columns
    assert results["n_test"].sum() == 2 * 6 * 12 / 2  # every subject tested once per model x augmentation


def test_fold_manifests_hold_each_subject_in_one_partition(study_run):
    for path in study_run.glob("folds/paired/repeat-*_fold-*/manifest.csv"):
        frame = pd.read_csv(path)
        assert frame.groupby("subject_id")["split"].nunique().max() == 1
        assert set(frame["split"]) == {"train", "val", "test"}


def test_summary_and_self_contained_report(study_run):
    summary = pd.read_csv(study_run / "summary.csv")
    assert len(summary) == 6 and (summary["n_jobs"] == 2).all()
    html = (study_run / "report.html").read_text()
    assert html.count("data:image/png;base64,") == 2
    assert "mri_fmri_fusion" in (study_run / "report.md").read_text()


def test_rerun_skips_finished_jobs(study_run, tiny_cohort):
    done = sorted(study_run.glob("folds/*/*/*/done.json"))
    before = {p: p.stat().st_mtime_ns for p in done}
    assert (
        main(
            [
                "experiment",
                str(SMOKE),
                "--cohort",
                f"paired={tiny_cohort / 'manifest_paired.csv'}",
                "--out",
                str(study_run),
                "--quiet",
            ]
        )
        == 0
    )
    assert {p: p.stat().st_mtime_ns for p in done} == before
    assert len(pd.read_csv(study_run / "results.csv")) == 12


def test_report_lists_missing_jobs(study_run, capsys):
    victim = next(study_run.glob("folds/*/*/fmri_lstm_aug-on*/done.json"))
    saved = victim.read_text()
    victim.unlink()
    try:
        assert main(["report", str(study_run)]) == 0
        assert "1 planned job(s) not finished" in capsys.readouterr().out
        assert "Incomplete run" in (study_run / "report.md").read_text()
    finally:
        victim.write_text(saved)
    assert json.loads(saved)["model"] == "fmri_lstm"


def test_leakage_guard_refuses_a_subject_in_two_partitions(tiny_cohort, tmp_path):
    frame = pd.read_csv(tiny_cohort / "manifest_paired.csv")
    frame = pd.concat([frame, frame.iloc[[0]].assign(session_id="m12")])
    frame["mri"] = [str(tiny_cohort / p) for p in frame["mri"]]
    frame["fmri"] = [str(tiny_cohort / p) for p in frame["fmri"]]
    frame["split"] = ["train"] * (len(frame) - 1) + ["test"]
    frame.to_csv(tmp_path / "leaky.csv", index=False)
    study = load_study(SMOKE, {"paired": str(tmp_path / "leaky.csv")})
    with pytest.raises(ManifestError, match="in several partitions"):
        prepare_folds(study, tmp_path / "run")


def test_unknown_study_key_and_bundle_are_refused(tmp_path):
    (tmp_path / "s.yaml").write_text(SMOKE.read_text() + "epochs: 3\n")
    with pytest.raises(StudyError, match="unknown key.*epochs"):
        load_study(tmp_path / "s.yaml")
    (tmp_path / "t.yaml").write_text(SMOKE.read_text().replace("fmri_lstm,", "fmri_transformer,"))
    with pytest.raises(StudyError, match="unknown bundle 'fmri_transformer'"):
        load_study(tmp_path / "t.yaml")


def test_paper_study_encodes_the_papers_grid():
    study = load_study(REPO / "bundles" / "experiments" / "paper_study.yaml")
    jobs = plan_jobs(study)
    paired = {(j.model, j.augment) for j in jobs if j.cohort == "paired"}
    large = {(j.model, j.augment) for j in jobs if j.cohort == "mri_only"}
    assert paired == {(m, a) for m in ("mri_cnn3d", "fmri_lstm", "mri_fmri_fusion") for a in (False, True)}
    assert large == {("mri_cnn3d", False), ("mri_cnn3d", True)}
