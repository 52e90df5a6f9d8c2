"""The builder against torchvision: same keys, shapes, parameter and MAC counts, same outputs."""

from functools import partial
from pathlib import Path

import pytest
import torch
import torchvision
import yaml
from torch import nn

from effscale.errors import UserError
from effscale.measure import count_macs_and_activations, count_params, measure_table
from effscale.models import build_model
from effscale.scaling import OFFICIAL_VARIANTS, scaled_baseline

CONF = Path(__file__).resolve().parent.parent / "conf" / "baseline"
VARIANTS = list(OFFICIAL_VARIANTS)


def baseline(name: str) -> dict:
    return yaml.safe_load((CONF / f"{name}.yaml").read_text())


def meta(builder, *args, **kwargs) -> nn.Module:
    with torch.device("meta"):
        return builder(*args, **kwargs)


def tv_weights_meta(variant: str) -> dict:
    return torchvision.models.get_model_weights(f"efficientnet_{variant}").IMAGENET1K_V1.meta


@pytest.mark.parametrize("variant", VARIANTS)
def test_efficientnet_variant_equals_torchvision(variant):
    table = scaled_baseline(baseline("efficientnet_b0"), {}, variant)
    ours = meta(build_model, table)
    theirs = meta(getattr(torchvision.models, f"efficientnet_{variant}"))
    assert {k: v.shape for k, v in ours.state_dict().items()} == {k: v.shape for k, v in theirs.state_dict().items()}
    assert count_params(ours) == count_params(theirs) == tv_weights_meta(variant)["num_params"]
    res = table["resolution"]
    assert count_macs_and_activations(ours, res) == count_macs_and_activations(theirs, res)
    # torchvision's published GFLOPS (really GMACs, at its eval size) for the same architecture
    assert count_macs_and_activations(ours, res)[0] / 1e9 == pytest.approx(tv_weights_meta(variant)["_ops"], abs=6e-4) \
        or variant == "b2"  # torchvision evaluates B2 at 288 px; we use the paper's 260 px


def test_b2_macs_at_torchvision_eval_size():
    table = scaled_baseline(baseline("efficientnet_b0"), {}, "b2")
    assert count_macs_and_activations(meta(build_model, table), 288)[0] / 1e9 == pytest.approx(1.088, abs=6e-4)


def test_b7_has_66_347_960_params():
    table = scaled_baseline(baseline("efficientnet_b0"), {}, "b7")
    assert count_params(meta(build_model, table)) == 66_347_960


def copy_and_compare(ours: nn.Module, theirs: nn.Module, resolution: int, channels: int = 3) -> float:
    torch.manual_seed(0)
    for p in theirs.parameters():  # non-trivial BN stats too, so eval mode is really exercised
        nn.init.normal_(p, 0, 0.1)
    for m in theirs.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    ours.load_state_dict(theirs.state_dict())  # strict: every key and shape must match
    ours.eval(), theirs.eval()
    x = torch.randn(2, channels, resolution, resolution)
    with torch.no_grad():
        return (ours(x) - theirs(x)).abs().max().item()


@pytest.mark.parametrize("variant", ["b0", "b3"])
def test_efficientnet_same_weights_identical_logits(variant):
    table = scaled_baseline(baseline("efficientnet_b0"), {}, variant)
    theirs = getattr(torchvision.models, f"efficientnet_{variant}")(norm_layer=partial(nn.BatchNorm2d, eps=1e-3))
    assert copy_and_compare(build_model(table), theirs, 64) == 0.0


def test_torchvision_b0_eps_override_gives_identical_logits():
    # torchvision trained its own B0 with BatchNorm eps 1e-5; the table's bn.eps reproduces it.
    table = scaled_baseline({**baseline("efficientnet_b0"), "bn": {"eps": 1e-5}}, {}, "b0")
    assert copy_and_compare(build_model(table), torchvision.models.efficientnet_b0(), 64) == 0.0


@pytest.mark.parametrize("width", [0.5, 0.75, 1.0, 1.4])
def test_mobilenet_v2_widths_equal_torchvision(width):
    table = scaled_baseline(baseline("mobilenet_v2"), {"width": width})
    ours, theirs = build_model(table), torchvision.models.mobilenet_v2(width_mult=width)
    assert count_params(ours) == count_params(theirs)
    assert count_macs_and_activations(ours, 224) == count_macs_and_activations(theirs, 224)
    assert copy_and_compare(ours, theirs, 64) == 0.0


def test_mobilenet_v2_published_numbers():
    # torchvision's weights card: 3,504,872 params and 0.301 GMACs at 224 px.
    ours = meta(build_model, scaled_baseline(baseline("mobilenet_v2"), {}))
    assert count_params(ours) == 3_504_872
    assert count_macs_and_activations(ours, 224)[0] / 1e9 == pytest.approx(0.301, abs=6e-4)


