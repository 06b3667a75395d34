"""A model is defined by its inputs, and resume continues only the same run.

Training records the keys that define what the network sees beside ``model.pt`` (``model_inputs.json``); evaluation,
``monai.bundle run inference.yaml`` and ``neurofusion predict`` use them without being told, and refuse an explicit
value that contradicts them. Labels and class names come from one mapping (``class_names`` in any order, or two of
them). The resume checkpoint records which run it is and refuses to continue another.
"""

from __future__ import annotations

import json
import re
import shutil

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from monai.bundle import ConfigParser

from pipeline.cli import main
from pipeline.data.datasets import manifest_datalist
from pipeline.engine import ResumeMismatch, check_resume, run_identity
from pipeline.engine.bundle_parts import BUNDLES
from pipeline.engine.model_inputs import ModelInputError, inputs_record, write_model_inputs
from pipeline.engine.workflow import run_bundle
from pipeline.errors import BundleKeyError
from tests.conftest import REPO, TINY_OVERRIDES, cli_overrides, run_cli

pytestmark = pytest.mark.slow  # trains bundles: left out by `make test-fast`

#: keys the chain or network reads that do not change what a trained network sees (QC limits, caches, training-only)
NOT_INPUTS = {
    "mri_registration_min_similarity",  # a refusal threshold, not a change of the input
    "registration_cache_dir",
    "mri_augmentation",  # training draws only
    "fmri_augmentation",
    "modality_dropout",
    "mri_dropout",
}
#: a fused model trained with a non-default value of every input key the tiny cohort allows at once
TRAINED = {
    **TINY_OVERRIDES,  # grid, voxel size and timepoints differ from the bundle defaults
    "epochs": 1,
    "cache_rate": 0.0,
    "class_names": ["AD", "MCI", "CN"],
    "high_pass": 0.02,
    "low_pass": 0.09,
    "mri_brain_mask": True,
}
INPUT_KEYS = ["mri_spatial_size", "mri_pixdim", "fmri_timepoints", "class_names", "high_pass", "low_pass"]
#: the tiny cohort's scans are coarse and short: the fused bundle's QC limits opened for them
RELAXED_QC = [
    "--set=qc#mri#voxel_mm=[0.5,10]",
    "--set=qc#fmri#voxel_mm=[1,20]",
    "--set=qc#fmri#min_volumes=10",
    "--set=qc#fmri#warn_volumes=10",
]


def configs(bundle: str) -> dict:
    return {
        name: yaml.safe_load((REPO / "bundles" / bundle / "configs" / name).read_text())
        for name in ("train.yaml", "evaluate.yaml", "inference.yaml")
    }


def parser_of(bundle: str, files: list[str], **values) -> ConfigParser:
    parser = ConfigParser()
    parser.read_config([str(REPO / "bundles" / bundle / "configs" / f) for f in files])
    parser["bundle_root"] = str(REPO / "bundles" / bundle)
    for key, value in values.items():
        parser[key] = value
    return parser


def one_line(stderr: str) -> str:
    """The refusal of a ``python -m monai.bundle run`` subprocess: its stderr less MONAI's own config warning."""
    lines = [ln for ln in stderr.splitlines() if ln.strip() and "UserWarning" not in ln and "create_workflow" not in ln]
    assert len(lines) == 1 and "Traceback" not in stderr, stderr[-3000:]
    return lines[0]


# --- the record and the keys it holds (no training) ---------------------------------------------------


def _references(node, parser: dict, seen: set[str]) -> set[str]:
    """Top-level keys ``node`` references, following references into top-level containers (registration options)."""
    found = set()
    for key in re.findall(r"@(\w+)", json.dumps(node)):
        if key in seen or key not in parser:
            continue
        seen.add(key)
        found.add(key)
        if isinstance(parser[key], (dict, list)) or str(parser[key]).startswith("$"):
            found |= _references(parser[key], parser, seen)
    return found


@pytest.mark.parametrize("bundle", BUNDLES)
def test_every_key_the_chain_or_the_network_reads_is_a_recorded_model_input(bundle):
    train = configs(bundle)["train.yaml"]
    read = train["transform_options"]
    used = [read[m] for m in train["modalities"]] + [train["network_def"]]
    keys = _references(used, train, set()) - NOT_INPUTS
    keys -= {k for k in keys if isinstance(train[k], dict)}  # a container: its keys are what counts
    missing = keys - set(train["model_inputs"])
    assert not missing, f"{bundle}: keys that change the model's input but are not recorded: {sorted(missing)}"
    assert {"class_names", "modalities"} <= set(train["model_inputs"])


