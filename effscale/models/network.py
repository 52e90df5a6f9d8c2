"""Build a network by walking a (scaled) stage table.

A stage table (conf/baseline/*.yaml, after `scaling.scale_stage_table`) lists a stem, stages of
repeated blocks and a head. One function walks it; the family only decides the module names, so
that state dicts are the ones torchvision uses for the same architecture:

  efficientnet   features.0 stem, features.1..N one Sequential per stage, features.N+1 head; classifier
  mobilenet_v2   features is one flat list of blocks between stem and head; classifier
  resnet         conv1/bn1/relu/maxpool stem, layer1..layer4, fc
"""

from __future__ import annotations

from functools import partial
from typing import Any

import torch
from torch import Tensor, nn
from torchvision.ops import Conv2dNormActivation

from effscale.checks import FAMILIES
from effscale.errors import UserError
from effscale.models.blocks import ACTIVATIONS, BLOCKS, init_weights

# How each of checks.FAMILIES initialises its linear classifier in torchvision.
LINEAR_INIT = {"efficientnet": "uniform", "mobilenet_v2": "normal", "resnet": "default"}


class ConvNet(nn.Module):
    """features → global average pool → classifier; the layout of EfficientNet and MobileNetV2."""

    def __init__(self, features: nn.Sequential, classifier: nn.Sequential, resolution: int) -> None:
        super().__init__()
        self.features = features
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = classifier
        self.resolution = resolution

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))


class ResNet(nn.Module):
    """The ResNet layout: stem (conv1, bn1, relu, maxpool), layer1…layerN, avgpool, fc."""

    def __init__(self, stem: dict[str, nn.Module], layers: list[nn.Sequential], fc: nn.Linear,
                 resolution: int, dropout: float = 0.0) -> None:
        super().__init__()
        for name, module in stem.items():
            self.add_module(name, module)
        self.num_layers = len(layers)
        for i, layer in enumerate(layers, start=1):
            self.add_module(f"layer{i}", layer)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = fc
        self.dropout = dropout
        self.resolution = resolution

    def forward(self, x: Tensor) -> Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        for i in range(1, self.num_layers + 1):
            x = getattr(self, f"layer{i}")(x)
        x = torch.flatten(self.avgpool(x), 1)
        # Functional dropout keeps torchvision's `fc.*` keys for a baseline that asks for some.
        return self.fc(nn.functional.dropout(x, self.dropout, self.training))


def _stages(table: dict[str, Any], c_in: int, activation, norm) -> tuple[list[nn.Sequential], int]:
    """One Sequential of blocks per stage; the first block of a stage carries its stride."""
    total = sum(stage["repeats"] for stage in table["stages"])
    max_drop = float(table.get("stochastic_depth", 0.0))
    index = 0
    stages = []
    for stage in table["stages"]:
        kind = stage["block"]
        if kind not in BLOCKS:
            raise UserError(f"baseline.stages: unknown block {kind!r}; expected one of {sorted(BLOCKS)}")
        blocks = []
        for repeat in range(stage["repeats"]):
            block = BLOCKS[kind](
                c_in, stage["channels"],
                expand=stage.get("expand", 1), kernel=stage.get("kernel", 3),
                stride=stage["stride"] if repeat == 0 else 1, se=stage.get("se", 0.0),
                divisor=int(table.get("divisor", 8)), activation=activation, norm=norm,
                # Stochastic depth grows linearly with the block index (Huang et al. 2016).
                drop_prob=max_drop * index / total,
            )
            c_in = block.out_channels
            blocks.append(block)
            index += 1
        stages.append(nn.Sequential(*blocks))
    return stages, c_in


def build_model(table: dict[str, Any], num_classes: int = 1000, in_channels: int = 3) -> nn.Module:
    """Build the network a scaled stage table describes."""
    family = table["family"]
    if family not in FAMILIES:
        raise UserError(f"baseline.family: unknown {family!r}; expected {', '.join(FAMILIES)}")
    activation = ACTIVATIONS.get(table["activation"])
    if activation is None:
        raise UserError(f"baseline.activation: unknown {table['activation']!r}; expected one of {sorted(ACTIVATIONS)}")
    bn = table.get("bn") or {}
    momentum = bn.get("momentum", 0.1)  # null: BatchNorm's cumulative average
    momentum = None if momentum is None else float(momentum)
    norm = partial(nn.BatchNorm2d, eps=float(bn.get("eps", 1e-5)), momentum=momentum)
    stem = table["stem"]
    stem_channels = stem["channels"]
    dropout = float(table.get("dropout", 0.0))

    if family == "resnet":
        stem_modules = {
            "conv1": nn.Conv2d(in_channels, stem_channels, stem["kernel"], stride=stem["stride"],
                               padding=stem["kernel"] // 2, bias=False),
            "bn1": norm(stem_channels),
            "relu": activation(inplace=True),
            "maxpool": nn.MaxPool2d(3, stride=2, padding=1),
        }
        layers, c_last = _stages(table, stem_channels, activation, norm)
        model: nn.Module = ResNet(stem_modules, layers, nn.Linear(c_last, num_classes), table["resolution"], dropout)
    else:
        stem_layer = Conv2dNormActivation(in_channels, stem_channels, stem["kernel"], stride=stem["stride"],
                                          norm_layer=norm, activation_layer=activation)
        stages, c_last = _stages(table, stem_channels, activation, norm)
        head = table["head"]["channels"]
        head_layer = Conv2dNormActivation(c_last, head, 1, norm_layer=norm, activation_layer=activation)
        body = stages if family == "efficientnet" else [block for stage in stages for block in stage]
        features = nn.Sequential(stem_layer, *body, head_layer)
        # torchvision's EfficientNet drops in place; MobileNetV2 does not (no parameter difference).
        classifier = nn.Sequential(nn.Dropout(dropout, inplace=family == "efficientnet"), nn.Linear(head, num_classes))
        model = ConvNet(features, classifier, table["resolution"])
    init_weights(model, LINEAR_INIT[family])
    return model
