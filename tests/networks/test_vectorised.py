"""The vectorised PReLU and batch-norm backward passes: the stock modules' outputs and running statistics, their
gradients within float rounding (PReLU's input gradient to the bit), the same state dict, and the stock modules
wherever they do not apply (torch.compile and TorchScript included)."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from pipeline.networks import MRIClassifier
from pipeline.networks.vectorised import (
    BatchNorm3d,
    PReLU,
    _BatchNormFunction,
    _PReLUFunction,
    vectorise_backward,
)


@pytest.fixture
def two_threads():
    """The batch-norm path needs more than one thread (alone, PyTorch's kernel is faster)."""
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


def _block(channels: int) -> nn.Sequential:
    torch.manual_seed(channels)
    block = nn.Sequential(nn.BatchNorm3d(channels), nn.PReLU())
    with torch.no_grad():
        block[0].weight.uniform_(0.5, 1.5)
        block[0].bias.uniform_(-0.5, 0.5)
    return block


def _train_step(block: nn.Module, image: torch.Tensor, grad: torch.Tensor) -> dict[str, torch.Tensor]:
    image = image.clone().requires_grad_()
    output = block(image)
    output.backward(grad)
    results = {"output": output, "grad input": image.grad}
    results |= {f"grad {name}": p.grad for name, p in block.named_parameters()}
    return results | dict(block.named_buffers())


@pytest.mark.parametrize("channels", [8, 5, 3])
def test_training_step_matches_the_stock_modules(channels, two_threads):
    stock = _block(channels)
    fast = vectorise_backward(copy.deepcopy(stock))
    assert (type(fast[0]), type(fast[1])) == (BatchNorm3d, PReLU)
    image = (torch.randn(4, channels, 12, 14, 12) * 3 + 1).contiguous(memory_format=torch.channels_last_3d)
    grad = torch.randn_like(image)
    for _ in range(2):  # the second step accumulates gradients and updates the running statistics again
        expected, found = _train_step(stock, image, grad), _train_step(fast, image, grad)
        assert expected.keys() == found.keys()
        for name in ("output", "0.running_mean", "0.running_var", "0.num_batches_tracked"):
            assert torch.equal(found[name], expected[name]), name
        for name in ("grad input", "grad 0.weight", "grad 0.bias", "grad 1.weight"):
            scale = expected[name].abs().max().item()  # sums of ~8,000 terms: rounding relative to the largest
            torch.testing.assert_close(found[name], expected[name], rtol=0, atol=1e-5 * scale, msg=name)
        assert found["grad input"].is_contiguous(memory_format=torch.channels_last_3d)
        prelu_backward = found["output"].grad_fn  # the vectorised functions ran, not the stock kernels
        assert type(prelu_backward).__name__ == "_PReLUFunctionBackward"
        assert type(prelu_backward.next_functions[0][0]).__name__ == "_BatchNormFunctionBackward"


def test_prelu_input_gradient_is_the_stock_one_to_the_bit():
    torch.manual_seed(0)
    image = torch.randn(2, 8, 10, 12, 10)
    grad = torch.randn_like(image)
    expected, found = _train_step(nn.PReLU(), image, grad), _train_step(PReLU(), image, grad)
    for name in ("output", "grad input"):
        assert torch.equal(found[name], expected[name]), name
    torch.testing.assert_close(found["grad weight"], expected["grad weight"], rtol=1e-6, atol=0)  # another sum order


@pytest.mark.parametrize("grad_layout", [torch.contiguous_format, torch.channels_last_3d])
def test_prelu_slope_gradient_pairs_the_elements_whatever_the_layouts(grad_layout):
    torch.manual_seed(1)
    image = torch.randn(2, 8, 6, 7, 5).contiguous(memory_format=torch.channels_last_3d)
    grad = torch.randn(image.shape).contiguous(memory_format=grad_layout)
    expected, found = _train_step(nn.PReLU(), image, grad), _train_step(PReLU(), image, grad)
    assert torch.equal(found["grad input"], expected["grad input"])
    torch.testing.assert_close(found["grad weight"], expected["grad weight"], rtol=1e-5, atol=0)  # ~1,700 products


def test_batch_norm_takes_the_vectorised_backward_only_where_it_applies(two_threads):
    layer = BatchNorm3d(8)
    channels_last = torch.randn(2, 8, 4, 4, 4).contiguous(memory_format=torch.channels_last_3d)
    assert layer._vectorised_backward(channels_last)  # the weight and bias need gradients
    with torch.no_grad():
        assert not layer._vectorised_backward(channels_last)
    assert not layer.requires_grad_(False)._vectorised_backward(channels_last)  # frozen: nothing needs a gradient
    assert layer._vectorised_backward(channels_last.requires_grad_())
    assert not layer._vectorised_backward(channels_last.contiguous())  # PyTorch's kernel is fine there
    assert not layer.eval()._vectorised_backward(channels_last)  # running statistics
    wide = torch.randn(2, 16, 4, 4, 4).contiguous(memory_format=torch.channels_last_3d)
    assert not BatchNorm3d(16)._vectorised_backward(wide)  # whole cache lines per thread
    torch.set_num_threads(1)
    assert not layer.train()._vectorised_backward(channels_last)


def test_the_3d_cnn_uses_them_with_the_stock_state_dict_and_scripts_to_stock_modules():
    network = MRIClassifier()
    kinds = {type(m) for m in network.modules()}
    assert {PReLU, BatchNorm3d} <= kinds and not {nn.PReLU, nn.BatchNorm3d} & kinds
    stock = copy.deepcopy(network)
    for module in stock.modules():
        if type(module) in (PReLU, BatchNorm3d):
            module.__class__ = type(module).__mro__[1]
    assert list(network.state_dict()) == list(stock.state_dict())
    network.load_state_dict(stock.state_dict())
    scripted = torch.jit.script(network.eval())
    image = torch.randn(2, 1, 24, 28, 24)
    with torch.no_grad():
        torch.testing.assert_close(scripted(image), stock.eval()(image), rtol=0, atol=0)


def test_torch_compile_traces_the_stock_modules(two_threads, monkeypatch):
    def refuse(*args):
        raise AssertionError("the vectorised backward ran")

    monkeypatch.setattr(_PReLUFunction, "apply", refuse)
    monkeypatch.setattr(_BatchNormFunction, "apply", refuse)
    block = vectorise_backward(_block(8))
    image = torch.randn(2, 8, 6, 6, 6).contiguous(memory_format=torch.channels_last_3d).requires_grad_()
    with pytest.raises(AssertionError, match="vectorised backward ran"):
        block(image)
    torch.compiler.reset()  # no cached frames or recompile counts from the tests before
    torch.compile(block, backend="eager", fullgraph=True)(image).sum().backward()  # fails on a graph break
    assert image.grad is not None