@pytest.mark.parametrize("bundle", BUNDLES)
def test_inference_records_the_same_model_inputs_as_training(bundle):
    found = configs(bundle)
    assert found["inference.yaml"]["model_inputs"] == found["train.yaml"]["model_inputs"]


@pytest.mark.parametrize("bundle", BUNDLES)
@pytest.mark.parametrize("files", [["inference.yaml"], ["train.yaml", "evaluate.yaml"]], ids=["inference", "evaluate"])
def test_each_model_input_is_taken_from_the_record_and_defaults_to_the_training_value(bundle, files, tmp_path):
    train = parser_of(bundle, ["train.yaml"])
    keys = list(configs(bundle)["train.yaml"]["model_inputs"])
    weights = tmp_path / "model.pt"
    untrained = parser_of(bundle, files, model_file=str(weights))
    for key in keys:  # no record: the values of train.yaml
        assert untrained.get_parsed_content(key) == train.get_parsed_content(key), key
    recorded = {key: f"recorded {key}" for key in keys}
    write_model_inputs(weights, recorded)
    parser = parser_of(bundle, files, model_file=str(weights))
    assert {key: parser.get_parsed_content(key) for key in keys} == recorded


def test_a_record_that_is_not_json_is_refused_naming_the_file(tmp_path):
    weights = tmp_path / "model.pt"
    inputs_record(weights).write_text("{not json")
    parser = parser_of("mri_cnn3d", ["inference.yaml"], model_file=str(weights))
    with pytest.raises(Exception) as refusal:
        parser.get_parsed_content("mri_pixdim")
    assert isinstance(refusal.value.__cause__ or refusal.value, ModelInputError)
    assert str(inputs_record(weights)) in str(refusal.value.__cause__ or refusal.value)


# --- class names ------------------------------------------------------------------------------------------


def test_labels_are_positions_in_class_names_in_any_order(corpus):
    items = manifest_datalist(corpus.manifest(), None, ["mri"], class_names=["AD", "MCI", "CN"])
    diagnoses = pd.read_csv(corpus.manifest()).set_index("subject_id")["diagnosis"]
    assert [["AD", "MCI", "CN"][item["label"]] for item in items] == [diagnoses[i["subject_id"]] for i in items]


def test_two_class_names_leave_out_and_count_the_other_diagnoses(corpus, caplog):
    items = manifest_datalist(corpus.manifest(), None, ["mri"], class_names=["CN", "AD"])
    assert len(items) == 8 and {item["label"] for item in items} == {0, 1}
    assert "4 of 12 rows left out" in caplog.text and "4 MCI" in caplog.text


@pytest.mark.parametrize("names", [["CN"], ["CN", "CN"], ["HC", "AD"], "CN,AD"])
def test_class_names_that_cannot_be_honoured_are_refused_naming_the_key(corpus, names):
    with pytest.raises(BundleKeyError, match="bundle key 'class_names' must be two or three distinct names"):
        manifest_datalist(corpus.manifest(), None, ["mri"], class_names=names)


@pytest.fixture(scope="module")
def binary(fold_dir, tmp_path_factory):
    """The MRI bundle trained and evaluated as an AD-vs-CN classifier; returns (run folder, manifest, train log)."""
    out = tmp_path_factory.mktemp("binary")
    manifest = fold_dir / "repeat-0_fold-0" / "manifest.csv"
    keys = {
        **TINY_OVERRIDES,
        "epochs": 1,
        "cache_rate": 0.0,
        "class_names": ["CN", "AD"],
        "ckpt_dir": str(out / "ckpt"),
    }
    bundle = REPO / "bundles" / "mri_cnn3d"
    log = out / "train.log"
    run_bundle(bundle, ["train.yaml"], log_file=log, manifest=str(manifest), output_dir=str(out / "train"), **keys)
    evaluate = {k: v for k, v in keys.items() if k not in TINY_OVERRIDES and k != "class_names"}
    run_bundle(
        bundle,
        ["train.yaml", "evaluate.yaml"],
        log_file=out / "evaluate.log",
        manifest=str(manifest),
        output_dir=str(out / "eval"),
        **evaluate,
    )
    return out, manifest, log.read_text()


