"""Transfer of the MRI encoder: the loader and bundle keys, and a study that pretrains on one cohort for another."""

from __future__ import annotations

import json
import logging
import re

import pandas as pd
import pytest
import torch
import yaml
from monai.engines import SupervisedTrainer

from pipeline.cli import main
from pipeline.data.manifest import read_manifest, write_manifest
from pipeline.engine import check_bundle_keys
from pipeline.errors import BundleKeyError
from pipeline.networks import EncoderWeightsError, FMRIClassifier, FusionClassifier, MRIClassifier, load_mri_encoder
from pipeline.study import report, runner, transfer
from pipeline.study.spec import StudyError, load_study
from tests.conftest import REPO, TINY_OVERRIDES, cli_overrides, run_cli

pytestmark = pytest.mark.slow  # trains bundles: left out by `make test-fast`

# T1s taken as they are: the mechanics of transfer do not need the registration, and a study registers anew
STUDY_OVERRIDES = {**TINY_OVERRIDES, "mri_registration": "none"}


def _encoder(state: dict, prefix: str) -> dict:
    return {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture(scope="module")
def source_weights(tmp_path_factory):
    """A ``model.pt`` of an MRIClassifier whose encoder differs from a fresh one (weights and batch-norm stats)."""
    torch.manual_seed(1)
    network = MRIClassifier()
    for name, buffer in network.named_buffers():
        if "running_mean" in name:
            buffer.uniform_(-1, 1)
    path = tmp_path_factory.mktemp("source") / "model.pt"
    torch.save(network.state_dict(), path)
    return path


@pytest.mark.parametrize(("target", "prefix"), [(MRIClassifier, "encoder."), (FusionClassifier, "mri_encoder.")])
def test_loaded_encoder_equals_the_source_encoder(source_weights, target, prefix):
    source = _encoder(torch.load(source_weights, weights_only=True), "encoder.")
    network = target()
    assert not _same(_encoder(network.state_dict(), prefix), source)
    load_mri_encoder(network, source_weights)
    assert _same(_encoder(network.state_dict(), prefix), source)


def test_a_fusion_checkpoint_loads_into_the_3d_cnn(tmp_path):
    fused = FusionClassifier()
    torch.save(fused.state_dict(), tmp_path / "model.pt")
    network = load_mri_encoder(MRIClassifier(), tmp_path / "model.pt")
    assert _same(network.encoder.state_dict(), fused.mri_encoder.state_dict())


def _train_one_epoch(network: torch.nn.Module) -> None:
    generator = torch.Generator().manual_seed(0)
    data = [
        {"image": torch.rand(1, 24, 28, 24, generator=generator) * 3 + 2, "label": torch.tensor(i % 3)}
        for i in range(8)
    ]
    trainer = SupervisedTrainer(
        device=torch.device("cpu"),
        max_epochs=1,
        train_data_loader=torch.utils.data.DataLoader(data, batch_size=4),
        network=network,
        optimizer=torch.optim.AdamW(network.parameters(), lr=0.01),
        loss_function=torch.nn.CrossEntropyLoss(),
    )
    trainer.run()


@pytest.mark.parametrize("freeze", [True, False])
def test_a_frozen_encoder_is_unchanged_by_a_training_epoch(source_weights, freeze):
    network = load_mri_encoder(MRIClassifier(), source_weights, freeze=freeze)
    encoder, head = ({k: v.clone() for k, v in part.state_dict().items()} for part in (network.encoder, network.head))
    _train_one_epoch(network)
    assert _same(network.encoder.state_dict(), encoder) is freeze  # batch-norm running statistics included
    assert not _same(network.head.state_dict(), head)  # the rest of the network trained


def _one_line(error: pytest.ExceptionInfo) -> str:
    message = str(error.value)
    assert "\n" not in message
    return message


def test_loader_refuses_an_encoder_of_another_shape_naming_the_key_and_shapes(tmp_path):
    torch.save(MRIClassifier(channels=(4, 8, 16, 32)).state_dict(), tmp_path / "model.pt")
    with pytest.raises(EncoderWeightsError) as error:
        load_mri_encoder(MRIClassifier(), tmp_path / "model.pt")
    message = _one_line(error)
    assert str(tmp_path / "model.pt") in message
    assert "'features.0.conv.weight'" in message and "[4, 1, 3, 3, 3]" in message and "[8, 1, 3, 3, 3]" in message


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (None, "no such file"),
        (b"not a checkpoint", "not a PyTorch checkpoint"),
        ("fmri", "holds no MRI encoder"),
    ],
)
def test_loader_refuses_what_is_not_an_mri_checkpoint_in_one_line(tmp_path, content, expected):
    path = tmp_path / "model.pt"
    if content == "fmri":
        torch.save(FMRIClassifier().state_dict(), path)
    elif content is not None:
        path.write_bytes(content)
    with pytest.raises(EncoderWeightsError) as error:
        load_mri_encoder(MRIClassifier(), path)
    assert expected in _one_line(error) and str(path) in str(error.value)


