"""The three bundles run exactly as a user runs them: `python -m monai.bundle run` train (the session's trained bundles,
tests/conftest.py), evaluate, inference."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import torch

from pipeline.engine.bundle_parts import BUNDLES
from pipeline.engine.metrics import METRICS
from tests.conftest import REPO, TrainedBundles, cli_overrides, listing, run_cli

pytestmark = pytest.mark.slow  # trains bundles: left out by `make test-fast`


def bundle_run(bundle: str, configs: list[str], **overrides) -> None:
    files = "[" + ",".join(f"'{REPO / 'bundles' / bundle / 'configs' / c}'" for c in configs) + "]"
    result = run_cli("-m", "monai.bundle", "run", "--config_file", files, *cli_overrides(overrides))
    assert result.returncode == 0, result.stderr[-3000:]


@pytest.fixture(scope="module", params=BUNDLES)
def trained(request, trained_bundles, fold_dir):
    """A bundle trained for 2 epochs on fold 0 of the tiny cohort (tests/conftest.py); returns (bundle, the fold's
    manifest, the trained bundle folder)."""
    return request.param, fold_dir / "repeat-0_fold-0" / "manifest.csv", trained_bundles[request.param]


def test_training_saves_best_checkpoint_and_learning_curve(trained):
    _, _, folder = trained
    state = torch.load(folder / "models" / "model.pt", weights_only=True)
    assert any(k.endswith("weight") for k in state)
    log = pd.read_csv(folder / "eval" / "training_log.csv")
    assert list(log["epoch"]) == [1, 2]
    assert {"train_loss", "val_balanced_accuracy", "val_auc_ovr"} <= set(log.columns)


def test_evaluation_writes_metrics_and_test_predictions(trained, tmp_path):
    bundle, manifest, folder = trained
    out = tmp_path / "eval"
    bundle_run(bundle, ["train.yaml", "evaluate.yaml"], manifest=manifest, ckpt_dir=folder / "models", output_dir=out)
    metrics = pd.read_csv(out / "metrics.csv", header=None, index_col=0)[1]
    assert set(METRICS) <= set(metrics.index)
    assert all(0 <= metrics[m] <= 1 for m in ("accuracy", "balanced_accuracy", "macro_f1"))
    predictions = pd.read_csv(out / "predictions.csv")
    test_rows = pd.read_csv(manifest).query("split == 'test'")
    assert sorted(predictions["subject_id"]) == sorted(test_rows["subject_id"])
    probabilities = predictions[["prob_CN", "prob_MCI", "prob_AD"]].to_numpy()
    assert abs(probabilities.sum(axis=1) - 1).max() < 1e-5


def test_inference_predicts_every_row_without_diagnosis(trained, tmp_path):
    bundle, manifest, folder = trained
    unlabelled = pd.read_csv(manifest).drop(columns=["diagnosis", "split"])
    unlabelled.to_csv(tmp_path / "unlabelled.csv", index=False)  # the fold manifests' image paths are absolute
    overrides = {"manifest": tmp_path / "unlabelled.csv", "ckpt_dir": folder / "models", "output_dir": tmp_path / "out"}
    bundle_run(bundle, ["inference.yaml"], **overrides)
    predictions = pd.read_csv(tmp_path / "out" / "predictions.csv")
    assert list(predictions["subject_id"]) == list(unlabelled["subject_id"])
    assert "diagnosis" not in predictions.columns
    assert set(predictions["predicted"]) <= {"CN", "MCI", "AD"}


def test_a_test_that_changes_a_shared_trained_bundle_fails_the_session(tmp_path):
    (tmp_path / "mri_cnn3d" / "models").mkdir(parents=True)
    (tmp_path / "mri_cnn3d" / "models" / "model.pt").write_bytes(b"weights")
    (tmp_path / "mri_cnn3d.json").write_text(json.dumps(listing(tmp_path / "mri_cnn3d")))
    shared = TrainedBundles(tmp_path, tmp_path / "manifest.csv")
    shared.check_unchanged()
    (tmp_path / "mri_cnn3d" / "models" / "model.ts").write_bytes(b"an export")
    with pytest.raises(AssertionError, match="a test changed the trained mri_cnn3d"):
        shared.check_unchanged()
