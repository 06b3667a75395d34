"""The checks MONAI's model zoo runs on a contributed bundle: metadata schema, workflow properties, network I/O."""

from __future__ import annotations

import json
import os
from pathlib import Path

import jsonschema
import pytest
import torch
from monai.bundle import ConfigWorkflow, verify_net_in_out

from pipeline import CLASS_NAMES
from pipeline.engine.bundle_parts import BUNDLES
from tests.conftest import REPO, TINY_OVERRIDES, run_cli

FMRI_BUNDLES = {"fmri_lstm": "image", "mri_fmri_fusion": "series"}  # bundle -> data key of the fMRI series
LAYOUT = [
    "configs/metadata.json",
    "configs/train.yaml",
    "configs/evaluate.yaml",
    "configs/inference.yaml",
    "configs/multi_gpu_train.yaml",
    "configs/logging.conf",
    "docs/README.md",
    "LICENSE",
]
REQUIRED_METADATA = [
    "schema",
    "version",
    "changelog",
    "monai_version",
    "pytorch_version",
    "numpy_version",
    "required_packages_version",
    "task",
    "description",
    "authors",
    "copyright",
    "data_type",
    "intended_use",
    "references",
    "network_data_format",
]
# a local copy of the schema the metadata names (not part of the project; CI may not have it)
DEFAULT_SCHEMA = REPO.parent / "shared" / "reference" / "monai" / "meta_schema_20240725.json"
SCHEMA = Path(os.environ.get("NEUROFUSION_BUNDLE_SCHEMA", DEFAULT_SCHEMA))


def configs(bundle: str) -> Path:
    return REPO / "bundles" / bundle / "configs"


def metadata(bundle: str) -> dict:
    return json.loads((configs(bundle) / "metadata.json").read_text())


@pytest.mark.parametrize("bundle", BUNDLES)
def test_bundle_has_the_model_zoo_layout(bundle):
    missing = [name for name in LAYOUT if not (REPO / "bundles" / bundle / name).is_file()]
    assert missing == []


@pytest.mark.parametrize("bundle", BUNDLES)
def test_metadata_validates_against_the_bundle_schema(bundle):
    if not SCHEMA.is_file():
        pytest.skip(f"bundle metadata schema not found at {SCHEMA}; set NEUROFUSION_BUNDLE_SCHEMA to a local copy")
    meta = metadata(bundle)
    assert meta["schema"].endswith("/" + SCHEMA.name)
    jsonschema.validate(meta, json.loads(SCHEMA.read_text()))


@pytest.mark.parametrize("bundle", BUNDLES)
def test_metadata_has_the_required_keys_and_a_changelog_entry_for_its_version(bundle):
    meta = metadata(bundle)
    assert [key for key in REQUIRED_METADATA if not meta.get(key)] == []
    assert meta["version"] in meta["changelog"]
    assert any("Kujur" in ref for ref in meta["references"])
    assert any("MONAI" in ref for ref in meta["references"])


@pytest.mark.parametrize("bundle", BUNDLES)
def test_network_data_format_names_image_input_and_three_class_pred(bundle):
    io = metadata(bundle)["network_data_format"]
    assert next(iter(io["inputs"])) == "image"
    classes = {str(i): name for i, name in enumerate(CLASS_NAMES)}
    assert io["outputs"]["pred"]["num_channels"] == 3
    assert io["outputs"]["pred"]["channel_def"] == classes
    probabilities = io["post_processed_outputs"]["pred"]
    assert (probabilities["type"], probabilities["value_range"], probabilities["channel_def"]) == (
        "probabilities",
        [0, 1],
        classes,
    )


@pytest.mark.parametrize("bundle", sorted(FMRI_BUNDLES))
def test_fmri_input_is_a_named_sequence(bundle):
    series = metadata(bundle)["network_data_format"]["inputs"][FMRI_BUNDLES[bundle]]
    assert (series["type"], series["format"], series["modality"]) == ("series", "sequence", "fMRI")


def test_fused_bundle_takes_the_series_as_its_second_input():
    assert list(metadata("mri_fmri_fusion")["network_data_format"]["inputs"]) == ["image", "series"]


def workflow(bundle: str, files: list[str], workflow_type: str, manifest: Path, tmp_path: Path) -> ConfigWorkflow:
    flow = ConfigWorkflow(
        config_file=[str(configs(bundle) / name) for name in files],
        meta_file=str(configs(bundle) / "metadata.json"),
        logging_file=False,
        workflow_type=workflow_type,
        manifest=str(manifest),
        output_dir=str(tmp_path),
        ckpt_dir=str(tmp_path),
        cache_rate=0.0,
        **TINY_OVERRIDES,
    )
    flow.initialize()
    return flow


@pytest.mark.parametrize("bundle", BUNDLES)
def test_train_workflow_has_every_train_property(bundle, fold_dir, tmp_path):
    flow = workflow(bundle, ["train.yaml"], "train", fold_dir / "repeat-0_fold-0" / "manifest.csv", tmp_path)
    assert flow.check_properties() == []


@pytest.mark.parametrize("bundle", BUNDLES)
def test_inference_workflow_has_every_infer_property(bundle, fold_dir, tmp_path):
    from pipeline.bench.infer import untrained_weights

    untrained_weights(REPO / "bundles" / bundle, tmp_path / "model.pt")  # inference refuses to start without a model
    flow = workflow(bundle, ["inference.yaml"], "infer", fold_dir / "repeat-0_fold-0" / "manifest.csv", tmp_path)
    assert flow.check_properties() == []


@pytest.mark.parametrize("bundle", ["mri_cnn3d", "fmri_lstm"])
def test_verify_net_in_out_passes_for_single_input_bundles(bundle):
    result = run_cli(
        "-m",
        "monai.bundle",
        "verify_net_in_out",
        "network_def",
        "--meta_file",
        str(configs(bundle) / "metadata.json"),
        "--config_file",
        str(configs(bundle) / "inference.yaml"),
        "--device",
        "cpu",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "verified with no error" in result.stdout + result.stderr


def test_verify_net_in_out_passes_for_the_fused_bundle_with_the_series_as_extra_input():
    spec = metadata("mri_fmri_fusion")["network_data_format"]["inputs"]["series"]
    series = torch.rand(1, spec["num_channels"], *spec["spatial_shape"])
    verify_net_in_out(
        net_id="network_def",
        meta_file=str(configs("mri_fmri_fusion") / "metadata.json"),
        config_file=str(configs("mri_fmri_fusion") / "inference.yaml"),
        device="cpu",
        extra_forward_args={"series": series},
    )