def test_a_two_class_bundle_trains_and_evaluates_without_the_other_diagnosis(binary):
    out, manifest, log = binary
    predictions = pd.read_csv(out / "eval" / "predictions.csv")
    test = pd.read_csv(manifest).query("split == 'test' and diagnosis != 'MCI'")
    assert sorted(predictions["subject_id"]) == sorted(test["subject_id"])
    assert [c for c in predictions.columns if c.startswith("prob_")] == ["prob_CN", "prob_AD"]
    assert set(predictions["diagnosis"]) <= {"CN", "AD"}
    assert "left out: their diagnosis is not one of class_names ['CN', 'AD']" in log
    metrics = pd.read_csv(out / "eval" / "metrics.csv", header=None, index_col=0)[1]
    assert 0 <= metrics["balanced_accuracy"] <= 1


# --- a trained model's inputs, end to end -------------------------------------------------------------


@pytest.fixture(scope="module")
def fused(fold_dir, tmp_path_factory):
    """The fused bundle trained with non-default input keys (:data:`TRAINED`); returns (ckpt folder, manifest)."""
    out = tmp_path_factory.mktemp("fused")
    manifest = fold_dir / "repeat-0_fold-0" / "manifest.csv"
    run_bundle(
        REPO / "bundles" / "mri_fmri_fusion",
        ["train.yaml"],
        log_file=out / "train.log",
        manifest=str(manifest),
        output_dir=str(out / "train"),
        ckpt_dir=str(out / "ckpt"),
        **TRAINED,
    )
    unlabelled = pd.read_csv(manifest).query("split == 'test'").drop(columns=["diagnosis", "split"])
    new = manifest.parent / "test_unlabelled.csv"  # beside the manifest: its image paths are relative to it
    unlabelled.to_csv(new, index=False)
    return out / "ckpt", manifest, new


def test_training_records_every_model_input_beside_model_pt(fused):
    ckpt, _, _ = fused
    record = json.loads((ckpt / "model_inputs.json").read_text())
    assert record["weights"] == "model.pt"
    assert {key: record["inputs"][key] for key in INPUT_KEYS + ["mri_brain_mask"]} == {
        key: TRAINED[key] for key in INPUT_KEYS + ["mri_brain_mask"]
    }
    assert record["inputs"]["modalities"] == ["mri", "fmri"]
    assert isinstance(torch.load(ckpt / "model.pt", weights_only=True), dict)  # still MONAI's flat state dict


def probabilities(table, names=("AD", "MCI", "CN")) -> pd.DataFrame:
    return pd.read_csv(table).set_index("subject_id")[[f"prob_{n}" for n in names]].sort_index()


def fused_run(folder, configs: list[str], manifest, ckpt, **keys):
    """Evaluation (``train.yaml`` + ``evaluate.yaml``) or inference (``inference.yaml``) of the fused bundle from
    ``ckpt`` into ``folder``, its log beside it; returns the probabilities it predicted."""
    workflow = "infer" if configs == ["inference.yaml"] else "train"
    run_bundle(
        REPO / "bundles" / "mri_fmri_fusion",
        configs,
        workflow,
        log_file=folder.with_suffix(".log"),
        manifest=str(manifest),
        output_dir=str(folder),
        ckpt_dir=str(ckpt),
        **keys,
    )
    return probabilities(folder / "predictions.csv")


def test_predict_without_naming_the_keys_gives_inference_with_the_trained_values(fused, tmp_path):
    ckpt, _, new = fused
    out = tmp_path / "predict"
    args = ["--bundle", str(REPO / "bundles" / "mri_fmri_fusion"), "--ckpt", str(ckpt / "model.pt")]
    assert main(["predict", *args, "--manifest", str(new), "--out", str(out), *RELAXED_QC]) == 0
    right = {k: TRAINED[k] for k in INPUT_KEYS + ["mri_brain_mask"]}
    expected = fused_run(tmp_path / "right", ["inference.yaml"], new, ckpt, **right)
    np.testing.assert_allclose(probabilities(out / "predictions.csv"), expected, atol=1e-5)
    np.testing.assert_allclose(fused_run(tmp_path / "unnamed", ["inference.yaml"], new, ckpt), expected, atol=1e-6)
    record = json.loads((out / pd.read_csv(new)["subject_id"][0] / "prediction.json").read_text())
    assert record["model"]["inputs"]["mri_spatial_size"] == TRAINED["mri_spatial_size"]
    assert record["model"]["inputs_record"] == str(ckpt / "model_inputs.json")


