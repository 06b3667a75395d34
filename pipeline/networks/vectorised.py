"""``nn.PReLU`` and ``nn.BatchNorm3d`` with whole-tensor CPU backward passes, for the 3D CNN's training step.

Two of PyTorch's CPU backward kernels took a third to a half of the 3D CNN's eager training step (``neurofusion
bench train --profile``): PReLU's backward is a per-element branch (9x its forward, on random signs), and the
channels-last batch-norm backward, with fewer than 16 channels, keeps per-thread sums of ``C`` floats side by side,
so threads write the same cache lines and a second thread makes it slower (with AVX-512 it also runs every row in
its masked tail). The subclasses here run PyTorch's own forward (the same outputs, the same running statistics) and
compute the same gradients with vectorised whole-tensor operations (PReLU's input gradient to the bit, the rest
within float rounding). Everywhere else (evaluation, no gradient, CUDA, ``torch.compile``, tracing) they are the
stock modules; ``torch.jit.script`` scripts a stock module that shares their parameters and buffers (and puts it in
their place).
"""

from __future__ import annotations

import copy

import torch
from torch import nn

# Per-thread sums of fewer channels than this share 64-byte cache lines (16 float32).
FALSE_SHARING_CHANNELS = 16
ROW_WIDTH = 64  # the batch-norm backward views its [rows, C] input as rows of at least this many values


def _eager_cpu_training(tensor: torch.Tensor, *parameters: torch.Tensor) -> bool:
    """Whether autograd will run this module's backward on the CPU, outside compilation and tracing."""
    return (
        torch.is_grad_enabled()
        and any(t.requires_grad for t in (tensor, *parameters))
        and tensor.device.type == "cpu"
        and tensor.dtype == torch.float32
        and not torch.compiler.is_compiling()
        and not torch.jit.is_tracing()
    )


def _stock(module: nn.Module, stock_class: type[nn.Module]) -> nn.Module:
    """A ``stock_class`` module sharing ``module``'s parameters and buffers (for ``torch.jit.script``)."""
    stock = copy.copy(module)
    stock.__class__ = stock_class
    return stock


class _PReLUFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, input: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(input, weight)
        return torch.prelu(input, weight)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        input, weight = ctx.saved_tensors
        positive = torch.ops.aten.threshold_backward(grad, input, 0)  # grad where input > 0, else 0
        negative = grad - positive
        grad_weight = None
        if ctx.needs_input_grad[1]:  # one pass over both, not a product written out and summed
            grad_weight = torch.dot(*_in_memory_order(negative, input)).reshape(weight.shape)
        grad_input = positive.add_(negative, alpha=weight.item()) if ctx.needs_input_grad[0] else None
        return grad_input, grad_weight


def _in_memory_order(*tensors: torch.Tensor) -> list[torch.Tensor]:
    """``tensors`` (of one shape) flattened in the same element order: the memory order of the last one, so that a
    dense channels-last or contiguous tensor is viewed rather than copied."""
    last = tensors[-1]
    if last.dim() == 5 and not last.is_contiguous() and last.is_contiguous(memory_format=torch.channels_last_3d):
        return [tensor.movedim(1, -1).reshape(-1) for tensor in tensors]
    return [tensor.reshape(-1) for tensor in tensors]


class PReLU(nn.PReLU):
    """``nn.PReLU`` (one shared slope) whose CPU backward is a few passes of vectorised arithmetic, not a branch."""

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if self.num_parameters == 1 and _eager_cpu_training(input, self.weight):
            return _PReLUFunction.apply(input, self.weight)
        return super().forward(input)

    def __prepare_scriptable__(self) -> nn.Module:
        return _stock(self, nn.PReLU)


class _BatchNormFunction(torch.autograd.Function):
    """Training-mode batch norm of a channels-last ``[N, C, X, Y, Z]`` input."""

    @staticmethod
    def forward(ctx, input, weight, bias, running_mean, running_var, momentum: float, eps: float):
        output, mean, invstd = torch.native_batch_norm(
            input, weight, bias, running_mean, running_var, True, momentum, eps
        )
        ctx.save_for_backward(input, weight, mean, invstd)
        return output

    @staticmethod
    def backward(ctx, grad):
        input, weight, mean, invstd = ctx.saved_tensors
        channels = input.shape[1]
        rows, grads = _channel_rows(input), _channel_rows(grad)
        repeat = rows.shape[1] // channels
        count = input.numel() // channels
        sum_grad = grads.sum(0).view(repeat, channels).sum(0)
        sum_grad_input = (grads * rows).sum(0).view(repeat, channels).sum(0)
        grad_weight = (sum_grad_input - mean * sum_grad) * invstd
        # d input = scale * grad + slope * input + offset, per channel
        scale = weight * invstd
        slope = -scale * invstd * grad_weight / count
        offset = -scale * sum_grad / count - slope * mean
        grad_input = torch.addcmul(offset.repeat(repeat), rows, slope.repeat(repeat))
        grad_input.addcmul_(grads, scale.repeat(repeat))
        grad_input = grad_input.view(input.movedim(1, -1).shape).movedim(-1, 1)
        return grad_input, grad_weight, sum_grad, None, None, None, None


def _channel_rows(tensor: torch.Tensor) -> torch.Tensor:
    """A channels-last ``[N, C, ...]`` tensor as rows of whole channel vectors, at least ``ROW_WIDTH`` wide when
    ``C`` divides it (so the sums and the arithmetic run over full vector registers)."""
    channels = tensor.shape[1]
    rows = tensor.movedim(1, -1).reshape(-1, channels)
    repeat = ROW_WIDTH // channels if ROW_WIDTH % channels == 0 else 1
    if rows.shape[0] % repeat:
        repeat = 1
    return rows.reshape(-1, channels * repeat)


class BatchNorm3d(nn.BatchNorm3d):
    """``nn.BatchNorm3d`` whose CPU training backward for a channels-last input of fewer than 16 channels, with
    more than one thread, is a few whole-tensor reductions and two fused multiply-adds."""

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if not self._vectorised_backward(input):
            return super().forward(input)
        self.num_batches_tracked.add_(1)
        momentum = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
        return _BatchNormFunction.apply(
            input, self.weight, self.bias, self.running_mean, self.running_var, momentum, self.eps
        )

    def _vectorised_backward(self, input: torch.Tensor) -> bool:
        # _eager_cpu_training first: under torch.compile it is False before torch.get_num_threads(), which dynamo
        # cannot trace (a graph break, after which this module would run eagerly)
        return (
            self.training
            and self.track_running_stats
            and self.affine
            and _eager_cpu_training(input, self.weight, self.bias)
            and input.dim() == 5
            and 1 < input.shape[1] < FALSE_SHARING_CHANNELS
            and input.is_contiguous(memory_format=torch.channels_last_3d)
            and torch.get_num_threads() > 1  # alone, PyTorch's kernel is faster (the whole step: 3-7% more samples/s)
        )

    def __prepare_scriptable__(self) -> nn.Module:
        return _stock(self, nn.BatchNorm3d)


VECTORISED = {nn.PReLU: PReLU, nn.BatchNorm3d: BatchNorm3d}


def vectorise_backward(network: nn.Module) -> nn.Module:
    """Turn every stock ``nn.PReLU`` and ``nn.BatchNorm3d`` of ``network`` into the subclass above, in place:
    the same parameters, buffers and state-dict keys."""
    for module in network.modules():
        if type(module) in VECTORISED:
            module.__class__ = VECTORISED[type(module)]
    return network
