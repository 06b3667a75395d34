"""The fused network's MRI-only path and modality dropout."""

from __future__ import annotations

import pytest
import torch

from pipeline.networks import FusionClassifier

MRI = torch.randn(3, 1, 24, 28, 24)
SERIES = torch.randn(3, 116, 32)


def test_mri_only_forward_gives_logits_that_do_not_depend_on_any_series():
    torch.manual_seed(0)
    network = FusionClassifier().eval()
    with torch.no_grad():
        alone = network(MRI)
        assert alone.shape == (3, 3)
        assert not torch.allclose(alone, network(MRI, SERIES))


def test_scripted_network_keeps_both_paths():
    network = FusionClassifier().eval()
    scripted = torch.jit.script(network)
    with torch.no_grad():
        torch.testing.assert_close(scripted(MRI), network(MRI))
        torch.testing.assert_close(scripted(MRI, SERIES), network(MRI, SERIES))


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
