"""Study baselines and ceiling: fitted in the study's folds on training rows only, reported beside the deep models."""

from __future__ import annotations

import inspect
import json
import re
import shutil

import numpy as np
import pandas as pd
import pytest
import yaml

from pipeline.cli import main
from pipeline.data.manifest import read_manifest
from pipeline.engine import REPO_BUNDLES
from pipeline.study import baselines
from pipeline.study.runner import fold_tables, prepare_folds, write_plan
from pipeline.study.spec import BASELINE_NAMES, StudyError, load_study
from pipeline.study.stats import is_collapsed
from pipeline.transforms import fmri_steps, mri_steps
from tests.conftest import TINY_OVERRIDES

pytestmark = pytest.mark.slow  # trains bundles: left out by `make test-fast`

CV = {"folds": 2, "repeats": 1, "seed": 0, "val_fraction": 0.34}


def _study_file(folder, manifest, models, baseline_names, **overrides):
    """A two-fold study of ``models`` on one cohort ``paired`` with ``baselines`` set; returns its path."""
    study = {
        "name": "baselines",
        "cohorts": {"paired": {"manifest": str(manifest)}},
        "models": list(models),
        "augmentation": [False],
        "cv": CV,
        "baselines": baseline_names,
        "overrides": {**TINY_OVERRIDES, "epochs": 1, **overrides},
    }
    path = folder / "study.yaml"
    path.write_text(yaml.safe_dump(study))
    return path


def _references_only(study_path, out):
    """What ``run_study`` does before and after the deep jobs, without them: plan, folds, reference jobs."""
    study = load_study(study_path)
    out.mkdir(parents=True)
    write_plan(study, out)
    jobs = baselines.write_references(study, out)
    prepare_folds(study, out)
    baselines.run_references(study, out, jobs, progress=False)
    return study, jobs


@pytest.fixture(scope="module")
def run(tiny_cohort, tmp_path_factory):
    """The real ``experiment`` command: the LSTM (1 epoch, 2 folds) with every baseline on the tiny cohort."""
    folder = tmp_path_factory.mktemp("baselines")
    study = _study_file(folder, tiny_cohort / "manifest_paired.csv", ["fmri_lstm"], True)
    out = folder / "run"
    assert main(["experiment", str(study), "--out", str(out), "--quiet", "--bootstrap", "50"]) == 0
    return out


@pytest.fixture(scope="module")
def fused_run(tiny_cohort, tmp_path_factory):
    """The fused baseline's jobs alone (no deep job), T1s taken as they are (``mri_registration: none``)."""
    folder = tmp_path_factory.mktemp("fused")
    path = _study_file(
        folder, tiny_cohort / "manifest_paired.csv", ["mri_fmri_fusion"], ["fused"], mri_registration="none"
    )
    _references_only(path, folder / "run")
    return folder / "run"


@pytest.fixture(scope="module")
def planted_run(tiny_cohort, tmp_path_factory):
    """The MRI ceiling on a truth table whose severities reveal the diagnosis only for fold 0's test subjects."""
    folder = tmp_path_factory.mktemp("planted")
    frame = read_manifest(tiny_cohort / "manifest_paired.csv").drop(columns="line")
    frame.to_csv(folder / "manifest.csv", index=False)  # absolute image paths, so the copy reads the same scans
    path = _study_file(folder, folder / "manifest.csv", ["mri_cnn3d"], ["ceiling"])
    test_rows = next(t for p, t in fold_tables(load_study(path)).items() if p.parent.name == "repeat-0_fold-0")
    test = set(test_rows.loc[test_rows["split"] == "test", "subject_id"])
    severity = [["CN", "MCI", "AD"].index(d) if s in test else 0.0 for s, d in zip(frame.subject_id, frame.diagnosis)]
    truth = pd.DataFrame({"participant_id": frame.subject_id, "structural_severity": severity})
    truth.to_csv(folder / baselines.TRUTH, sep="\t", index=False)
    _references_only(path, folder / "run")
    assert main(["report", str(folder / "run"), "--bootstrap", "20"]) == 0
    return folder / "run"


