"""`effscale finetune`: transfer learning from pretrained weights to any data set.

The recipe of Kornblith et al., "Do Better ImageNet Models Transfer Better?" (CVPR 2019), in two phases:

  1. a new classifier for the data set's classes is trained on the frozen network: no gradient reaches
     the backbone and its BatchNorms stay in eval mode, normalising with their ImageNet statistics;
  2. optionally (`finetune.unfreeze_epochs` > 0) everything is trained, the backbone at
     `finetune.backbone_lr_mult` × the head's learning rate, so the pretrained features move slowly.

The data module normalises images its own way (its mean/std, one channel for greyscale data). Rather
than force the pretrained normalisation on it, the stem convolution is re-expressed for the data's
normalisation (`adapt_stem`), which also turns an RGB stem into a greyscale one.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn


def stem_of(model: nn.Module) -> tuple[nn.Conv2d, nn.BatchNorm2d]:
    """The first convolution and the BatchNorm after it (EfficientNet/MobileNetV2 and ResNet layouts)."""
    if hasattr(model, "features"):
        return model.features[0][0], model.features[0][1]
    return model.conv1, model.bn1


@torch.no_grad()
def adapt_stem(model: nn.Module, trained_mean: Sequence[float], trained_std: Sequence[float],
               data_mean: Sequence[float], data_std: Sequence[float]) -> None:
    """Re-express the stem for input normalised as (x − data_mean) / data_std, so that it computes what it
    computed on the normalisation it was trained with, (x − trained_mean) / trained_std.

    For a pixel value x the trained stem saw x_c = (x − m_c) / s_c in each channel c. Writing x through
    the new input x' = (x − m') / s' gives, for output channel o,

        Σ_c w_oc · x_c = Σ_c (w_oc · s'/s_c) · x'  +  Σ_c Σ_kernel w_oc · (m' − m_c) / s_c

    so each kernel is scaled by s'/s_c and the constant second term, folded into the following
    BatchNorm's running mean, is subtracted there. Greyscale data (one channel) is the same sum over
    the RGB kernels: a grey image gives exactly what its three-channel copy gave the RGB stem. The
    identity holds wherever the kernel does not overlap the zero padding at the image border.
    """
    conv, bn = stem_of(model)
    weight = conv.weight.double()
    m, s = torch.tensor(trained_mean, dtype=torch.float64), torch.tensor(trained_std, dtype=torch.float64)
    m_new = torch.tensor(data_mean, dtype=torch.float64).expand(len(m)) if len(data_mean) == 1 \
        else torch.tensor(data_mean, dtype=torch.float64)
    s_new = torch.tensor(data_std, dtype=torch.float64).expand(len(s)) if len(data_std) == 1 \
        else torch.tensor(data_std, dtype=torch.float64)
    scaled = weight * (s_new / s).view(1, -1, 1, 1)
    offset = (weight.sum(dim=(2, 3)) * ((m_new - m) / s).view(1, -1)).sum(dim=1)
    if len(data_mean) == 1:
        scaled = scaled.sum(dim=1, keepdim=True)
        conv.in_channels = 1
    conv.weight = nn.Parameter(scaled.to(conv.weight.dtype))
    bn.running_mean -= offset.to(bn.running_mean.dtype)


def replace_classifier(model: nn.Module, num_classes: int) -> nn.Linear:
    """A fresh linear classifier for `num_classes`, initialised as torchvision initialises the family."""
    old = model.fc if hasattr(model, "fc") else model.classifier[-1]
    new = nn.Linear(old.in_features, num_classes)
    if not hasattr(model, "fc"):
        bound = 1.0 / num_classes**0.5  # torchvision EfficientNet: uniform ±1/√out, zero bias
        nn.init.uniform_(new.weight, -bound, bound)
        nn.init.zeros_(new.bias)
        model.classifier[-1] = new
    else:
        model.fc = new
    return new


def classifier_of(model: nn.Module) -> nn.Linear:
    return model.fc if hasattr(model, "fc") else model.classifier[-1]


def backbone_parameters(model: nn.Module) -> list[nn.Parameter]:
    head = {id(p) for p in classifier_of(model).parameters()}
    return [p for p in model.parameters() if id(p) not in head]


def set_backbone_trainable(model: nn.Module, trainable: bool) -> None:
    for p in backbone_parameters(model):
        p.requires_grad_(trainable)
