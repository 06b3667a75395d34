"""The three bundles run exactly as a user runs them: `python -m monai.bundle run` train, evaluate, inference."""

from __future__ import annotations

import pandas as pd
import pytest
import torch

from pipeline.engine.metrics import METRICS
from tests.conftest import REPO, TINY_OVERRIDES, cli_overrides, run_cli

pytestmark = pytest.mark.slow  # trains bundles: left out by `make test-fast`

BUNDLES = ["mri_cnn3d", "fmri_lstm", "mri_fmri_fusion"]


def bundle_run(bundle: str, configs: list[str], **overrides) -> None:
    files = "[" + ",".join(f"'{REPO / 'bundles' / bundle / 'configs' / c}'" for c in configs) + "]"
    result = run_cli("-m", "monai.bundle", "run", "--config_file", files, *cli_overrides(overrides))
    assert result.returncode == 0, result.stderr[-3000:]


@pytest.fixture(scope="module", params=BUNDLES)
def trained(request, fold_dir, tmp_path_factory):
    """A bundle trained for 2 epochs on fold 0 of the tiny cohort; returns (bundle, manifest, run folder)."""
    bundle = request.param
    out = tmp_path_factory.mktemp(bundle)
    manifest = fold_dir / "repeat-0_fold-0" / "manifest.csv"
    common = {**TINY_OVERRIDES, "manifest": manifest, "ckpt_dir": out / "ckpt"}
    bundle_run(bundle, ["train.yaml"], output_dir=out / "train", **common)
    return bundle, manifest, out, common


def test_training_saves_best_checkpoint_and_learning_curve(trained):
    bundle, _, out, _ = trained
    state = torch.load(out / "ckpt" / "model.pt", weights_only=True)
    assert any(k.endswith("weight") for k in state)
    log = pd.read_csv(out / "train" / "training_log.csv")
    assert list(log["epoch"]) == [1, 2]
    assert {"train_loss", "val_balanced_accuracy", "val_auc_ovr"} <= set(log.columns)


def test_evaluation_writes_metrics_and_test_predictions(trained):
    bundle, manifest, out, common = trained
    bundle_run(bundle, ["train.yaml", "evaluate.yaml"], output_dir=out / "eval", **common)
    metrics = pd.read_csv(out / "eval" / "metrics.csv", header=None, index_col=0)[1]
    assert set(METRICS) <= set(metrics.index)
    assert all(0 <= metrics[m] <= 1 for m in ("accuracy", "balanced_accuracy", "macro_f1"))
    predictions = pd.read_csv(out / "eval" / "predictions.csv")
    test_rows = pd.read_csv(manifest).query("split == 'test'")
    assert sorted(predictions["subject_id"]) == sorted(test_rows["subject_id"])
    probabilities = predictions[["prob_CN", "prob_MCI", "prob_AD"]].to_numpy()
    assert abs(probabilities.sum(axis=1) - 1).max() < 1e-5


def test_inference_predicts_every_row_without_diagnosis(trained, tmp_path):
    bundle, manifest, out, common = trained
    unlabelled = pd.read_csv(manifest).drop(columns=["diagnosis", "split"])
    unlabelled.to_csv(manifest.parent / "unlabelled.csv", index=False)
    overrides = {k: v for k, v in common.items() if k not in ("epochs", "manifest")}
    bundle_run(
        bundle, ["inference.yaml"], manifest=manifest.parent / "unlabelled.csv", output_dir=tmp_path, **overrides
    )
    predictions = pd.read_csv(tmp_path / "predictions.csv")
    assert list(predictions["subject_id"]) == list(unlabelled["subject_id"])
    assert "diagnosis" not in predictions.columns
    assert set(predictions["predicted"]) <= {"CN", "MCI", "AD"}