def _done(out, model):
    return [json.loads(p.read_text()) for p in sorted(out.glob(f"folds/*/*/{model.replace(':', '-')}/done.json"))]


# --- study key --------------------------------------------------------------------------------------------


def test_baselines_key_is_true_false_or_a_list_of_names(tmp_path, tiny_cohort):
    manifest = tiny_cohort / "manifest_paired.csv"
    assert load_study(_study_file(tmp_path, manifest, ["mri_cnn3d"], True)).baselines == BASELINE_NAMES
    assert load_study(_study_file(tmp_path, manifest, ["mri_cnn3d"], False)).baselines == ()
    assert load_study(_study_file(tmp_path, manifest, ["mri_cnn3d"], ["mri", "ceiling"])).baselines == (
        "mri",
        "ceiling",
    )
    with pytest.raises(StudyError, match="baselines: each item must be true, false or one of mri"):
        load_study(_study_file(tmp_path, manifest, ["mri_cnn3d"], ["svm"]))


def test_baselines_are_off_unless_a_study_asks_and_on_in_the_paper_study():
    experiments = REPO_BUNDLES / "experiments"
    assert load_study(experiments / "smoke.yaml").baselines == ()
    assert load_study(experiments / "paper_study.yaml").baselines == BASELINE_NAMES


def test_each_cohort_gets_the_baselines_of_its_models_inputs(tmp_path, tiny_cohort):
    path = _study_file(tmp_path, tiny_cohort / "manifest_paired.csv", ["mri_cnn3d", "mri_fmri_fusion"], True)
    names = {job.model for job in baselines.plan_references(load_study(path))}
    assert names == {"baseline:mri", "baseline:fused", "ceiling:mri", "ceiling:fused"}  # synth_truth.tsv beside it


# --- chains and fitting -----------------------------------------------------------------------------------


def test_chain_options_forward_the_bundle_keys_the_steps_accept():
    overrides = {
        "mri_pixdim": [6.0, 6.0, 6.0],
        "mri_registration": "none",
        "fmri_confounds": [],
        "fmri_sequence": "dfc",
    }
    options = baselines.chain_options(REPO_BUNDLES / "mri_fmri_fusion", overrides)
    assert options["mri"]["pixdim"] == [6.0, 6.0, 6.0] and options["mri"]["spatial_size"] == [48, 56, 48]
    assert options["mri"]["registration"] == "none"
    assert options["fmri"]["confounds_columns"] == [] and options["fmri"]["atlas"] == "AAL"
    assert options["fmri"]["sequence"] == "roi"  # the baseline reads ROI series whatever the model reads
    for chain, steps in (("mri", mri_steps), ("fmri", fmri_steps)):
        assert set(options[chain]) <= set(inspect.signature(steps).parameters) - {"augmentation", "train", "augment"}


def test_fmri_features_are_the_fisher_z_upper_triangle():
    rng = np.random.default_rng(0)
    series = rng.normal(size=(4, 50))
    expected = np.arctanh(np.corrcoef(series)[np.triu_indices(4, k=1)])
    np.testing.assert_allclose(baselines.fmri_features(series), expected, rtol=1e-5)
    series[2] = 0.0  # a flat ROI correlates with nothing
    assert np.isfinite(baselines.fmri_features(series)).all()


@pytest.mark.parametrize("block", ["mri", "fmri", "severity"])
def test_a_feature_present_only_in_test_rows_is_not_learned(block):
    rng = np.random.default_rng(0)
    labels = np.tile([0, 1, 2], 20)
    train = np.arange(60) < 40
    features = rng.normal(size=(60, 8))
    features[train, 0] = 0.0
    features[~train, 0] = 5.0 * labels[~train]  # planted: it gives the diagnosis away, in the test rows only
    model = baselines.reference_model([(block, 8)], int(train.sum()))
    probabilities = baselines.predict_test(model, features, labels, train)
    assert (probabilities.argmax(axis=1) == labels[~train]).mean() < 0.45  # chance: nothing of it was learned
    seen = baselines.reference_model([(block, 8)], 20).fit(features[~train], labels[~train])
    assert (seen.predict(features[~train]) == labels[~train]).mean() >= 0.9  # what a model shown it makes of it


