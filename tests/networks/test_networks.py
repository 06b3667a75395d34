"""The networks: output shapes, TorchScript scripting with identical outputs, the fused network's MRI-only path and
modality dropout, and the 3D CNN's execution settings (they change its speed, not its results)."""

from __future__ import annotations

import pytest
import torch

from pipeline.networks import FMRIClassifier, FusionClassifier, MRIClassifier

MRI = torch.randn(2, 1, 24, 28, 24)
SERIES = torch.randn(2, 116, 32)


@pytest.mark.parametrize(
    "network, inputs",
    [
        (MRIClassifier(), (MRI,)),
        (FMRIClassifier(), (SERIES,)),
        (FMRIClassifier(cell="gru", num_layers=2), (SERIES,)),
        (FusionClassifier(), (MRI, SERIES)),
        (FusionClassifier(), (MRI,)),
    ],
    ids=["cnn", "lstm", "gru", "fusion", "fusion-mri-only"],
)
def test_scripted_network_matches_eager(network, inputs):
    network.eval()
    scripted = torch.jit.script(network)
    with torch.no_grad():
        eager = network(*inputs)
        assert eager.shape == (2, 3)
        torch.testing.assert_close(scripted(*inputs), eager)


def test_unknown_recurrent_cell_is_refused():
    with pytest.raises(ValueError, match="cell must be 'lstm' or 'gru'"):
        FMRIClassifier(cell="transformer")


# --- the fused network ------------------------------------------------------------------------------------


def test_fusion_uses_both_modalities():
    torch.manual_seed(0)
    network = FusionClassifier().eval()
    with torch.no_grad():
        base = network(MRI, SERIES)
        assert not torch.allclose(base, network(MRI, torch.zeros_like(SERIES)))
        assert not torch.allclose(base, network(torch.zeros_like(MRI), SERIES))


def test_mri_only_forward_gives_logits_that_do_not_depend_on_any_series():
    torch.manual_seed(0)
    network = FusionClassifier().eval()
    with torch.no_grad():
        assert not torch.allclose(network(MRI), network(MRI, SERIES))


def test_full_modality_dropout_in_training_is_the_mri_only_path():
    torch.manual_seed(0)
    network = FusionClassifier(dropout=0.0, modality_dropout=1.0).train()
    torch.testing.assert_close(network(MRI, SERIES), network(MRI))


def test_modality_dropout_is_off_in_evaluation():
    torch.manual_seed(0)
    network = FusionClassifier(dropout=0.0, modality_dropout=1.0).eval()
    with torch.no_grad():
        assert not torch.allclose(network(MRI, SERIES), network(MRI))


def test_modality_dropout_trains_the_missing_embedding():
    network = FusionClassifier(dropout=0.0, modality_dropout=0.5).train()
    torch.manual_seed(1)
    network(MRI, SERIES).sum().backward()
    assert network.missing_fmri.grad is not None and network.missing_fmri.grad.abs().sum() > 0


def test_modality_dropout_outside_zero_to_one_is_refused():
    with pytest.raises(ValueError, match="modality_dropout must be a probability"):
        FusionClassifier(modality_dropout=1.5)


# --- the 3D CNN's execution settings ----------------------------------------------------------------------


def test_channels_last_gives_the_same_logits_and_gradients_from_the_same_weights():
    torch.manual_seed(0)
    contiguous = MRIClassifier(channels_last=False)
    channels_last = MRIClassifier(channels_last=True)
    channels_last.load_state_dict(contiguous.state_dict())
    images = torch.rand(2, 1, 24, 28, 24)
    outputs = []
    for network in (contiguous, channels_last):
        logits = network.eval()(images)
        logits.sum().backward()
        outputs.append((logits, network.encoder.features[0].conv.weight.grad))
    torch.testing.assert_close(outputs[1][0], outputs[0][0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(outputs[1][1], outputs[0][1], atol=1e-5, rtol=1e-4)
    assert channels_last.encoder.features[0].conv.weight.is_contiguous(memory_format=torch.channels_last_3d)
