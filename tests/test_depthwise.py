"""DepthwiseConv2d's tap-by-tap weight gradient equals oneDNN's, on the shapes where it takes over."""

import pytest
import torch
from torch import nn

from effscale.models.depthwise import DepthwiseConv2d, depthwise_weight_grad


def reference_grads(conv: nn.Conv2d, x: torch.Tensor, grad_out: torch.Tensor):
    ref = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                    groups=conv.groups, bias=False)
    ref.weight.data.copy_(conv.weight.data)
    x_ref = x.detach().clone().requires_grad_()
    ref(x_ref).backward(grad_out)
    return x_ref.grad, ref.weight.grad


@pytest.mark.parametrize("channels_last", [True, False])
@pytest.mark.parametrize("size,kernel,stride", [(1, 5, 1), (2, 5, 1), (2, 5, 2), (2, 3, 1), (4, 5, 1), (3, 5, 2),
                                                (1, 3, 1), (4, 7, 2)])
def test_tap_gradient_equals_onednn(size, kernel, stride, channels_last):
    torch.manual_seed(0)
    conv = DepthwiseConv2d(24, 24, kernel, stride, kernel // 2, groups=24, bias=False)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    conv = conv.to(memory_format=fmt)
    x = torch.randn(5, 24, size, size).contiguous(memory_format=fmt).requires_grad_()
    assert conv._tap_gradient(x)
    out = conv(x)
    grad_out = torch.randn_like(out)
    out.backward(grad_out)
    grad_x, grad_w = reference_grads(conv, x, grad_out)
    assert torch.allclose(x.grad, grad_x, atol=1e-5)
    assert torch.allclose(conv.weight.grad, grad_w, atol=1e-4)


def test_weight_grad_formula_on_a_map_larger_than_the_kernel():
    torch.manual_seed(0)
    x, w = torch.randn(3, 8, 9, 7), torch.randn(8, 1, 3, 3)
    out = nn.functional.conv2d(x, w, stride=2, padding=1, groups=8)
    grad_out = torch.randn_like(out)
    expected = torch.ops.aten.convolution_backward(grad_out, x, w, None, [2, 2], [1, 1], [1, 1], False, [0, 0], 8,
                                                   [False, True, False])[1]
    assert torch.allclose(depthwise_weight_grad(x, grad_out, (3, 3), (2, 2), (1, 1)), expected, atol=1e-4)


def test_feature_maps_that_cover_the_kernel_keep_the_standard_path():
    conv = DepthwiseConv2d(8, 8, 3, 1, 1, groups=8, bias=False)
    assert not conv._tap_gradient(torch.randn(2, 8, 4, 4))
    with torch.no_grad():
        assert not conv._tap_gradient(torch.randn(2, 8, 1, 1))
