"""Export of trained bundles: TorchScript with MONAI's ckpt_export, ONNX with neurofusion export; same outputs."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from pipeline.cli import main
from pipeline.engine.bundle_parts import BUNDLES
from pipeline.inference.export import ExportMismatch, check_onnx, example_inputs, load_network
from tests.conftest import REPO, run_cli

pytestmark = pytest.mark.slow  # trains bundles: left out by `make test-fast`

onnxruntime = pytest.importorskip("onnxruntime", reason="ONNX checks need the optional extra neurofusion[export]")


@pytest.fixture(scope="module", params=BUNDLES)
def bundle_dir(request, trained_bundles, tmp_path_factory):
    """A copy of a trained bundle (tests/conftest.py), into whose ``models/`` the exports are written."""
    bundle = tmp_path_factory.mktemp("export") / request.param
    shutil.copytree(trained_bundles[request.param], bundle)
    return bundle


@pytest.fixture(scope="module")
def torchscript(bundle_dir):
    """``models/model.ts`` written by ``python -m monai.bundle ckpt_export`` run in the bundle folder."""
    result = run_cli(
        "-m",
        "monai.bundle",
        "ckpt_export",
        "network_def",
        "--filepath",
        "models/model.ts",
        "--ckpt_file",
        "models/model.pt",
        "--meta_file",
        "configs/metadata.json",
        "--config_file",
        "configs/inference.yaml",
        cwd=bundle_dir,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return bundle_dir / "models" / "model.ts"


@pytest.fixture(scope="module")
def onnx_file(bundle_dir):
    """``models/model.onnx`` written by ``neurofusion export`` (which fails unless onnxruntime agrees)."""
    assert main(["export", str(bundle_dir)]) == 0
    return bundle_dir / "models" / "model.onnx"


def test_torchscript_export_gives_the_eager_outputs(torchscript, bundle_dir):
    network, meta = load_network(bundle_dir)
    inputs = example_inputs(meta, batch_size=3, seed=7)
    scripted = torch.jit.load(str(torchscript))
    with torch.no_grad():
        torch.testing.assert_close(scripted(*inputs.values()), network(*inputs.values()))


def test_torchscript_export_carries_the_bundle_metadata(torchscript, bundle_dir):
    extra = {"metadata.json": ""}
    torch.jit.load(str(torchscript), _extra_files=extra)
    version = json.loads((bundle_dir / "configs" / "metadata.json").read_text())["version"]
    assert json.loads(extra["metadata.json"])["version"] == version


def test_onnx_export_gives_the_eager_outputs_under_onnxruntime(onnx_file, bundle_dir):
    network, meta = load_network(bundle_dir)
    inputs = example_inputs(meta, batch_size=4, seed=7)
    session = onnxruntime.InferenceSession(str(onnx_file), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == list(meta["network_data_format"]["inputs"])
    (exported,) = session.run(None, {name: tensor.numpy() for name, tensor in inputs.items()})
    with torch.no_grad():
        np.testing.assert_allclose(exported, network(*inputs.values()).numpy(), rtol=1e-4, atol=1e-4)


def test_onnx_check_fails_when_the_export_differs_from_the_network(onnx_file, bundle_dir):
    network, meta = load_network(bundle_dir)
    with torch.no_grad():
        for parameter in network.parameters():
            parameter.add_(0.5)
    with pytest.raises(ExportMismatch, match="differs from the eager network"):
        check_onnx(onnx_file, network, meta)


def test_export_without_a_checkpoint_is_one_clear_error(tmp_path, capsys):
    shutil.copytree(REPO / "bundles" / "mri_cnn3d" / "configs", tmp_path / "configs")
    assert main(["export", str(tmp_path)]) == 1
    assert capsys.readouterr().err.strip().splitlines() == [
        f"neurofusion export: error: {tmp_path / 'models' / 'model.pt'}: no checkpoint; "
        "train the bundle first or give --ckpt-file"
    ]