def test_evaluation_uses_the_trained_inputs_and_names_each_diagnosis_as_the_manifest_does(fused, tmp_path):
    ckpt, manifest, new = fused
    evaluation = fused_run(tmp_path / "eval", ["train.yaml", "evaluate.yaml"], manifest, ckpt)
    inference = fused_run(tmp_path / "infer", ["inference.yaml"], new, ckpt)
    evaluated = pd.read_csv(tmp_path / "eval" / "predictions.csv").set_index("subject_id")
    truth = pd.read_csv(manifest).set_index("subject_id")["diagnosis"]
    assert (evaluated["diagnosis"] == truth[evaluated.index]).all()  # [AD, MCI, CN]: a CN row is called CN
    np.testing.assert_allclose(evaluation, inference)


def test_predict_refuses_a_set_key_that_contradicts_the_trained_value(fused, tmp_path, capsys):
    ckpt, _, new = fused
    bundle = REPO / "bundles" / "mri_fmri_fusion"
    args = ["predict", "--bundle", str(bundle), "--ckpt", str(ckpt / "model.pt"), "--manifest", str(new)]
    assert main([*args, "--out", str(tmp_path / "out"), "--set=mri_pixdim=[3,3,3]"]) == 1
    line = capsys.readouterr().err.strip()
    assert "bundle key 'mri_pixdim' is [3, 3, 3]" in line and "trained with [6.0, 6.0, 6.0]" in line, line
    assert not (tmp_path / "out").exists()


def test_monai_bundle_inference_refuses_a_contradicting_key_in_one_line(fused, tmp_path):
    ckpt, _, new = fused
    config = REPO / "bundles" / "mri_fmri_fusion" / "configs" / "inference.yaml"
    result = run_cli(
        "-m",
        "monai.bundle",
        "run",
        "--config_file",
        str(config),
        "--manifest",
        str(new),
        "--ckpt_dir",
        str(ckpt),
        "--output_dir",
        str(tmp_path / "out"),
        "--class_names",
        "[CN,MCI,AD]",
    )
    assert result.returncode != 0
    line = one_line(result.stderr)
    assert "bundle key 'class_names' is ['CN', 'MCI', 'AD']" in line and "['AD', 'MCI', 'CN']" in line, line
    assert not (tmp_path / "out").exists()


def test_evaluation_without_a_trained_model_says_so_in_one_line(fold_dir, tmp_path):
    files = (
        "["
        + ",".join(f"'{REPO / 'bundles' / 'mri_cnn3d' / 'configs' / c}'" for c in ("train.yaml", "evaluate.yaml"))
        + "]"
    )
    overrides = {
        "manifest": fold_dir / "repeat-0_fold-0" / "manifest.csv",
        "ckpt_dir": tmp_path / "ckpt",
        "output_dir": tmp_path / "eval",
    }
    result = run_cli("-m", "monai.bundle", "run", "--config_file", files, *cli_overrides(overrides))
    assert result.returncode != 0
    line = one_line(result.stderr)
    assert f"{tmp_path / 'ckpt' / 'model.pt'}: no trained model; train one first" in line, line
    assert not (tmp_path / "eval").exists()


# --- resume continues only the same run ---------------------------------------------------------------


def train_fmri(fold_dir, out, fold: int = 0, **keys) -> None:
    run_bundle(
        REPO / "bundles" / "fmri_lstm",
        ["train.yaml"],
        log_file=out / f"train-{fold}.log",
        manifest=str(fold_dir / f"repeat-0_fold-{fold}" / "manifest.csv"),
        output_dir=str(out / f"eval-{fold}"),
        ckpt_dir=str(out / "ckpt"),
        **{**TINY_OVERRIDES, "epochs": 1, "cache_rate": 0.0, **keys},
    )


@pytest.fixture(scope="module")
def fold0(fold_dir, tmp_path_factory):
    """The fMRI bundle trained for one epoch on fold 0; returns its run folder."""
    out = tmp_path_factory.mktemp("fold0")
    train_fmri(fold_dir, out)
    return out


def test_the_resume_checkpoint_records_its_run(fold0, fold_dir):
    run = torch.load(fold0 / "ckpt" / "checkpoint.pt", weights_only=True)["run"]
    train = pd.read_csv(fold_dir / "repeat-0_fold-0" / "manifest.csv").query("split == 'train'")
    assert run["train_rows"] == sorted(train["subject_id"])
    assert run["learning_rate"] == 0.001 and run["fmri_timepoints"] == TINY_OVERRIDES["fmri_timepoints"]


