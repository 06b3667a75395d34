"""Study runner on the tiny cohort: fold jobs through the bundles, results, report, resume, leakage guard."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pandas as pd
import pytest

from pipeline.cli import main
from pipeline.errors import ManifestError
from pipeline.study.runner import (
    costliest_first,
    fold_tables,
    plan_jobs,
    prepare_folds,
    shard_jobs,
    training_logs,
)
from pipeline.study.spec import StudyError, load_study, with_repeats
from tests.conftest import REPO, run_cli

pytestmark = pytest.mark.slow  # trains bundles: left out by `make test-fast`

SMOKE = REPO / "bundles" / "experiments" / "smoke.yaml"
METRICS = ("accuracy", "balanced_accuracy", "macro_f1", "auc_ovr")


def _experiment(cohort, out, *extra: str) -> int:
    manifest = cohort / "manifest_paired.csv"
    return main(["experiment", str(SMOKE), "--cohort", f"paired={manifest}", "--out", str(out), "--quiet", *extra])


@pytest.fixture(scope="module")
def study_run(tiny_cohort, tmp_path_factory):
    out = tmp_path_factory.mktemp("study") / "run"
    assert _experiment(tiny_cohort, out, "--bootstrap", "100") == 0
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


def test_summary_has_fold_and_subject_bootstrap_intervals(study_run):
    summary = pd.read_csv(study_run / "summary.csv")
    assert len(summary) == 6 and (summary["n_jobs"] == 2).all()
    for metric in METRICS:
        assert (summary[f"{metric}_ci_low"] <= summary[f"{metric}_mean"] + 1e-9).all()
        assert (summary[f"{metric}_mean"] <= summary[f"{metric}_ci_high"] + 1e-9).all()
        assert (summary[f"{metric}_boot_low"] <= summary[f"{metric}_pooled"] + 1e-9).all()
        assert (summary[f"{metric}_pooled"] <= summary[f"{metric}_boot_high"] + 1e-9).all()


def test_comparisons_test_fusion_against_each_single_model_and_augmentation(study_run):
    comparisons = pd.read_csv(study_run / "comparisons.csv")
    assert set(comparisons["metric"]) == set(METRICS)
    primary = comparisons[comparisons["metric"] == "balanced_accuracy"]
    assert sorted(primary["kind"].value_counts().items()) == [("augmentation", 3), ("fusion_vs_single", 4)]
    assert (primary["n_splits"] == 2).all()  # 2 folds x 1 repeat, paired by fold and seed
    assert primary["p"].between(0, 1).all()


def test_report_opens_with_the_answers_then_the_summary(study_run):
    markdown = (study_run / "report.md").read_text()
    first_screen = markdown[markdown.index("## Answers") : markdown.index("## Summary")]
    fused = r"\*\*Does augmentation help the fused model on the small paired cohort\?\*\* (Yes|No|Not shown) for "
    assert re.search(fused + r"mri_fmri_fusion on cohort paired \(12 subjects\)", first_screen)
    assert "**Does augmentation help the 3D CNN on the large MRI-only cohort?** Not answered" in first_screen
    assert re.search(r"\| paired +\| chance +\|", markdown)  # chance level beside the summary table


def test_html_report_is_self_contained_with_every_figure(study_run):
    html = (study_run / "report.html").read_text()
    assert html.count('src="data:image/png;base64,') == 4  # fold metrics, confusion, ROC, learning curves
    assert html.count("src=") == 4 and "href=" not in html
    assert "mri_fmri_fusion" in html and "Study definition" in html


def test_markdown_report_links_figures_written_next_to_it(study_run):
    markdown = (study_run / "report.md").read_text()
    links = [line.split("](")[1].rstrip(")") for line in markdown.splitlines() if line.startswith("![")]
    assert sorted(links) == [f"figures/paired_{k}.png" for k in ("confusion", "folds", "learning_curves", "roc")]
    assert all((study_run / link).stat().st_size > 1000 for link in links)


def test_learning_curves_come_from_every_jobs_training_log(study_run):
    logs = training_logs(study_run)
    assert len(logs) == 12 * 2  # 12 jobs x 2 epochs
    assert {"train_loss", "val_balanced_accuracy"} <= set(logs.columns)


def test_environment_section_reports_provenance_of_the_jobs(study_run):
    markdown = (study_run / "report.md").read_text()
    environment = markdown[markdown.index("## Environment") :]
    results = pd.read_csv(study_run / "results.csv")
    assert results["git_commit"].iloc[0] in environment and "monai_version" in environment


def test_rerun_skips_finished_jobs(study_run, tiny_cohort):
    done = sorted(study_run.glob("folds/*/*/*/done.json"))
    before = {p: p.stat().st_mtime_ns for p in done}
    assert _experiment(tiny_cohort, study_run, "--bootstrap", "10") == 0
    assert {p: p.stat().st_mtime_ns for p in done} == before
    assert len(pd.read_csv(study_run / "results.csv")) == 12


def test_shards_partition_the_plan():
    jobs = plan_jobs(load_study(SMOKE))
    shards = [shard_jobs(jobs, i, 3) for i in range(3)]
    assert sorted(sum(shards, []), key=jobs.index) == jobs
    assert max(len(s) for s in shards) - min(len(s) for s in shards) <= 1


def test_fold_jobs_run_the_largest_cohort_and_augmented_jobs_first():
    jobs = plan_jobs(load_study(REPO / "bundles" / "experiments" / "paper_study.yaml"))
    sizes = {"paired": 29, "mri_only": 300}
    tables = {Path("folds", name, "folds.csv"): pd.DataFrame(index=range(n)) for name, n in sizes.items()}
    order = costliest_first(jobs, tables)
    assert sorted(order, key=jobs.index) == jobs
    assert [j.cohort for j in order] == ["mri_only"] * 10 + ["paired"] * 30
    for cohort in sizes:
        planned = [j for j in jobs if j.cohort == cohort]
        ordered = [j for j in order if j.cohort == cohort]
        assert ordered == [j for j in planned if j.augment] + [j for j in planned if not j.augment]


def test_more_repeats_keep_the_first_repeats_jobs_and_folds(tiny_cohort):
    study = load_study(SMOKE, {"paired": str(tiny_cohort / "manifest_paired.csv")})
    more = with_repeats(study, 2)
    assert (study.repeats, more.repeats) == (1, 2) and "--repeats 2" in more.text
    jobs, twice = plan_jobs(study), plan_jobs(more)
    assert len(twice) == 2 * len(jobs) and set(jobs) < set(twice)
    once, both = fold_tables(study), fold_tables(more)
    assert once.keys() < both.keys()
    for path, table in once.items():
        first = both[path].query("repeat == 0") if path.name == "folds.csv" else both[path]
        pd.testing.assert_frame_equal(table, first.reset_index(drop=True))
    assert with_repeats(study, None) is study
    with pytest.raises(StudyError, match="--repeats must be at least 1"):
        with_repeats(study, 0)


def test_shard_run_leaves_other_shards_jobs_and_the_report_alone(study_run, tiny_cohort, capsys):
    plan = plan_jobs(load_study(SMOKE))
    victim = study_run / shard_jobs(plan, 1, 2)[0].job_dir / "done.json"
    saved, report = victim.read_text(), (study_run / "report.md").stat().st_mtime_ns
    victim.unlink()
    try:
        assert _experiment(tiny_cohort, study_run, "--shard", "0/2") == 0
        assert "1 job(s) of other shards still missing" in capsys.readouterr().out
        assert not victim.exists() and (study_run / "report.md").stat().st_mtime_ns == report
    finally:
        victim.write_text(saved)


def test_report_lists_missing_jobs(study_run, capsys):
    victim = next(study_run.glob("folds/*/*/fmri_lstm_aug-on*/done.json"))
    saved = victim.read_text()
    victim.unlink()
    try:
        assert main(["report", str(study_run), "--bootstrap", "10"]) == 0
        assert "1 planned job(s) not finished" in capsys.readouterr().out
        markdown = (study_run / "report.md").read_text()
        assert "Incomplete run: 1 of 12 planned fold jobs" in markdown
        assert str(victim.parent.relative_to(study_run)) in markdown  # named under Missing jobs
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


def test_an_override_no_bundle_of_the_study_reads_is_refused_naming_it(tmp_path, capsys):
    (tmp_path / "s.yaml").write_text(SMOKE.read_text().replace("  epochs: 2", "  epoch: 2"))
    assert main(["experiment", str(tmp_path / "s.yaml"), "--out", str(tmp_path / "run")]) == 1
    refusal = r"s\.yaml: overrides: 'epoch' is not a key of .*mri_cnn3d.*would change nothing"
    assert re.search(refusal, capsys.readouterr().err)
    assert not (tmp_path / "run").exists()


def test_a_cohort_override_must_be_a_key_of_that_cohorts_own_models(tmp_path):
    """``mri_dropout`` is the fused bundle's: a cohort of the LSTM alone would not read it."""
    cohort = "  paired:\n    manifest: ../../runs/smoke/cohort/manifest_paired.csv\n"
    (tmp_path / "s.yaml").write_text(
        SMOKE.read_text().replace(cohort, f"{cohort}    models: [fmri_lstm]\n    overrides: {{mri_dropout: 0.5}}\n")
    )
    with pytest.raises(StudyError, match=r"cohorts\.paired\.overrides: 'mri_dropout' is not a key of fmri_lstm"):
        load_study(tmp_path / "s.yaml")
    (tmp_path / "t.yaml").write_text(SMOKE.read_text().replace("  epochs: 2", "  epochs: 2\n  mri_dropout: 0.5"))
    assert load_study(tmp_path / "t.yaml").overrides["mri_dropout"] == 0.5  # the fused model of the study reads it


