"""A depthwise convolution whose weight gradient stays fast on CPU when the input is smaller than the kernel.

oneDNN's depthwise weight-gradient kernel slows down by 10–1000× when the zero padding is larger than
the image: a 5×5 depthwise conv over 1152 channels of a 1×1 map (EfficientNet-B0's stage 6 at 32 px)
takes ~45 ms for its weight gradient against ~0.2 ms for its forward pass, on one core of an AVX-512
Xeon. At the small resolutions a CPU search trains at, the last stages are exactly that shape, and those
gradients were about half of B0's training step at 32 px (`benchmarks/train_step.py` measures it).

In that case `DepthwiseConv2d` computes the weight gradient one kernel tap at a time, skipping taps
that only ever read padding; the forward pass and the input gradient are still oneDNN's. It is an
`nn.Conv2d` with the same parameters, so state dicts, `torch.device("meta")` counting and CUDA are
unchanged (CUDA, and any shape where the input covers the kernel, take `nn.Conv2d`'s path).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn import functional as F


def depthwise_weight_grad(x: Tensor, grad_out: Tensor, kernel: tuple[int, int], stride: tuple[int, int],
                          padding: tuple[int, int]) -> Tensor:
    """∂loss/∂weight of a depthwise conv (no dilation, zero padding), shape (C, 1, kh, kw).

    For tap (i, j): the sum over the batch and output positions of grad_out times the input pixel that
    tap reads, over just the output positions whose pixel lies inside the image.
    """
    (kh, kw), (sh, sw), (ph, pw) = kernel, stride, padding
    height, width = x.shape[-2:]
    out_h, out_w = grad_out.shape[-2:]
    x_last, g_last = x.permute(0, 2, 3, 1), grad_out.permute(0, 2, 3, 1)  # channels innermost: a view for channels_last
    grad = x.new_zeros(kh, kw, x.shape[1])
    for i in range(kh):
        # output rows r whose input row r·sh + i − ph is inside the image
        r0, r1 = max(0, -(-(ph - i) // sh)), min(out_h, (height - 1 - i + ph) // sh + 1)
        for j in range(kw):
            c0, c1 = max(0, -(-(pw - j) // sw)), min(out_w, (width - 1 - j + pw) // sw + 1)
            if r1 <= r0 or c1 <= c0:
                continue
            rows = slice(r0 * sh + i - ph, (r1 - 1) * sh + i - ph + 1, sh)
            cols = slice(c0 * sw + j - pw, (c1 - 1) * sw + j - pw + 1, sw)
            grad[i, j] = (x_last[:, rows, cols] * g_last[:, r0:r1, c0:c1]).sum((0, 1, 2))
    return grad.permute(2, 0, 1).unsqueeze(1)


class _DepthwiseConvFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, stride: tuple[int, int], padding: tuple[int, int]) -> Tensor:
        ctx.save_for_backward(x, weight)
        ctx.stride, ctx.padding = stride, padding
        return F.conv2d(x, weight, None, stride, padding, 1, x.shape[1])

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        x, weight = ctx.saved_tensors
        grad_x = grad_w = None
        if ctx.needs_input_grad[0]:
            grad_x = torch.ops.aten.convolution_backward(
                grad_out, x, weight, None, list(ctx.stride), list(ctx.padding), [1, 1], False, [0, 0],
                x.shape[1], [True, False, False])[0]
        if ctx.needs_input_grad[1]:
            grad_w = depthwise_weight_grad(x, grad_out, tuple(weight.shape[-2:]), ctx.stride, ctx.padding)
        return grad_x, grad_w, None, None


class DepthwiseConv2d(nn.Conv2d):
    """`nn.Conv2d` with groups = channels; see the module docstring for when its backward differs."""

    def forward(self, x: Tensor) -> Tensor:
        if self._tap_gradient(x):
            return _DepthwiseConvFunction.apply(x, self.weight, self.stride, self.padding)
        return super().forward(x)

    def _tap_gradient(self, x: Tensor) -> bool:
        kh, kw = self.kernel_size
        return (x.device.type == "cpu" and (x.shape[-2] < kh or x.shape[-1] < kw)
                and torch.is_grad_enabled() and self.weight.requires_grad and self.bias is None
                and self.groups == self.in_channels == self.out_channels and self.dilation == (1, 1)
                and self.padding_mode == "zeros" and isinstance(self.padding, tuple)
                and x.dtype == self.weight.dtype and not torch.is_autocast_enabled("cpu"))