def test_a_class_missing_from_training_rows_gets_probability_zero():
    labels, train = np.array([0, 1, 0, 1, 2, 2]), np.array([True, True, True, True, False, False])
    features = np.arange(12.0).reshape(6, 2)
    probabilities = baselines.predict_test(baselines.reference_model([("fmri", 2)], 4), features, labels, train)
    assert probabilities.shape == (2, 3) and (probabilities[:, 2] == 0).all()


def test_collapsed_means_one_class_for_a_fold_holding_several():
    frame = pd.DataFrame({"predicted": ["CN"] * 3, "diagnosis": ["CN", "MCI", "AD"]})
    assert is_collapsed(frame)
    assert not is_collapsed(frame.assign(diagnosis="CN"))  # one class to find, and found
    assert not is_collapsed(frame.assign(predicted=["CN", "AD", "AD"]))


# --- the real runner --------------------------------------------------------------------------------------


def test_results_hold_the_baseline_and_ceiling_beside_the_model(run):
    results = pd.read_csv(run / "results.csv")
    assert sorted(results.groupby(["model", "kind"]).size().items()) == [
        (("baseline:fmri", "baseline"), 2),
        (("ceiling:fmri", "ceiling"), 2),
        (("fmri_lstm", "model"), 2),
    ]
    assert results["collapsed"].dtype == bool
    assert {"sklearn_version", "git_commit", "manifest_sha256"} <= set(results.columns)


def test_reference_jobs_fit_on_train_and_val_rows_and_score_the_test_rows(run):
    for model in ("baseline:fmri", "ceiling:fmri"):
        for row in _done(run, model):
            fold = read_manifest(run / "folds" / "paired" / f"repeat-0_fold-{row['fold']}" / "manifest.csv")
            predictions = pd.read_csv(
                run
                / "folds"
                / "paired"
                / f"repeat-0_fold-{row['fold']}"
                / model.replace(":", "-")
                / "eval"
                / "predictions.csv"
            )
            assert set(predictions["subject_id"]) == set(fold.loc[fold["split"] == "test", "subject_id"])
            assert row["n_train"] + row["n_val"] == (fold["split"] != "test").sum() and row["n_val"] > 0


def test_each_model_is_tested_against_its_baseline(run):
    comparisons = pd.read_csv(run / "comparisons.csv")
    rows = comparisons[(comparisons["kind"] == "vs_baseline") & (comparisons["metric"] == "balanced_accuracy")]
    assert rows[["model_a", "model_b", "n_splits"]].values.tolist() == [["fmri_lstm", "baseline:fmri", 2]]
    assert rows["p"].between(0, 1).all() or rows["mean_diff"].eq(0).all()


def test_summary_gives_the_share_of_the_recoverable_signal(run):
    summary = pd.read_csv(run / "summary.csv", keep_default_na=False).set_index("model")
    ceiling = summary.loc["ceiling:fmri", "balanced_accuracy_mean"]
    assert ceiling > 1 / 3  # the planted functional severity is recoverable
    for model in ("fmri_lstm", "baseline:fmri"):
        share = (summary.loc[model, "balanced_accuracy_mean"] - 1 / 3) / (ceiling - 1 / 3)
        assert float(summary.loc[model, "share_of_ceiling"]) == pytest.approx(share)
    assert (
        summary.loc["fmri_lstm", "baseline"] == "baseline:fmri"
        and summary.loc["fmri_lstm", "ceiling"] == "ceiling:fmri"
    )
    assert {"n_collapsed", "kind"} <= set(summary.columns)


