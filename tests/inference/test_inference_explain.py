"""Explanations: on a synthetic subject whose disease is temporal atrophy, the saliency map points at the atrophy."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
import torch

from pipeline.bench.infer import untrained_weights
from pipeline.bench.twins import GRID, QC_LIMITS, atrophy_masses, train_on_twins
from pipeline.cli import main
from pipeline.data.atlas import load_atlas
from pipeline.inference import InferenceBundle, Predictor, Subject, explain

pytestmark = pytest.mark.slow  # trains bundles: left out by `make test-fast`

QC = [f"--set=qc#mri#voxel_mm={QC_LIMITS['qc#mri#voxel_mm']}".replace(" ", "")]


@pytest.fixture(scope="module")
def explained(tmp_path_factory):
    """The MRI bundle trained on atrophy twins, then `neurofusion predict` on the held-out atrophied twin;
    returns (T1 path, output folder)."""
    data = tmp_path_factory.mktemp("twins")
    bundle = train_on_twins(data, tmp_path_factory.mktemp("bundle") / "mri_cnn3d")
    t1 = data / "sub-00ad_T1w.nii.gz"
    out = tmp_path_factory.mktemp("predicted")
    grid = [f"--set={key}={json.dumps(value)}".replace(" ", "") for key, value in GRID.items()]
    assert main(["predict", "--bundle", str(bundle), "--mri", str(t1), "--out", str(out), *grid, *QC]) == 0
    return t1, out / "sub-00ad", bundle


def atrophy_criterion(saliency: np.ndarray, reference: nib.Nifti1Image) -> tuple[float, float]:
    """(saliency mass in the atrophied regions, 90th percentile of its mass in 20 random brain regions of the same
    size)."""
    atrophied, random = atrophy_masses(saliency, reference)
    return atrophied, float(np.percentile(random, 90))


def test_saliency_mass_falls_in_the_atrophied_regions_more_than_in_random_regions_of_the_same_size(explained):
    t1, folder, _ = explained
    prediction = json.loads((folder / "prediction.json").read_text())
    assert prediction["predicted_class"] == "AD"
    saliency = np.asarray(nib.load(folder / "saliency.nii.gz").dataobj)
    atrophied, random = atrophy_criterion(saliency, nib.load(t1))
    assert atrophied > random


def test_the_saliency_of_the_untrained_network_fails_the_same_criterion(explained, tmp_path):
    """The criterion measures what training learnt, not where the architecture or the anatomy puts gradient."""
    t1, _, bundle = explained
    torch.manual_seed(0)
    untrained_weights(bundle, tmp_path / "untrained.pt")
    predictor = Predictor(InferenceBundle(bundle, tmp_path / "untrained.pt", {**GRID, **QC_LIMITS}))
    predictor.predict(Subject("untrained", t1), tmp_path / "untrained")
    saliency = np.asarray(nib.load(tmp_path / "untrained" / "saliency.nii.gz").dataobj)
    atrophied, random = atrophy_criterion(saliency, nib.load(t1))
    assert atrophied <= random


def test_gradcam_reads_the_last_convolution_block_of_the_mri_encoder_of_either_network():
    from pipeline.networks import FusionClassifier, MRIClassifier

    torch.manual_seed(0)
    network, series, images = FusionClassifier(n_rois=4).eval(), torch.randn(4, 8), torch.randn(2, 1, 16, 16, 16)
    fused = explain.image_classifier(network, series)
    assert explain.last_convolution_block(MRIClassifier())[0] == "encoder.features.3"
    assert explain.last_convolution_block(fused)[0] == "network.mri_encoder.features.3"
    with torch.no_grad():  # the fused network's MRI classifier is the network given the subject's series
        torch.testing.assert_close(fused(images), network(images, series.expand(2, -1, -1)))


@pytest.mark.parametrize("method", list(explain.SALIENCY_METHODS))
def test_an_explanation_leaves_the_network_as_it_found_it(method):
    """MONAI's explainers register hooks they keep no handle to and switch the network's mode: none of it stays."""
    from pipeline.networks import FusionClassifier

    torch.manual_seed(0)
    network = FusionClassifier(n_rois=4).eval()
    before = {k: v.clone() for k, v in network.state_dict().items()}
    saliency = explain.mri_saliency(network, torch.randn(1, 16, 16, 16), 1, torch.randn(4, 8), method)
    assert saliency.shape == (16, 16, 16) and 0 <= float(saliency.min()) and float(saliency.max()) <= 1
    assert not any(m._forward_hooks or m._backward_hooks for m in network.modules())
    assert not network.training and all(p.requires_grad for p in network.parameters())
    assert all(torch.equal(before[k], v) for k, v in network.state_dict().items())


def test_an_unknown_saliency_method_is_refused_naming_the_key_and_the_methods():
    from pipeline.networks import MRIClassifier

    with pytest.raises(ValueError, match="'saliency_method' must be one of vanilla_grad, gradcam, occlusion"):
        explain.mri_saliency(MRIClassifier().eval(), torch.zeros(1, 16, 16, 16), 0, method="smoothgrad")


def test_roi_occlusion_ranks_first_the_only_roi_a_classifier_reads():
    names = load_atlas("AAL").names
    hippocampus = names.index("Hippocampus_L")
    torch.manual_seed(0)
    series = torch.randn(len(names), 32)

    def classify(batch: torch.Tensor) -> torch.Tensor:  # AD's score is the left hippocampus's signal power
        power = batch[:, hippocampus].pow(2).mean(dim=1)
        return torch.stack([torch.zeros_like(power), torch.zeros_like(power), 3 * power], dim=1)

    drops = explain.roi_importance(classify, series, explain.roi_rows("roi", len(names)), class_index=2)
    assert drops.shape == (len(names),)
    assert int(np.argmax(drops)) == hippocampus and drops[hippocampus] > 0.5
    assert np.abs(np.delete(drops, hippocampus)).max() < 1e-6


def test_in_dfc_mode_each_roi_occludes_every_correlation_it_takes_part_in():
    rows = explain.roi_rows("dfc", 4)
    assert rows.shape == (4, 6)
    assert rows.sum(dim=1).tolist() == [3, 3, 3, 3]
    assert explain.roi_rows("volume", 4) is None