def test_exponent_numbers_in_a_study_are_numbers(tmp_path):
    """PyYAML reads ``1e-3`` as text (YAML 1.1); a study reads it as the number a user means."""
    exponents = "overrides:\n  learning_rate: 1e-3\n  weight_decay: 5E-5"
    (tmp_path / "s.yaml").write_text(SMOKE.read_text().replace("overrides:", exponents, 1))
    overrides = load_study(tmp_path / "s.yaml").overrides
    assert overrides["learning_rate"] == pytest.approx(0.001) and overrides["weight_decay"] == pytest.approx(5e-5)


def test_paper_study_encodes_the_papers_grid():
    study = load_study(REPO / "bundles" / "experiments" / "paper_study.yaml")
    jobs = plan_jobs(study)
    paired = {(j.model, j.augment) for j in jobs if j.cohort == "paired"}
    large = {(j.model, j.augment) for j in jobs if j.cohort == "mri_only"}
    assert paired == {(m, a) for m in ("mri_cnn3d", "fmri_lstm", "mri_fmri_fusion") for a in (False, True)}
    assert large == {("mri_cnn3d", False), ("mri_cnn3d", True)}


def test_missing_modality_cost_reads_every_fused_job_through_the_run_layout(study_run):
    result = run_cli(str(REPO / "tools" / "missing_modality_cost.py"), str(study_run), "--cohort", "paired")
    assert result.returncode == 0, result.stderr
    fused = pd.read_csv(study_run / "results.csv").query("model == 'mri_fmri_fusion'")
    rows = [line.split() for line in result.stdout.split("\n\n")[0].splitlines()[1:]]
    folds = [f"repeat-{r}_fold-{f}" for r, f in zip(fused["repeat"], fused["fold"])]
    assert sorted(row[0] for row in rows) == sorted(folds)
    assert all(row[6].lower() != "nan" for row in rows)  # each job's 3D CNN twin was found on the same fold