def test_report_first_screen_shows_the_share_beside_the_answers(run):
    html = (run / "report.html").read_text()
    first_screen = html[html.index("<h2>Answers</h2>") : html.index("<h2>Summary</h2>")]
    assert "Share of the recoverable signal" in first_screen
    assert re.search(r"<td>fmri_lstm</td>.*?<td>\d+%</td>", first_screen, re.S)
    markdown = (run / "report.md").read_text()
    summary = markdown[markdown.index("## Summary") : markdown.index("## Paired comparisons")]
    for model in ("fmri_lstm", "baseline:fmri", "ceiling:fmri", "chance"):
        assert re.search(rf"\| paired +\| {re.escape(model)} +\|", summary)
    assert "fmri_lstm vs baseline:fmri (augmentation off)" in markdown


def test_rerun_skips_finished_reference_jobs_and_cached_features(run):
    done = sorted(run.glob("folds/*/*/*/done.json")) + sorted(run.glob("cache/baselines/*.npz"))
    before = {p: p.stat().st_mtime_ns for p in done}
    assert main(["experiment", str(run / "study.yaml"), "--out", str(run), "--quiet", "--bootstrap", "20"]) == 0
    assert {p: p.stat().st_mtime_ns for p in done} == before and len(before) == 7  # 6 jobs, 1 feature file


def test_baseline_features_read_the_bold_registrations_the_study_cached(run, tmp_path, monkeypatch):
    from pipeline.transforms import fmri_registration

    out = tmp_path / "run"
    shutil.copytree(run, out)
    shutil.rmtree(out / "cache" / "baselines")
    for done in out.glob("folds/*/*/baseline-*/done.json"):
        done.unlink()

    def register_again(*args, **kwargs):
        raise AssertionError("a BOLD run registered again: the baselines missed the study's registration cache")

    monkeypatch.setattr(fmri_registration, "register_bold", register_again)
    study = load_study(out / "study.yaml")
    baselines.run_references(study, out, baselines.load_references(out), progress=False)
    assert len(_done(out, "baseline:fmri")) == 2


def test_report_rebuilds_results_from_disk_and_lists_a_missing_reference_job(run, capsys):
    victim = run / "folds" / "paired" / "repeat-0_fold-1" / "ceiling-fmri" / "done.json"
    saved = victim.read_text()
    victim.unlink()
    (run / "results.csv").unlink()
    try:
        assert main(["report", str(run), "--bootstrap", "20"]) == 0
        assert "1 planned job(s) not finished" in capsys.readouterr().out
        assert len(pd.read_csv(run / "results.csv")) == 5
        assert "Incomplete run: 1 of 6 planned fold jobs" in (run / "report.md").read_text()
    finally:
        victim.write_text(saved)


def test_fused_baseline_reads_both_chains_features_once(fused_run):
    rows = _done(fused_run, "baseline:fused")
    assert [r["fold"] for r in rows] == [0, 1]
    cached = {p.name.split("_")[1]: np.load(p) for p in fused_run.glob("cache/baselines/paired_*.npz")}
    assert sorted(cached) == ["fmri", "mri"] and all(len(c["keys"]) == 12 for c in cached.values())
    widths = sum(c["features"].shape[1] for c in cached.values())
    assert rows[0]["n_features"] == widths == 12 * 14 * 12 + 116 * 115 // 2  # T1 grid pooled by 2, AAL pairs


def test_fitting_ignores_severities_planted_in_test_rows_only(planted_run):
    fold_0 = _done(planted_run, "ceiling:mri")[0]
    assert fold_0["fold"] == 0 and fold_0["balanced_accuracy"] == pytest.approx(1 / 3)  # 1.0 had it seen them


def test_collapsed_jobs_are_flagged_in_results_and_report(planted_run):
    results = pd.read_csv(planted_run / "results.csv")
    assert results.loc[(results["model"] == "ceiling:mri") & (results["fold"] == 0), "collapsed"].item()
    markdown = (planted_run / "report.md").read_text()
    first_screen = markdown[markdown.index("## Answers") : markdown.index("## Summary")]
    assert "Collapsed models" in first_screen and "ceiling:mri (aug off, cohort paired)" in first_screen
    assert re.search(r"\| paired +\| ceiling:mri .*⚠ \d of 2", markdown)