def test_resuming_another_fold_in_a_reused_ckpt_dir_is_refused_in_one_line(fold0, fold_dir, tmp_path):
    shutil.copytree(fold0 / "ckpt", tmp_path / "ckpt")
    before = {p.name: p.read_bytes() for p in (tmp_path / "ckpt").iterdir()}
    config = REPO / "bundles" / "fmri_lstm" / "configs" / "train.yaml"
    overrides = {
        **TINY_OVERRIDES,
        "epochs": 1,
        "manifest": fold_dir / "repeat-0_fold-1" / "manifest.csv",
        "ckpt_dir": tmp_path / "ckpt",
        "output_dir": tmp_path / "eval",
    }
    result = run_cli("-m", "monai.bundle", "run", "--config_file", str(config), *cli_overrides(overrides))
    assert result.returncode != 0
    line = one_line(result.stderr)
    assert "checkpoint.pt: the training state of another run: train_rows differ: " in line, line
    assert "--resume false" in line and "another ckpt_dir" in line
    assert {p.name: p.read_bytes() for p in (tmp_path / "ckpt").iterdir()} == before
    assert not (tmp_path / "eval").exists()


@pytest.mark.parametrize(("key", "value"), [("learning_rate", 0.01), ("fmri_timepoints", 24), ("seed", 1)])
def test_resuming_with_a_key_that_changes_the_run_is_refused_naming_it(fold0, fold_dir, tmp_path, key, value):
    shutil.copytree(fold0 / "ckpt", tmp_path / "ckpt")
    with pytest.raises(Exception) as refusal:
        train_fmri(fold_dir, tmp_path, epochs=2, **{key: value})
    cause = refusal.value
    while not isinstance(cause, ResumeMismatch) and cause.__cause__ is not None:
        cause = cause.__cause__
    assert isinstance(cause, ResumeMismatch) and f"bundle key '{key}' was" in str(cause), str(refusal.value)


def test_resuming_the_same_run_with_more_epochs_continues_it(fold0, fold_dir, tmp_path):
    shutil.copytree(fold0 / "ckpt", tmp_path / "ckpt")
    train_fmri(fold_dir, tmp_path, epochs=2, num_workers=0, cache_rate=1.0)  # keys that change nothing the run is
    trainer = torch.load(tmp_path / "ckpt" / "checkpoint.pt", weights_only=True)["trainer"]
    assert trainer["iteration"] == 2 * trainer["epoch_length"]
    assert "Restored all variables from" in (tmp_path / "train-0.log").read_text()


def test_resume_false_starts_afresh_in_a_reused_ckpt_dir(fold0, fold_dir, tmp_path):
    shutil.copytree(fold0 / "ckpt", tmp_path / "ckpt")
    train_fmri(fold_dir, tmp_path, fold=1, resume=False)
    run = torch.load(tmp_path / "ckpt" / "checkpoint.pt", weights_only=True)["run"]
    train = pd.read_csv(fold_dir / "repeat-0_fold-1" / "manifest.csv").query("split == 'train'")
    assert run["train_rows"] == sorted(train["subject_id"])
    assert (
        torch.load(tmp_path / "ckpt" / "model.pt", weights_only=True).keys()
        == torch.load(fold0 / "ckpt" / "model.pt", weights_only=True).keys()
    )


def test_a_checkpoint_without_a_run_record_is_not_resumed(tmp_path):
    path = tmp_path / "checkpoint.pt"
    torch.save({"model": {}, "trainer": {"epoch": 1}}, path)
    with pytest.raises(ResumeMismatch, match="records no run"):
        check_resume(path, {"manifest_sha256": "x"})
    check_resume(path, {"manifest_sha256": "x"}, resume=False)  # --resume false: nothing to check


def test_run_identity_names_the_rows_that_differ(corpus):
    def manifest(name: str, splits: list[str]):
        rows = [
            {"subject_id": f"sub-0{i + 1}", "split": split, "mri": corpus.t1.name} for i, split in enumerate(splits)
        ]
        pd.DataFrame(rows).to_csv(corpus.folder / name, index=False)
        return {"manifest": corpus.folder / name, "keys": {"seed": 0}}

    first = manifest("a.csv", ["train", "train", "val"])
    path = corpus.folder / "checkpoint.pt"
    torch.save({"run": run_identity(**first)}, path)
    check_resume(path, first)  # the same run
    with pytest.raises(ResumeMismatch, match=r"train_rows differ: 1 only in the checkpoint \(e.g. sub-02\)"):
        check_resume(path, manifest("b.csv", ["train", "val", "val"]))
