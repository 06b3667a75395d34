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
        (FMRIClassifier(pooling=("last", "mean", "std")), (SERIES,)),
        (FusionClassifier(), (MRI, SERIES)),
        (FusionClassifier(), (MRI,)),
    ],
    ids=["cnn", "lstm", "gru", "lstm-last-output", "fusion", "fusion-mri-only"],
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


class FixedOutputs(torch.nn.Module):
    """Stands in for a recurrent layer: returns the given output sequences in turn, whatever it reads."""

    def __init__(self, *outputs: torch.Tensor) -> None:
        super().__init__()
        self.outputs = iter(outputs)

    def forward(self, series):
        return next(self.outputs), None


def test_default_embedding_ignores_the_order_of_time_points_and_the_last_output_does_not():
    """Mean and standard deviation over time do not depend on the order of the outputs; the last output does."""
    torch.manual_seed(0)
    outputs = torch.randn(2, 32, 64)
    for pooling, same in ((("mean", "std"), True), (("mean", "std", "last"), False)):
        encoder = FMRIClassifier(pooling=pooling).encoder.eval()
        encoder.rnn = FixedOutputs(outputs, outputs.flip(1))
        with torch.no_grad():
            assert torch.allclose(encoder(SERIES), encoder(SERIES), atol=1e-6) is same


@pytest.mark.parametrize("pooling", [(), ("max",), ("mean", "mean")])
def test_pooling_outside_mean_std_last_is_refused(pooling):
    with pytest.raises(ValueError, match="pooling must be distinct names of mean, std, last"):
        FMRIClassifier(pooling=pooling)


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


def test_full_mri_dropout_in_training_classifies_from_the_fmri_alone():
    torch.manual_seed(0)
    network = FusionClassifier(dropout=0.0, mri_dropout=1.0).train()
    logits = network(MRI, SERIES)
    torch.testing.assert_close(logits, network(torch.randn_like(MRI), SERIES))
    assert not torch.allclose(logits, network(MRI, torch.randn_like(SERIES)))
    logits.sum().backward()
    assert all(p.grad is None or not p.grad.any() for p in network.mri_encoder.parameters())
    assert any(p.grad is not None and p.grad.any() for p in network.fmri_encoder.parameters())


def test_mri_dropout_is_off_in_evaluation():
    torch.manual_seed(0)
    network = FusionClassifier(dropout=0.0, mri_dropout=1.0).eval()
    with torch.no_grad():
        assert not torch.allclose(network(MRI, SERIES), network(torch.randn_like(MRI), SERIES))


def test_no_sample_loses_both_modalities():
    torch.manual_seed(0)
    network = FusionClassifier(dropout=0.0, modality_dropout=0.5, mri_dropout=0.5).train()
    nothing = network.fuse(torch.zeros(1, 64), network.missing_fmri[None])
    for _ in range(20):
        logits = network(MRI, SERIES)
        assert not torch.isclose(logits, nothing).all(dim=1).any()
    with pytest.raises(ValueError, match=r"mri_dropout must be a probability in \[0, 1 - modality_dropout\]"):
        FusionClassifier(modality_dropout=0.5, mri_dropout=0.6)


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