def test_freeze_without_weights_is_refused():
    with pytest.raises(EncoderWeightsError, match="mri_encoder_freeze: true needs mri_encoder_weights"):
        load_mri_encoder(MRIClassifier(), None, freeze=True)


def test_bundle_keys_refuse_a_missing_encoder_checkpoint(tmp_path, source_weights):
    check_bundle_keys(mri_encoder_weights=str(source_weights), mri_encoder_freeze="true")
    check_bundle_keys(mri_encoder_weights=None, mri_encoder_freeze=False)
    with pytest.raises(BundleKeyError, match="bundle key 'mri_encoder_weights' must be null or an existing model.pt"):
        check_bundle_keys(mri_encoder_weights=str(tmp_path / "missing.pt"))


def test_bundle_run_starts_from_the_weights_and_keeps_a_frozen_encoder(fold_dir, source_weights, tmp_path):
    """``python -m monai.bundle run`` of the fused bundle with ``--mri_encoder_weights`` of a 3D CNN, frozen."""
    overrides = {
        **STUDY_OVERRIDES,
        "epochs": 1,
        "manifest": fold_dir / "repeat-0_fold-0" / "manifest.csv",
        "output_dir": tmp_path / "eval",
        "ckpt_dir": tmp_path / "ckpt",
        "mri_encoder_weights": source_weights,
        "mri_encoder_freeze": True,
    }
    config = REPO / "bundles" / "mri_fmri_fusion" / "configs" / "train.yaml"
    result = run_cli("-m", "monai.bundle", "run", "--config_file", str(config), *cli_overrides(overrides))
    assert result.returncode == 0, result.stderr[-3000:]
    trained = torch.load(tmp_path / "ckpt" / "model.pt", weights_only=True)
    assert _same(_encoder(trained, "mri_encoder."), _encoder(torch.load(source_weights, weights_only=True), "encoder."))


# --- a study with transfer ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def source_manifest(tmp_path_factory):
    """Six MRI-only subjects (2 CN / 2 MCI / 2 AD), none of them in the tiny cohort's paired manifest."""
    from pipeline.synth import write_cohort

    return write_cohort(
        tmp_path_factory.mktemp("source") / "bids", n_cn=0, n_mci=0, n_ad=0, n_mri_only=6, seed=1, profile="tiny",
        progress=False,
    )  # fmt: skip


def _study(folder, target, source, **transfer_entry) -> str:
    study = {
        "name": "transfer",
        "cohorts": {
            "paired": {"manifest": str(target), "models": ["mri_cnn3d"]},
            "source": {"manifest": str(source), "models": []},
        },
        "models": ["mri_cnn3d"],
        "cv": {"folds": 2, "repeats": 1, "seed": 0, "val_fraction": 0.34},
        "transfer": {"paired": {"from": "source", "modes": ["none", "frozen"], **transfer_entry}},
        "overrides": STUDY_OVERRIDES,
    }
    path = folder / "study.yaml"
    path.write_text(yaml.safe_dump(study))
    return str(path)


def _experiment(study: str, out) -> int:
    return main(["experiment", study, "--out", str(out), "--quiet", "--bootstrap", "20"])


@pytest.fixture(scope="module")
def transfer_run(tiny_cohort, source_manifest, tmp_path_factory):
    folder = tmp_path_factory.mktemp("transfer")
    study = _study(folder, tiny_cohort / "manifest_paired.csv", source_manifest)
    assert _experiment(study, folder / "run") == 0
    return study, folder / "run"


def test_study_pretrains_the_source_once_before_the_target_jobs(transfer_run):
    _, out = transfer_run
    assert [p.name for p in (out / "pretrain").iterdir()] == ["source_mri_cnn3d"]  # no shard's folder left over
    done = json.loads((out / "pretrain" / "source_mri_cnn3d" / "done.json").read_text())
    assert (done["n_train"], done["n_val"], done["excluded_subjects"]) == (3, 3, [])
    pretrain_manifest = pd.read_csv(out / "pretrain" / "source_mri_cnn3d" / "manifest.csv")
    assert sorted(pretrain_manifest["split"]) == ["train"] * 3 + ["val"] * 3


