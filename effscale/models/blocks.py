"""The four block types a stage table can name, built from torchvision.ops.

Attribute names (`block`, `conv`, `conv1`/`bn1`, `downsample`, …) are torchvision's, so a state dict of
the same architecture loads with no key mapping.
"""

from __future__ import annotations

from functools import partial
from typing import Callable

from torch import Tensor, nn
from torchvision.ops import Conv2dNormActivation, SqueezeExcitation, StochasticDepth
from torchvision.ops.misc import ConvNormActivation

from effscale.models.depthwise import DepthwiseConv2d
from effscale.scaling import round_filters

ACTIVATIONS: dict[str, Callable[..., nn.Module]] = {
    "silu": nn.SiLU,
    "relu": nn.ReLU,
    "relu6": nn.ReLU6,
    "hardswish": nn.Hardswish,
}

Norm = Callable[[int], nn.Module]


class DepthwiseConvNormActivation(ConvNormActivation):
    """Depthwise conv → norm → activation: Conv2dNormActivation's layers and keys, with a conv whose
    weight gradient stays fast on CPU at small feature maps (see models/depthwise.py)."""

    def __init__(self, channels: int, kernel: int, stride: int, norm: Norm,
                 activation: Callable[..., nn.Module]) -> None:
        super().__init__(channels, channels, kernel, stride=stride, groups=channels, norm_layer=norm,
                         activation_layer=activation, conv_layer=DepthwiseConv2d)


class MBConv(nn.Module):
    """Mobile inverted bottleneck with optional squeeze-and-excitation (EfficientNet paper, table 1).

    expand 1×1 → depthwise k×k → SE (ratio of the block *input* channels) → project 1×1, with a
    stochastic-depth residual when the shape allows it.
    """

    def __init__(self, c_in: int, c_out: int, *, expand: float, kernel: int, stride: int, se: float,
                 divisor: int, activation: Callable[..., nn.Module], norm: Norm, drop_prob: float) -> None:
        super().__init__()
        self.use_res_connect = stride == 1 and c_in == c_out
        hidden = round_filters(c_in, expand, divisor)
        layers: list[nn.Module] = []
        if hidden != c_in:
            layers.append(Conv2dNormActivation(c_in, hidden, 1, norm_layer=norm, activation_layer=activation))
        layers.append(DepthwiseConvNormActivation(hidden, kernel, stride, norm, activation))
        if se > 0:
            squeeze = max(1, int(c_in * se))
            layers.append(SqueezeExcitation(hidden, squeeze, activation=partial(activation, inplace=True)))
        layers.append(Conv2dNormActivation(hidden, c_out, 1, norm_layer=norm, activation_layer=None))
        self.block = nn.Sequential(*layers)
        self.stochastic_depth = StochasticDepth(drop_prob, "row")
        self.out_channels = c_out

    def forward(self, x: Tensor) -> Tensor:
        out = self.block(x)
        if self.use_res_connect:
            out = self.stochastic_depth(out) + x
        return out


class InvertedResidual(nn.Module):
    """MobileNetV2's inverted residual (Sandler et al. 2018, fig. 4): linear bottleneck, no SE."""

    def __init__(self, c_in: int, c_out: int, *, expand: float, kernel: int, stride: int,
                 activation: Callable[..., nn.Module], norm: Norm, **_: object) -> None:
        super().__init__()
        self.use_res_connect = stride == 1 and c_in == c_out
        hidden = max(1, int(round(c_in * expand)))  # torchvision's rounding; a tiny expand keeps one channel
        layers: list[nn.Module] = []
        if expand != 1:
            layers.append(Conv2dNormActivation(c_in, hidden, 1, norm_layer=norm, activation_layer=activation))
        layers += [
            DepthwiseConvNormActivation(hidden, kernel, stride, norm, activation),
            nn.Conv2d(hidden, c_out, 1, bias=False),
            norm(c_out),
        ]
        self.conv = nn.Sequential(*layers)
        self.out_channels = c_out

    def forward(self, x: Tensor) -> Tensor:
        out = self.conv(x)
        return out + x if self.use_res_connect else out


class _ResidualBlock(nn.Module):
    def _shortcut(self, c_in: int, c_out: int, stride: int, norm: Norm) -> nn.Module | None:
        if stride == 1 and c_in == c_out:
            return None
        return nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False), norm(c_out))


class BasicBlock(_ResidualBlock):
    """ResNet basic block (He et al. 2016, fig. 5 left): two 3×3 convs."""

    expansion = 1

    def __init__(self, c_in: int, planes: int, *, stride: int, activation: Callable[..., nn.Module],
                 norm: Norm, **_: object) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = norm(planes)
        self.relu = activation(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = norm(planes)
        self.downsample = self._shortcut(c_in, planes, stride, norm)
        self.out_channels = planes

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(out)) + identity)


class Bottleneck(_ResidualBlock):
    """ResNet bottleneck (He et al. 2016, fig. 5 right): 1×1 → 3×3 (stride here, as torchvision) → 1×1 ×4."""

    expansion = 4

    def __init__(self, c_in: int, planes: int, *, stride: int, activation: Callable[..., nn.Module],
                 norm: Norm, **_: object) -> None:
        super().__init__()
        c_out = planes * self.expansion
        self.conv1 = nn.Conv2d(c_in, planes, 1, bias=False)
        self.bn1 = norm(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = norm(planes)
        self.conv3 = nn.Conv2d(planes, c_out, 1, bias=False)
        self.bn3 = norm(c_out)
        self.relu = activation(inplace=True)
        self.downsample = self._shortcut(c_in, c_out, stride, norm)
        self.out_channels = c_out

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        return self.relu(self.bn3(self.conv3(out)) + identity)


BLOCKS: dict[str, type[nn.Module]] = {
    "mbconv": MBConv,
    "inverted_residual": InvertedResidual,
    "basic": BasicBlock,
    "bottleneck": Bottleneck,
}


def init_weights(model: nn.Module, linear: str) -> None:
    """torchvision's initialisation for these families: He-normal (fan-out) convs, unit BN, and a
    linear layer drawn as the family does it ('uniform' ±1/√out, 'normal' σ=0.01, or 'default')."""
    if any(p.is_meta for p in model.parameters()):
        return  # built on the meta device to be measured: shapes only, no values to draw
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear) and linear == "uniform":
            bound = 1.0 / m.out_features**0.5
            nn.init.uniform_(m.weight, -bound, bound)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear) and linear == "normal":
            nn.init.normal_(m.weight, 0, 0.01)
            nn.init.zeros_(m.bias)