@pytest.mark.parametrize("name", ["resnet18", "resnet34", "resnet50", "resnet101", "resnet152"])
def test_resnets_equal_torchvision(name):
    table = scaled_baseline(baseline(name), {})
    ours, theirs = meta(build_model, table), meta(getattr(torchvision.models, name))
    assert {k: v.shape for k, v in ours.state_dict().items()} == {k: v.shape for k, v in theirs.state_dict().items()}
    meta_card = torchvision.models.get_model_weights(name).IMAGENET1K_V1.meta
    assert count_params(ours) == count_params(theirs) == meta_card["num_params"]
    assert count_macs_and_activations(ours, 224) == count_macs_and_activations(theirs, 224)
    assert count_macs_and_activations(ours, 224)[0] / 1e9 == pytest.approx(meta_card["_ops"], abs=6e-4)


@pytest.mark.parametrize("name", ["resnet18", "resnet50"])
def test_resnet_same_weights_identical_logits(name):
    assert copy_and_compare(build_model(scaled_baseline(baseline(name), {})),
                            getattr(torchvision.models, name)(), 64) == 0.0


def test_lite0_has_no_se_relu6_and_fixed_stem_head():
    table = scaled_baseline(baseline("efficientnet_lite0"), {"width": 1.4})
    model = meta(build_model, table)
    assert not any(type(m).__name__ == "SqueezeExcitation" for m in model.modules())
    assert any(isinstance(m, nn.ReLU6) for m in model.modules()) and not any(isinstance(m, nn.SiLU) for m in model.modules())
    assert model.features[0][0].out_channels == 32 and model.features[-1][0].out_channels == 1280
    # Lite0 at width 1: 4,652,008 params (TF TPU repo's efficientnet-lite0, 1000 classes)
    assert count_params(meta(build_model, scaled_baseline(baseline("efficientnet_lite0"), {}))) == 4_652_008


# Lite1…Lite4 as the TF TPU repo builds them (efficientnet_lite_builder.py: fix_head_stem keeps the first
# and last stage's repeats; Lite3 and Lite4 at 280 and 300 px, dropout 0.3); its README lists 5.4M, 6.1M,
# 8.2M and 13.0M parameters.
@pytest.mark.parametrize("variant, params, repeats, resolution, dropout", [
    ("b1", 5_416_680, [1, 3, 3, 4, 4, 5, 1], 240, 0.2),
    ("b2", 6_092_072, [1, 3, 3, 4, 4, 5, 1], 260, 0.3),
    ("b3", 8_197_096, [1, 3, 3, 5, 5, 6, 1], 280, 0.3),
    ("b4", 13_006_568, [1, 4, 4, 6, 6, 8, 1], 300, 0.3),
])
def test_lite_variants_keep_the_first_and_last_stage_and_take_lites_own_sizes(variant, params, repeats,
                                                                             resolution, dropout):
    table = scaled_baseline(baseline("efficientnet_lite0"), {}, variant)
    assert [s["repeats"] for s in table["stages"]] == repeats
    assert (table["resolution"], table["dropout"]) == (resolution, dropout)
    assert count_params(meta(build_model, table)) == params


def test_lite_has_no_variant_past_lite4():
    from effscale.scaling import ScalingError

    with pytest.raises(ScalingError, match="variant: unknown 'b5'; expected one of b0, b1, b2, b3, b4"):
        scaled_baseline(baseline("efficientnet_lite0"), {}, "b5")


def test_num_classes_and_in_channels_from_config():
    model = build_model(scaled_baseline(baseline("efficientnet_b0"), {}), num_classes=10, in_channels=1)
    assert model(torch.randn(2, 1, 32, 32)).shape == (2, 10)
    assert model.features[0][0].in_channels == 1


def test_unknown_family_is_the_config_checks_line():
    table = {**scaled_baseline(baseline("efficientnet_b0"), {}), "family": "vgg"}
    expected = "^baseline.family: unknown 'vgg'; expected efficientnet, mobilenet_v2, resnet$"
    with pytest.raises(UserError, match=expected):
        build_model(table)


def test_a_null_batch_norm_momentum_is_a_cumulative_average():
    table = scaled_baseline(baseline("efficientnet_b0"), {})
    model = meta(build_model, {**table, "bn": {"eps": 1e-3, "momentum": None}})
    assert {m.momentum for m in model.modules() if isinstance(m, nn.BatchNorm2d)} == {None}


def test_stochastic_depth_grows_linearly_to_0_2():
    model = meta(build_model, scaled_baseline(baseline("efficientnet_b0"), {}))
    probs = [m.p for m in model.modules() if type(m).__name__ == "StochasticDepth"]
    assert probs == pytest.approx([0.2 * i / 16 for i in range(16)])  # torchvision's: 0.2 · block / blocks


def test_measure_cheap_and_labelled():
    table = scaled_baseline(baseline("efficientnet_b0"), {}, "b0")
    m = measure_table(table, build_model)
    assert m.flops == 2 * m.macs and m.params == 5_288_548
    assert m.activations == 6_748_036  # pycls reports 6.7M for EfficientNet-B0
    # peak training memory of batch 32 at 224 px: weights+grads+momentum (61 MB) + saved activations
    assert 2000 < m.peak_mem_mb < 4000
