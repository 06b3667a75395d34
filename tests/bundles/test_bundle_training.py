"""Training features of the bundles, run as a user runs them: tracking, progress, resume, early stopping, weights."""

from __future__ import annotations

import shutil

import pandas as pd
import pytest
import torch
from monai.bundle import ConfigWorkflow
from monai.utils import path_to_sqlite_uri

from pipeline.engine import BatchNormRecalibration, class_weights
from pipeline.engine.metrics import METRICS
from tests.conftest import REPO, TINY_OVERRIDES, cli_overrides, run_cli

pytestmark = pytest.mark.slow  # trains bundles: left out by `make test-fast`

CONFIGS = REPO / "bundles" / "fmri_lstm" / "configs"


def train(out, manifest, *args: str, **overrides) -> str:
    """Train the fMRI bundle into ``out`` (eval/, ckpt/) with ``python -m monai.bundle run``; returns its log."""
    overrides = {
        **TINY_OVERRIDES,
        "manifest": manifest,
        "output_dir": out / "eval",
        "ckpt_dir": out / "ckpt",
        **overrides,
    }
    result = run_cli(
        "-m", "monai.bundle", "run", "--config_file", str(CONFIGS / "train.yaml"), *args, *cli_overrides(overrides)
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout + result.stderr


@pytest.fixture(scope="module")
def manifest(fold_dir):
    return fold_dir / "repeat-0_fold-0" / "manifest.csv"


@pytest.fixture(scope="module")
def tracked(manifest, tmp_path_factory):
    """A two-epoch training with MLflow tracking and the progress bar on; returns (run folder, its log)."""
    out = tmp_path_factory.mktemp("tracked")
    return out, train(out, manifest, "--tracking", "mlflow", progress=True)


def test_learning_curve_goes_to_tensorboard(tracked):
    event_accumulator = pytest.importorskip(
        "tensorboard.backend.event_processing.event_accumulator", reason="TensorBoard is an optional extra"
    )
    out, _ = tracked
    events = event_accumulator.EventAccumulator(str(out / "eval" / "tensorboard"))
    events.Reload()
    curve = pd.read_csv(out / "eval" / "training_log.csv")
    logged = [event.value for event in events.Scalars("val_balanced_accuracy")]
    assert [event.step for event in events.Scalars("train_loss")] == [1, 2]
    assert logged == pytest.approx(list(curve["val_balanced_accuracy"]))


@pytest.mark.filterwarnings("ignore:The ``noload`` loader strategy is deprecated")
def test_mlflow_tracking_records_train_loss_and_validation_metrics(tracked):
    mlflow = pytest.importorskip("mlflow", reason="MLflow is an optional extra")
    out, _ = tracked
    client = mlflow.MlflowClient(tracking_uri=path_to_sqlite_uri(str(out / "eval" / "mlruns.db")))
    experiment = client.get_experiment_by_name("monai_experiment")
    (run,) = client.search_runs([experiment.experiment_id])
    assert {"train_loss", *METRICS} <= set(run.data.metrics)
    assert [m.step for m in client.get_metric_history(run.info.run_id, "balanced_accuracy")] == [1, 2]


def test_metrics_saver_writes_the_latest_validation(tracked):
    out, _ = tracked
    saved = pd.read_csv(out / "eval" / "validation" / "metrics.csv", header=None, index_col=0)[1]
    last_epoch = pd.read_csv(out / "eval" / "training_log.csv").iloc[-1]
    assert {m: saved[m] for m in METRICS} == pytest.approx({m: last_epoch[f"val_{m}"] for m in METRICS}, nan_ok=True)


def test_progress_bar_shows_epochs_when_asked(tracked):
    _, log = tracked
    assert "Epoch [2/2]" in log


def test_resume_continues_from_the_last_epoch(tracked, manifest, tmp_path):
    out, _ = tracked
    for part in ("eval", "ckpt"):
        shutil.copytree(out / part, tmp_path / part)
    log = train(tmp_path, manifest, epochs=3)
    assert "Restored all variables from" in log
    curve = pd.read_csv(tmp_path / "eval" / "training_log.csv")
    assert list(curve["epoch"]) == [1, 2, 3]
    pd.testing.assert_frame_equal(curve.iloc[:2], pd.read_csv(out / "eval" / "training_log.csv"))
    trainer = torch.load(tmp_path / "ckpt" / "checkpoint.pt", weights_only=True)["trainer"]
    assert trainer["iteration"] == 3 * trainer["epoch_length"]


def test_resume_state_keeps_the_best_model_record(tracked):
    out, _ = tracked
    record = torch.load(out / "ckpt" / "checkpoint.pt", weights_only=True)["best_model"]["_saved"]
    best = pd.read_csv(out / "eval" / "training_log.csv")["val_balanced_accuracy"].max()
    assert [score for score, _ in record] == pytest.approx([best])


def test_early_stopping_ends_training_when_validation_stops_improving(manifest, tmp_path):
    # learning rate 0: the validation metric never improves after the first epoch
    log = train(tmp_path, manifest, epochs=5, learning_rate=0.0, early_stop_patience=1)
    assert "EarlyStopping: Stop training" in log
    assert list(pd.read_csv(tmp_path / "eval" / "training_log.csv")["epoch"]) == [1, 2]


def test_balanced_class_weights_are_inverse_training_class_frequencies(manifest, tmp_path):
    skewed = pd.read_csv(manifest)
    skewed.loc[(skewed["split"] == "test") & (skewed["diagnosis"] == "CN"), "split"] = "train"  # more CN
    skewed.to_csv(manifest.parent / "skewed.csv", index=False)
    flow = ConfigWorkflow(
        config_file=str(CONFIGS / "train.yaml"),
        logging_file=False,
        workflow_type="train",
        manifest=str(manifest.parent / "skewed.csv"),
        class_weights="balanced",
        output_dir=str(tmp_path),
        ckpt_dir=str(tmp_path),
        cache_rate=0.0,
    )
    flow.initialize()
    counts = skewed.query("split == 'train'")["diagnosis"].value_counts()
    assert counts["CN"] > counts["AD"]
    expected = [counts.sum() / (3 * counts[name]) for name in ("CN", "MCI", "AD")]
    assert flow.parser.get_parsed_content("loss").weight.tolist() == pytest.approx(expected)


def test_class_weights_refuse_an_unknown_scheme():
    with pytest.raises(ValueError, match="class_weights must be null, 'balanced' or 3 numbers"):
        class_weights("inverse", [{"label": 0}])


def test_balanced_class_weights_refuse_a_class_without_training_rows():
    with pytest.raises(ValueError, match="no training rows of class AD"):
        class_weights("balanced", [{"label": 0}, {"label": 1}])


def _bn_trainer(net: torch.nn.Module, batches: list[torch.Tensor]):
    from monai.engines import SupervisedEvaluator, SupervisedTrainer

    data = [{"image": x, "label": torch.zeros(len(x), dtype=torch.long)} for x in batches]
    trainer = SupervisedTrainer(
        device=torch.device("cpu"),
        max_epochs=1,
        train_data_loader=data,
        network=net,
        optimizer=torch.optim.SGD(net.parameters(), lr=0.0),
        loss_function=torch.nn.CrossEntropyLoss(),
    )
    evaluator = SupervisedEvaluator(device=torch.device("cpu"), val_data_loader=data[:1], network=net)
    return trainer, evaluator


def test_batch_norm_recalibration_sets_running_statistics_to_the_training_average():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.BatchNorm1d(2), torch.nn.Linear(2, 3))
    batches = [torch.randn(4, 2) * 3 + 5, torch.randn(4, 2) - 2]
    trainer, evaluator = _bn_trainer(net, batches)
    BatchNormRecalibration(evaluator).attach(trainer)
    net[0].running_mean.fill_(100.0)  # stale statistics, far from the data
    evaluator.run()
    expected = torch.stack([b.mean(dim=0) for b in batches]).mean(dim=0)
    assert torch.allclose(net[0].running_mean, expected, atol=1e-5)
    assert net[0].momentum == 0.1  # restored after the pass