def test_target_jobs_record_the_source_and_start_from_its_encoder(transfer_run):
    _, out = transfer_run
    results = pd.read_csv(out / "results.csv", keep_default_na=False)
    assert sorted(zip(results["transfer"], results["transfer_from"])) == [("frozen", "source")] * 2 + [("none", "")] * 2
    pretrained = _encoder(torch.load(out / "pretrain" / "source_mri_cnn3d" / "ckpt" / "model.pt"), "encoder.")
    for job in out.glob("folds/paired/*/mri_cnn3d_aug-off_transfer-frozen_seed-0"):
        assert _same(_encoder(torch.load(job / "ckpt" / "model.pt"), "encoder."), pretrained)
    for job in out.glob("folds/paired/*/mri_cnn3d_aug-off_seed-0"):
        assert not _same(_encoder(torch.load(job / "ckpt" / "model.pt"), "encoder."), pretrained)


def test_transfer_is_a_dimension_of_summary_comparisons_and_report(transfer_run):
    _, out = transfer_run
    summary = pd.read_csv(out / "summary.csv", keep_default_na=False)
    assert sorted(zip(summary["model"], summary["transfer"], summary["transfer_from"])) == [
        ("mri_cnn3d", "frozen", "source"),
        ("mri_cnn3d", "none", ""),
    ]
    comparisons = pd.read_csv(out / "comparisons.csv")
    primary = comparisons[(comparisons["kind"] == "transfer") & (comparisons["metric"] == "balanced_accuracy")]
    assert list(primary["comparison"]) == ["mri_cnn3d: transfer frozen vs none (augmentation off)"]
    assert (primary["n_splits"] == 2).all()
    markdown = (out / "report.md").read_text()
    assert "## Transfer" in markdown
    assert (
        "Cohort paired: mri_cnn3d started from the MRI encoder of mri_cnn3d pretrained on all of cohort source"
        in markdown
    )
    assert re.search(r"\| paired +\| mri_cnn3d \[transfer frozen\] +\|", markdown)  # a row of the summary table


def test_resumed_study_does_not_pretrain_again(transfer_run):
    study, out = transfer_run
    done = out / "pretrain" / "source_mri_cnn3d" / "done.json"
    before = done.stat().st_mtime_ns
    assert _experiment(study, out) == 0
    assert done.stat().st_mtime_ns == before


def test_pretraining_in_the_workers_beside_the_fold_jobs_gives_the_sequential_results(transfer_run, tmp_path):
    study, sequential = transfer_run  # one job at a time, one thread (the suite's processes see one core)
    out = tmp_path / "run"
    assert main(["experiment", study, "--out", str(out), "--quiet", "--bootstrap", "20", "--jobs", "2",
                 "--threads-per-job", "1"]) == 0  # fmt: skip
    columns = ["cohort", "model", "transfer", "fold", "balanced_accuracy", "auc_ovr"]
    results = [pd.read_csv(run / "results.csv").sort_values(columns[:4])[columns] for run in (sequential, out)]
    pd.testing.assert_frame_equal(*(frame.reset_index(drop=True) for frame in results))
    pretrained = _encoder(torch.load(out / "pretrain" / "source_mri_cnn3d" / "ckpt" / "model.pt"), "encoder.")
    for job in out.glob("folds/paired/*/mri_cnn3d_aug-off_transfer-frozen_seed-0"):
        assert _same(_encoder(torch.load(job / "ckpt" / "model.pt"), "encoder."), pretrained)


def _with_shared_subjects(tiny_cohort, source_manifest, folder):
    """The source manifest plus the target's sub-001 under another case and sub-002's T1 under a new ID."""
    paired = read_manifest(tiny_cohort / "manifest_paired.csv")
    source = read_manifest(source_manifest)
    extra = paired[paired["subject_id"].isin(["sub-001", "sub-002"])].assign(fmri="")
    extra["subject_id"] = ["SUB-001", "sub-x02"]
    path = folder / "source_shared.csv"
    write_manifest(pd.concat([source, extra], ignore_index=True), path)
    return path


def test_shared_subjects_are_refused_naming_them_before_the_run_folder_exists(tiny_cohort, source_manifest, tmp_path):
    shared = _with_shared_subjects(tiny_cohort, source_manifest, tmp_path)
    study = load_study(_study(tmp_path, tiny_cohort / "manifest_paired.csv", shared))
    with pytest.raises(StudyError) as error:
        runner.run_study(study, tmp_path / "run", progress=False)
    message = str(error.value)
    assert "\n" not in message and "transfer.paired: 2 subject(s) of cohort paired are in cohort source" in message
    assert "sub-001 (as SUB-001)" in message and "sub-002 (same image" in message and "as sub-x02" in message
    assert "exclude_shared: true" in message
    assert not (tmp_path / "run").exists()


