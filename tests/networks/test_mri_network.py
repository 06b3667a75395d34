"""The 3D CNN's execution settings change its speed, not its results."""

from __future__ import annotations

import torch

from pipeline.networks import MRIClassifier


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