def test_batch_norm_recalibration_reads_at_most_max_batches():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.BatchNorm1d(2), torch.nn.Linear(2, 3))
    batches = [torch.randn(4, 2) * 3 + 5, torch.randn(4, 2) - 2]
    trainer, evaluator = _bn_trainer(net, batches)
    BatchNormRecalibration(evaluator, max_batches=1).attach(trainer)
    evaluator.run()
    assert torch.allclose(net[0].running_mean, batches[0].mean(dim=0), atol=1e-5)


def test_batch_norm_recalibration_leaves_frozen_layers_alone():
    net = torch.nn.Sequential(torch.nn.BatchNorm1d(2), torch.nn.Linear(2, 3))
    for parameter in net[0].parameters():
        parameter.requires_grad_(False)
    net[0].running_mean.fill_(7.0)
    trainer, evaluator = _bn_trainer(net, [torch.randn(4, 2)])
    BatchNormRecalibration(evaluator).attach(trainer)
    evaluator.run()
    assert torch.equal(net[0].running_mean, torch.full((2,), 7.0))


def _cnn_workflow(tmp_path, manifest, **overrides) -> ConfigWorkflow:
    keys = {**TINY_OVERRIDES, "manifest": str(manifest), "output_dir": str(tmp_path), "ckpt_dir": str(tmp_path)}
    return ConfigWorkflow(
        config_file=str(REPO / "bundles" / "mri_cnn3d" / "configs" / "train.yaml"),
        logging_file=False,
        workflow_type="train",
        **{**keys, **overrides},
    )


def test_compile_trains_the_torch_compiled_network_and_saves_the_plain_weights(manifest, tmp_path):
    from torch._dynamo.eval_frame import OptimizedModule

    from pipeline.networks import MRIClassifier

    default = _cnn_workflow(tmp_path / "default", manifest, cache_rate=0.0)
    default.initialize()
    assert not isinstance(default.parser.get_parsed_content("train#trainer").network, OptimizedModule)
    flow = _cnn_workflow(tmp_path / "compiled", manifest, compile=True, epochs=1)
    flow.initialize()
    assert isinstance(flow.parser.get_parsed_content("train#trainer").network, OptimizedModule)
    flow.run()
    state = torch.load(tmp_path / "compiled" / "model.pt", weights_only=True)
    assert set(state) == set(MRIClassifier().state_dict())  # no torch.compile prefix: evaluation loads it as is
    assert list(pd.read_csv(tmp_path / "compiled" / "training_log.csv")["epoch"]) == [1]


def test_compile_refuses_a_value_that_is_not_a_switch(manifest, tmp_path):
    flow = _cnn_workflow(tmp_path, manifest, compile="inductor", cache_rate=0.0)
    with pytest.raises(RuntimeError) as refusal:  # MONAI's error on the initialize expression, caused by the refusal
        flow.initialize()
    assert str(refusal.value.__cause__) == "bundle key 'compile' must be true or false, got 'inductor'"