def test_exclude_shared_leaves_them_out_of_the_pretraining(tiny_cohort, source_manifest, tmp_path):
    shared = _with_shared_subjects(tiny_cohort, source_manifest, tmp_path)
    study = load_study(_study(tmp_path, tiny_cohort / "manifest_paired.csv", shared, exclude_shared=True))
    plan = transfer.plan_transfer(study)
    job = transfer.PretrainJob("source", "mri_cnn3d")
    assert plan.excluded[job] == ["SUB-001", "sub-x02"]
    assert len(plan.manifests[job]) == 6 and not {"SUB-001", "sub-x02"} & set(plan.manifests[job]["subject_id"])
    assert set(plan.shared["action"]) == {"excluded from pretraining"} and plan.warnings == []


def test_a_subject_in_two_cohorts_without_transfer_is_warned_in_log_and_report(tiny_cohort, tmp_path, caplog):
    study = {
        "name": "overlap",
        "cohorts": {
            "paired": str(tiny_cohort / "manifest_paired.csv"),
            "everyone": str(tiny_cohort / "manifest.csv"),  # the paired subjects and three MRI-only ones
        },
        "models": ["mri_cnn3d"],
        "cv": {"folds": 2},
    }
    (tmp_path / "study.yaml").write_text(yaml.safe_dump(study))
    plan = transfer.plan_transfer(load_study(tmp_path / "study.yaml"))
    with caplog.at_level(logging.WARNING, logger="pipeline.study.transfer"):
        transfer.write_records(plan, tmp_path)
    assert "share 12 subject(s), counted in both: sub-001, sub-002" in caplog.text
    assert "paired" in caplog.text and "everyone" in caplog.text
    warnings = report._shared_warnings(tmp_path)
    assert len(warnings) == 1 and "share 12 subject(s)" in warnings[0] and "and 2 more" in warnings[0]


def test_target_models_must_read_the_input_the_encoder_learned_from(tiny_cohort, source_manifest, tmp_path):
    path = _study(tmp_path, tiny_cohort / "manifest_paired.csv", source_manifest)
    raw = yaml.safe_load(open(path))
    raw["cohorts"]["paired"]["overrides"] = {"mri_pixdim": [4.0, 4.0, 4.0]}
    (tmp_path / "study.yaml").write_text(yaml.safe_dump(raw))
    with pytest.raises(StudyError) as error:
        runner.run_study(load_study(tmp_path / "study.yaml"), tmp_path / "run", progress=False)
    message = str(error.value)
    assert (
        "transfer.paired: mri_cnn3d on cohort paired reads mri_pixdim [4.0, 4.0, 4.0], the encoder pretrained"
        in message
    )
    assert "cohort source [6.0, 6.0, 6.0]" in message and not (tmp_path / "run").exists()


def test_a_shard_finishing_second_drops_its_copy_of_the_encoder(tmp_path):
    final, late = tmp_path / "pretrain" / "source_mri_cnn3d", tmp_path / "pretrain" / ".source_mri_cnn3d.shard-1-of-2"
    for folder, text in ((final, "first"), (late, "second")):
        (folder / "ckpt").mkdir(parents=True)
        (folder / "ckpt" / "model.pt").write_text(text)
        (folder / "done.json").write_text("{}")
    transfer._publish(late, final)
    assert (final / "ckpt" / "model.pt").read_text() == "first" and not late.exists()


@pytest.mark.parametrize(
    ("entry", "expected"),
    [
        ({"from": "paired"}, "transfer.paired.from: must name another cohort of the study"),
        ({"from": "source", "modes": ["thawed"]}, "transfer.paired.modes: each item must be one of none, finetune"),
        ({"from": "source", "model": "fmri_lstm"}, "transfer.paired.model: fmri_lstm has no MRI encoder"),
        ({"from": "source", "freeze": True}, "transfer.paired: unknown key(s) freeze"),
        ({"from": "source", "exclude_shared": "yes"}, "transfer.paired.exclude_shared: must be true or false"),
    ],
)
def test_transfer_key_errors_name_file_and_key(tiny_cohort, source_manifest, tmp_path, entry, expected):
    path = _study(tmp_path, tiny_cohort / "manifest_paired.csv", source_manifest)
    raw = yaml.safe_load(open(path))
    raw["transfer"]["paired"] = entry
    (tmp_path / "study.yaml").write_text(yaml.safe_dump(raw))
    with pytest.raises(StudyError, match=re.escape(f"{tmp_path / 'study.yaml'}: {expected}")):
        load_study(tmp_path / "study.yaml")
