"""The parts the three bundles share agree: ``python tools/bundles.py --check`` finds drift, ``--write`` repairs it."""

from __future__ import annotations

import importlib.util
import re
import shutil
import subprocess

import pytest
import yaml

from pipeline.engine.bundle_parts import BUNDLES
from pipeline.engine.keys import BUNDLE_KEY_TYPES
from tests.conftest import REPO, run_cli

TOOL = REPO / "tools" / "bundles.py"


@pytest.fixture()
def bundles_tool(capsys):
    """``tools/bundles.py`` run in this process (each run of the script would import torch and MONAI anew)."""
    spec = importlib.util.spec_from_file_location("bundles_tool", TOOL)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)

    def run(*args: str) -> subprocess.CompletedProcess:
        status = module.main(list(args))
        out, err = capsys.readouterr()
        return subprocess.CompletedProcess(args, status, out, err)

    return run


def test_the_three_bundles_share_their_parts():
    result = run_cli(str(TOOL), "--check")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "18 shared parts: none drifted" in result.stderr


@pytest.mark.parametrize("config", ["train", "inference"])
@pytest.mark.parametrize("bundle", BUNDLES)
def test_every_declared_key_a_config_defines_is_checked(bundle, config):
    text = (REPO / "bundles" / bundle / "configs" / f"{config}.yaml").read_text()
    checked = re.findall(r"(\w+)=@", re.search(r"check_bundle_keys\(([^)]*)\)", text).group(1))
    assert checked == [key for key in BUNDLE_KEY_TYPES if key in yaml.safe_load(text)]


# (file, text, its replacement): one drift of each shared part
DRIFTS = {
    "shared key": ("fmri_lstm/configs/train.yaml", "\nseed: 0\n", "\nseed: 1\n"),
    "inference key": ("mri_cnn3d/configs/inference.yaml", "\ncache_rate: 0.0\n", "\ncache_rate: 0.5\n"),
    "evaluate default": ("mri_cnn3d/configs/evaluate.yaml", "'mri_registration', 'affine'", "'mri_registration', 0"),
    "key check": ("fmri_lstm/configs/inference.yaml", "seed=@seed, ", ""),
    "multi-GPU": ("fmri_lstm/configs/multi_gpu_train.yaml", "shuffle: true", "shuffle: false"),
    "logging": ("mri_cnn3d/configs/logging.conf", "level=INFO", "level=DEBUG"),
    "licence": ("fmri_lstm/LICENSE", "Apache", "MIT"),
}


@pytest.mark.parametrize("drift", DRIFTS)
def test_a_drifted_copy_is_named_and_rewritten(drift, tmp_path, bundles_tool):
    bundles = tmp_path / "bundles"
    shutil.copytree(REPO / "bundles", bundles, ignore=shutil.ignore_patterns("models", "docs", "experiments"))
    name, old, new = DRIFTS[drift]
    path = bundles / name
    assert old in path.read_text()
    path.write_text(path.read_text().replace(old, new, 1))
    result = bundles_tool("--check", "--bundles", str(bundles))
    assert result.returncode == 1 and result.stdout.startswith(f"{path}:"), result.stdout + result.stderr
    assert bundles_tool("--write", "--bundles", str(bundles)).stdout == f"rewrote {path}\n"
    assert path.read_text() == (REPO / "bundles" / name).read_text()
    assert bundles_tool("--check", "--bundles", str(bundles)).returncode == 0


def test_a_changed_default_in_the_fused_bundle_reaches_every_copy(tmp_path, bundles_tool):
    bundles = tmp_path / "bundles"
    shutil.copytree(REPO / "bundles", bundles, ignore=shutil.ignore_patterns("models", "docs", "experiments"))
    train = bundles / "mri_fmri_fusion" / "configs" / "train.yaml"
    train.write_text(train.read_text().replace("\nfmri_timepoints: 96\n", "\nfmri_timepoints: 64\n", 1))
    rewritten = bundles_tool("--write", "--bundles", str(bundles)).stdout.split()
    assert {str(bundles / b / "configs" / "train.yaml") for b in ("mri_cnn3d", "fmri_lstm")} <= set(rewritten)
    for bundle in ("fmri_lstm", "mri_fmri_fusion"):
        configs = bundles / bundle / "configs"
        assert "'fmri_timepoints', 64)" in (configs / "evaluate.yaml").read_text()
        assert "'fmri_timepoints', 64)" in (configs / "inference.yaml").read_text()
    assert "\nfmri_timepoints: 64\n" in (bundles / "mri_cnn3d" / "configs" / "inference.yaml").read_text()


def test_a_shared_key_the_fused_bundle_lacks_is_refused(tmp_path, bundles_tool):
    bundles = tmp_path / "bundles"
    shutil.copytree(REPO / "bundles", bundles, ignore=shutil.ignore_patterns("models", "docs", "experiments"))
    train = bundles / "fmri_lstm" / "configs" / "train.yaml"
    train.write_text(train.read_text().replace("\nseed: 0\n", "\nseed: 0\nmystery: 1\n", 1))
    result = bundles_tool("--check", "--bundles", str(bundles))
    assert result.returncode == 1
    assert result.stderr.strip() == f"error: {train}: shared keys not in mri_fmri_fusion's: ['mystery']"
