"""Recipe variants (`neurofusion variants`): one study run per set of bundle keys, same folds, paired differences."""

from __future__ import annotations

import pandas as pd
import pytest
import yaml

from pipeline.study.spec import StudyError
from pipeline.study.variants import load_variants, variant_study
from tests.conftest import TINY_OVERRIDES, run_cli

pytestmark = pytest.mark.slow  # trains bundles: left out by `make test-fast`


def _write(folder, variants: dict, reference: str = "short", manifest: str = "manifest.csv") -> str:
    study = {
        "name": "recipe",
        "cohorts": {"paired": manifest},
        "models": ["fmri_lstm"],
        "cv": {"folds": 2, "seed": 0, "val_fraction": 0.34},
        "overrides": {**TINY_OVERRIDES, "epochs": 1},
    }
    (folder / "study.yaml").write_text(yaml.safe_dump(study))
    path = folder / "variants.yaml"
    path.write_text(yaml.safe_dump({"study": "study.yaml", "reference": reference, "variants": variants}))
    return str(path)


@pytest.fixture(scope="module")
def variants_run(tiny_cohort, tmp_path_factory):
    folder = tmp_path_factory.mktemp("variants")
    path = _write(folder, {"short": {}, "longer": {"epochs": 2}}, manifest=str(tiny_cohort / "manifest_paired.csv"))
    out = folder / "out"
    result = run_cli("-m", "pipeline.cli", "variants", path, "--out", str(out), "--quiet", "--bootstrap", "20")
    assert result.returncode == 0, result.stderr[-2000:]
    return out, result.stdout


def test_every_variant_runs_on_the_same_folds(variants_run):
    out, _ = variants_run
    assert (out / "short" / "folds" / "paired" / "folds.csv").read_text() == (
        out / "longer" / "folds" / "paired" / "folds.csv"
    ).read_text()


def test_a_variant_s_bundle_keys_reach_its_jobs(variants_run):
    out, _ = variants_run
    epochs = {
        name: {len(pd.read_csv(log)) for log in (out / name).glob("folds/paired/*/*/eval/training_log.csv")}
        for name in ("short", "longer")
    }
    assert epochs == {"short": {1}, "longer": {2}}
    assert "# variant longer" in (out / "longer" / "study.yaml").read_text()


def test_variants_share_one_registration_cache(variants_run):
    out, _ = variants_run
    assert (out / "longer" / "cache" / "registration").resolve() == (out / "cache" / "registration").resolve()


def test_the_table_gives_each_variant_s_paired_difference_from_the_reference(variants_run):
    out, stdout = variants_run
    table = pd.read_csv(out / "variants.csv")
    models = table[table["kind"] == "model"].set_index("variant")
    per_split = {
        name: pd.read_csv(out / name / "results.csv").groupby(["repeat", "fold"])["balanced_accuracy"].mean()
        for name in ("short", "longer")
    }
    expected = (per_split["longer"] - per_split["short"]).mean()
    assert models.loc["longer", "diff_vs_reference"] == pytest.approx(expected)
    assert models.loc["longer", "n_splits"] == 2
    assert "| longer | paired | fmri_lstm |" in stdout and "vs short" in stdout


def test_an_unknown_reference_is_refused_naming_the_file(tmp_path):
    path = _write(tmp_path, {"a": {}}, reference="b")
    with pytest.raises(StudyError, match=r"variants.yaml: reference 'b' is not a variant"):
        load_variants(path)


def test_a_variant_key_of_the_wrong_type_is_refused_naming_the_variant(tmp_path):
    path = _write(tmp_path, {"a": {}, "b": {"epochs": "5"}}, reference="a")
    with pytest.raises(StudyError, match=r"variants.b: .*epochs"):
        load_variants(path)


def test_a_variant_key_no_bundle_of_the_study_reads_is_refused(tmp_path):
    path = _write(tmp_path, {"a": {}, "b": {"learing_rate": 0.01}}, reference="a")
    with pytest.raises(StudyError, match=r"variants.b: 'learing_rate' is not a key of fmri_lstm"):
        load_variants(path)


def test_only_the_reference_variant_fits_the_baselines(tmp_path):
    path = _write(tmp_path, {"a": {}, "b": {"epochs": 3}}, reference="a")
    study = yaml.safe_load((tmp_path / "study.yaml").read_text())
    (tmp_path / "study.yaml").write_text(yaml.safe_dump({**study, "baselines": True}))
    (tmp_path / "manifest.csv").write_text("subject_id,diagnosis\n")
    variants = load_variants(path)
    assert variant_study(variants, "a").baselines and not variant_study(variants, "b").baselines
    assert variant_study(variants, "b").overrides["epochs"] == 3
