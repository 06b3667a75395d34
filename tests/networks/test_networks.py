"""Networks: output shapes, TorchScript scripting with identical outputs."""

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
    ],
    ids=["cnn", "lstm", "gru", "fusion"],
)
def test_scripted_network_matches_eager(network, inputs):
    network.eval()
    scripted = torch.jit.script(network)
    with torch.no_grad():
        eager = network(*inputs)
        assert eager.shape == (2, 3)
        torch.testing.assert_close(scripted(*inputs), eager)


def test_fusion_uses_both_modalities():
    torch.manual_seed(0)
    network = FusionClassifier().eval()
    with torch.no_grad():
        base = network(MRI, SERIES)
        assert not torch.allclose(base, network(MRI, torch.zeros_like(SERIES)))
        assert not torch.allclose(base, network(torch.zeros_like(MRI), SERIES))


def test_unknown_recurrent_cell_is_refused():
    with pytest.raises(ValueError, match="cell must be 'lstm' or 'gru'"):
        FMRIClassifier(cell="transformer")
