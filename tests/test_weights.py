"""Pretrained weights in every format load into effscale's builder and give torchvision's logits bit for bit;
files that are not plain weights, or do not fit, are refused with one line."""

import builtins
import pickle
from functools import partial

import numpy as np
import pytest
import torch
import torchvision
from torch import nn

from effscale.errors import UserError
from effscale.images import to_8bit
from effscale.weights import Preprocessing, imagenet_file, load_pretrained, read_checkpoint, save_checkpoint


def randomised(model: nn.Module) -> nn.Module:
    """Random weights and BN statistics, so that every tensor (and eval-mode BN) matters."""
    torch.manual_seed(0)
    for p in model.parameters():
        nn.init.normal_(p, 0, 0.1)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    return model.eval()


def torchvision_efficientnet(variant: str, eps: float | None = None) -> nn.Module:
    builder = getattr(torchvision.models, f"efficientnet_{variant}")
    return randomised(builder(norm_layer=partial(nn.BatchNorm2d, eps=eps)) if eps else builder())


def same_logits(ours: nn.Module, theirs: nn.Module, resolution: int = 64) -> bool:
    x = torch.randn(2, 3, resolution, resolution)
    with torch.no_grad():
        return torch.equal(ours.eval()(x), theirs.eval()(x))


# --- the test's own renaming: torchvision's EfficientNet keys → the other formats' ------------------

def roles(stage: int) -> dict[int, tuple[str, ...]]:
    """What torchvision's block.<i> is in a block of this stage: B0's first stage has no expand conv."""
    if stage == 1:
        return {0: ("depthwise",), 1: ("se",), 2: ("project",)}
    return {0: ("expand",), 1: ("depthwise",), 2: ("se",), 3: ("project",)}


EFFICIENTNET_PYTORCH = {"expand": ("_expand_conv", "_bn0"), "depthwise": ("_depthwise_conv", "_bn1"),
                        "project": ("_project_conv", "_bn2"), "se": ("_se_reduce", "_se_expand")}
TIMM_INVERTED_RESIDUAL = {"expand": ("conv_pw", "bn1"), "depthwise": ("conv_dw", "bn2"),
                          "project": ("conv_pwl", "bn3"), "se": ("se.conv_reduce", "se.conv_expand")}
TIMM_DEPTHWISE_SEPARABLE = {"depthwise": ("conv_dw", "bn1"), "project": ("conv_pw", "bn2"),
                            "se": ("se.conv_reduce", "se.conv_expand")}


def renamed(state_dict: dict, fmt: str) -> dict:
    """torchvision keys renamed to efficientnet_pytorch's or timm's (an independent, explicit mapping)."""
    last = max(int(k.split(".")[1]) for k in state_dict if k.startswith("features."))
    blocks = sorted({(int(k.split(".")[1]), int(k.split(".")[2])) for k in state_dict
                     if k.startswith("features.") and 0 < int(k.split(".")[1]) < last})
    flat = {sb: n for n, sb in enumerate(blocks)}
    stem, head, fc = (("_conv_stem", "_bn0"), ("_conv_head", "_bn1"), "_fc") if fmt == "efficientnet_pytorch" \
        else (("conv_stem", "bn1"), ("conv_head", "bn2"), "classifier")
    out = {}
    for key, value in state_dict.items():
        parts = key.split(".")
        param = parts[-1]
        if key.startswith("classifier."):
            out[f"{fc}.{param}"] = value
        elif parts[1] in ("0", str(last)):
            out[f"{(stem if parts[1] == '0' else head)[int(parts[2])]}.{param}"] = value
        else:
            stage, block, i, sub = int(parts[1]), int(parts[2]), int(parts[4]), parts[5]
            (role,) = roles(stage)[i]
            if fmt == "efficientnet_pytorch":
                names, prefix = EFFICIENTNET_PYTORCH, f"_blocks.{flat[stage, block]}"
            else:
                names = TIMM_DEPTHWISE_SEPARABLE if stage == 1 else TIMM_INVERTED_RESIDUAL
                prefix = f"blocks.{stage - 1}.{block}"
            # Conv2dNormActivation: .0 conv, .1 BN; SqueezeExcitation: fc1 reduce, fc2 expand.
            which = {"0": 0, "1": 1, "fc1": 0, "fc2": 1}[sub]
            out[f"{prefix}.{names[role][which]}.{param}"] = value
    return out


@pytest.mark.parametrize("variant", ["b0", "b3"])
def test_efficientnet_pytorch_keys_load_bit_for_bit(tmp_path, variant):
    theirs = torchvision_efficientnet(variant, eps=1e-3)  # TF ports use BN eps 1e-3
    torch.save(renamed(theirs.state_dict(), "efficientnet_pytorch"), tmp_path / "w.pth")
    loaded = load_pretrained(str(tmp_path / "w.pth"))
    assert loaded.format == "efficientnet_pytorch" and loaded.table["variant"] == variant
    assert loaded.table["bn"]["eps"] == 1e-3
    assert same_logits(loaded.model, theirs)


def test_timm_keys_with_depthwise_separable_first_block_load_bit_for_bit(tmp_path):
    theirs = torchvision_efficientnet("b0")  # timm's own efficientnet_b0 trained with eps 1e-5
    state = renamed(theirs.state_dict(), "timm")
    assert "blocks.0.0.conv_dw.weight" in state and "blocks.1.0.conv_pwl.weight" in state
    torch.save(state, tmp_path / "w.pth")
    loaded = load_pretrained(str(tmp_path / "w.pth"))
    assert loaded.format == "timm" and loaded.table["bn"]["eps"] == 1e-5
    assert same_logits(loaded.model, theirs)


@pytest.mark.parametrize("name, mean", [
    ("tf_efficientnet_b0_ap-f262efe1.pth", (0.5,) * 3),  # AdvProp: inputs in [-1, 1]
    ("models--timm--tf_efficientnet_b0.ns_jft_in1k/model.pth", (0.485, 0.456, 0.406)),
])
def test_a_timm_port_of_tensorflow_weights_named_tf_is_read_with_tensorflows_eps_and_mean(tmp_path, name, mean):
    theirs = torchvision_efficientnet("b0", eps=1e-3)  # timm's tf_ ports keep TensorFlow's BN eps
    path = tmp_path / name
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(renamed(theirs.state_dict(), "timm"), path)
    loaded = load_pretrained(str(path))
    assert loaded.format == "timm" and loaded.table["bn"]["eps"] == 1e-3
    assert same_logits(loaded.model, theirs)
    assert loaded.preprocessing.mean == mean and loaded.preprocessing.crop == 224


@pytest.mark.parametrize("name, resize, interpolation", [
    ("efficientnet_b1-c27df63c.pth", 255, "bilinear"),  # IMAGENET1K_V2, as torchvision names its download
    ("efficientnet_b1_rwightman-bac287d4.pth", 256, "bicubic"),  # IMAGENET1K_V1
    ("my_b1.pth", 256, "bicubic"),  # a name torchvision does not use: V1, the weights `imagenet` reads
])
def test_torchvision_weights_are_prepared_as_torchvision_evaluates_the_file_they_are(tmp_path, name, resize,
                                                                                      interpolation):
    torch.save(torchvision.models.efficientnet_b1().state_dict(), tmp_path / name)
    loaded = load_pretrained(str(tmp_path / name))
    assert loaded.table["variant"] == "b1"
    assert (loaded.preprocessing.resize, loaded.preprocessing.crop) == (resize, 240)
    assert loaded.preprocessing.interpolation == interpolation


def test_torchvision_b0_file_gives_torchvision_logits(tmp_path):
    theirs = torchvision_efficientnet("b0")
    torch.save(theirs.state_dict(), tmp_path / "b0.pth")
    loaded = load_pretrained(str(tmp_path / "b0.pth"))
    assert (loaded.format, loaded.table["name"], loaded.table["variant"]) == ("torchvision", "efficientnet_b0", "b0")
    assert loaded.table["bn"]["eps"] == 1e-5  # torchvision trained B0–B4 with PyTorch's default
    assert same_logits(loaded.model, theirs)
    assert loaded.preprocessing == Preprocessing(256, 224, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225), "bicubic")
    assert len(loaded.class_names) == 1000 and loaded.class_names[281] == "tabby"


def test_imagenet_reads_torchvision_file_from_torch_hub_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    theirs = torchvision_efficientnet("b0")
    cache = tmp_path / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    torch.save(theirs.state_dict(), cache / "efficientnet_b0_rwightman-7f5810bc.pth")
    assert same_logits(load_pretrained("imagenet").model, theirs)


def test_imagenet_missing_says_where_to_put_the_file(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(UserError) as err:
        imagenet_file(download=False)
    message = str(err.value)
    assert str(tmp_path / "hub" / "checkpoints") in message and "efficientnet_b0_rwightman-7f5810bc.pth" in message
    assert "https://download.pytorch.org/models/efficientnet_b0_rwightman-7f5810bc.pth" in message


def test_lightning_checkpoint_with_prefixed_keys_loads(tmp_path):
    theirs = torchvision_efficientnet("b0")
    state = {f"network.{k}": v for k, v in theirs.state_dict().items()}
    torch.save({"state_dict": state, "epoch": 3}, tmp_path / "last.ckpt")
    assert same_logits(load_pretrained(str(tmp_path / "last.ckpt")).model, theirs)


def test_torchvision_mobilenet_v2_is_recognised_by_its_shapes(tmp_path):
    theirs = randomised(torchvision.models.mobilenet_v2())
    torch.save({"state_dict": theirs.state_dict()}, tmp_path / "m.pth")  # a common wrapper
    loaded = load_pretrained(str(tmp_path / "m.pth"))
    assert loaded.table["name"] == "mobilenet_v2" and same_logits(loaded.model, theirs)


def test_a_file_without_num_batches_tracked_loads_as_torchs_strict_load_does(tmp_path):
    """Files saved before PyTorch 0.4.1 have no BatchNorm num_batches_tracked; any other missing tensor is refused."""
    theirs = torchvision_efficientnet("b0")
    state = {k: v for k, v in theirs.state_dict().items() if not k.endswith(".num_batches_tracked")}
    assert len(state) < len(theirs.state_dict())
    torchvision.models.efficientnet_b0().load_state_dict(state)  # strict
    torch.save(state, tmp_path / "old.pth")
    loaded = load_pretrained(str(tmp_path / "old.pth"))
    assert (loaded.format, loaded.table["name"], loaded.table["variant"]) == ("torchvision", "efficientnet_b0", "b0")
    assert same_logits(loaded.model, theirs)
    del state["features.1.0.block.0.1.running_mean"]
    torch.save(state, tmp_path / "old.pth")
    with pytest.raises(UserError, match=r"b0: features\.1\.0\.block\.0\.1\.running_mean is missing from the file$"):
        load_pretrained(str(tmp_path / "old.pth"), baseline="efficientnet_b0", variant="b0")


# --- refusals --------------------------------------------------------------------------------------


class CreatesMarker:
    """Unpickling this would create a file: proof that a loader ran code from the checkpoint."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return builtins.open, (self.marker, "w")


def test_pickled_code_is_refused_and_never_run(tmp_path):
    marker = tmp_path / "code-ran"
    torch.save({"weight": torch.zeros(1), "payload": CreatesMarker(marker)}, tmp_path / "evil.pth")
    with open(tmp_path / "evil.pth", "rb"):  # sanity: torch.save did not run it either
        assert not marker.exists()
    with pytest.raises(UserError) as err:
        load_pretrained(str(tmp_path / "evil.pth"))
    assert "evil.pth: refused: not a plain weights file (torch.load weights_only=True failed: " in str(err.value)
    assert "GLOBAL" in str(err.value) and "\n" not in str(err.value)
    assert not marker.exists()


class Custom:
    def __init__(self):
        self.weight = torch.ones(2)


def test_custom_class_instance_is_refused(tmp_path):
    torch.save({"model": Custom()}, tmp_path / "custom.pth")
    with pytest.raises(UserError, match=r"refused: not a plain weights file .*Custom"):
        read_checkpoint(tmp_path / "custom.pth")


def test_plain_pickle_with_code_is_refused(tmp_path):
    marker = tmp_path / "code-ran"
    (tmp_path / "evil.pkl").write_bytes(pickle.dumps({"x": CreatesMarker(marker)}))
    with pytest.raises(UserError, match="refused"):
        read_checkpoint(tmp_path / "evil.pkl")
    assert not marker.exists()


def test_truncated_file_names_the_file(tmp_path):
    torch.save(torchvision_efficientnet("b0").state_dict(), tmp_path / "full.pth")
    data = (tmp_path / "full.pth").read_bytes()
    (tmp_path / "cut.pth").write_bytes(data[: len(data) // 2])
    with pytest.raises(UserError, match=r"cut\.pth: truncated or corrupt weights file"):
        load_pretrained(str(tmp_path / "cut.pth"))


@pytest.mark.parametrize("content, needle", [
    (b"", "truncated or corrupt"),
    (bytes(range(256)) * 4, "not a weights file, or corrupt"),
])
def test_corrupt_file_names_the_file(tmp_path, content, needle):
    (tmp_path / "bad.pth").write_bytes(content)
    with pytest.raises(UserError, match=f"bad.pth: {needle}"):
        load_pretrained(str(tmp_path / "bad.pth"))


def test_a_photo_given_as_weights_is_one_short_reason_without_torchs_advice_or_a_cut_link(tmp_path):
    from PIL import Image

    Image.new("RGB", (8, 8)).save(tmp_path / "photo.jpg")
    with pytest.raises(UserError) as err:
        load_pretrained(str(tmp_path / "photo.jpg"))
    assert str(err.value) == f"{tmp_path / 'photo.jpg'}: not a weights file, or corrupt (Unsupported operand 255)"


@pytest.mark.parametrize("obj, needle", [
    ([1, 2, 3], "got a list"),
    ({"lr": 0.1}, "whose 'lr' holds float, not a tensor"),
    ({"features.0.0.weight": torch.ones(1), "epoch": 3}, "whose 'epoch' holds int, not a tensor"),
])
def test_not_a_state_dict(tmp_path, obj, needle):
    torch.save(obj, tmp_path / "x.pth")
    with pytest.raises(UserError, match=f"x.pth: not a state dict .*{needle}"):
        load_pretrained(str(tmp_path / "x.pth"))


def test_unknown_key_layout(tmp_path):
    torch.save({"encoder.weight": torch.ones(2)}, tmp_path / "x.pth")
    with pytest.raises(UserError, match="unrecognised weights .*encoder.weight"):
        load_pretrained(str(tmp_path / "x.pth"))


def test_wrong_architecture_names_first_mismatching_key_with_both_shapes(tmp_path):
    torch.save(torchvision_efficientnet("b0").state_dict(), tmp_path / "b0.pth")
    with pytest.raises(UserError) as err:
        load_pretrained(str(tmp_path / "b0.pth"), baseline="efficientnet_b0", variant="b3")
    assert str(err.value) == (f"{tmp_path / 'b0.pth'}: torchvision weights do not fit efficientnet_b0 variant=b3: "
                              "features.0.0.weight has shape (32, 3, 3, 3) in the file, (40, 3, 3, 3) in the model")


def test_a_variant_alone_is_the_variant_asked_for_not_the_first_one_the_weights_fit(tmp_path):
    torch.save(torchvision_efficientnet("b0").state_dict(), tmp_path / "b0.pth")
    assert load_pretrained(str(tmp_path / "b0.pth")).table["variant"] == "b0"
    with pytest.raises(UserError, match="fit none of efficientnet_b0 variant=b1 … efficientnet_lite0 variant=b1; "):
        load_pretrained(str(tmp_path / "b0.pth"), variant="b1")


def test_changed_tensor_is_named_with_the_files_own_key(tmp_path):
    state = renamed(torchvision_efficientnet("b0", eps=1e-3).state_dict(), "efficientnet_pytorch")
    state["_blocks.3._depthwise_conv.weight"] = torch.zeros(144, 1, 3, 3)  # B0's fourth block is 5×5
    torch.save(state, tmp_path / "w.pth")
    with pytest.raises(UserError) as err:
        load_pretrained(str(tmp_path / "w.pth"), baseline="efficientnet_b0", variant="b0")
    assert ("features.3.0.block.1.0.weight (_blocks.3._depthwise_conv.weight) has shape (144, 1, 3, 3) "
            "in the file, (144, 1, 5, 5) in the model") in str(err.value)


def test_se_weights_into_lite_baseline_say_what_differs(tmp_path):
    state = renamed(torchvision_efficientnet("b0", eps=1e-3).state_dict(), "efficientnet_pytorch")
    torch.save(state, tmp_path / "w.pth")
    with pytest.raises(UserError, match="block 0 has layers conv_bn/se/conv_bn in the file, conv_bn/conv_bn in the model"):
        load_pretrained(str(tmp_path / "w.pth"), baseline="efficientnet_lite0")


def test_a_stem_of_neither_1_nor_3_channels_is_refused_in_one_line(tmp_path):
    theirs = torchvision.models.efficientnet_b0(num_classes=10)
    theirs.features[0][0] = nn.Conv2d(4, 32, 3, 2, 1, bias=False)
    torch.save(theirs.state_dict(), tmp_path / "rgba.pth")
    with pytest.raises(UserError) as err:
        load_pretrained(str(tmp_path / "rgba.pth"))
    assert str(err.value) == (f"{tmp_path / 'rgba.pth'}: the weights' stem takes 4 input channels; "
                              "images give 1 (greyscale) or 3 (RGB)")


def test_weights_with_nan_or_inf_are_refused_naming_the_first_such_tensor(tmp_path):
    state = torchvision_efficientnet("b0").state_dict()
    state["features.2.0.block.1.1.running_var"][3] = float("inf")
    state["classifier.1.bias"][0] = float("nan")
    torch.save(state, tmp_path / "b0.pth")
    with pytest.raises(UserError) as err:
        load_pretrained(str(tmp_path / "b0.pth"))
    assert str(err.value) == f"{tmp_path / 'b0.pth'}: non-finite weights: features.2.0.block.1.1.running_var holds " \
                             "NaN or infinity"


# --- effscale's own checkpoints -----------------------------------------------------------------------


def test_effscale_checkpoint_round_trip_keeps_names_and_preprocessing(tmp_path):
    from effscale.weights import architecture
    from effscale.models import build_model

    table = architecture("efficientnet_lite0")
    model = randomised(build_model(table, num_classes=3, in_channels=1))
    prep = Preprocessing(64, 64, (0.5,), (0.25,), "bilinear")
    path = save_checkpoint(tmp_path / "ckpt" / "model.pt", model, table, ["a", "b", "c"], prep, val_acc=0.5)
    assert [p.name for p in path.parent.iterdir()] == ["model.pt"]  # no temporary file left behind
    loaded = load_pretrained(str(path))
    assert (loaded.format, loaded.class_names, loaded.preprocessing) == ("effscale", ["a", "b", "c"], prep)
    assert loaded.extra["val_acc"] == 0.5
    x = torch.randn(2, 1, 64, 64)
    with torch.no_grad():
        assert torch.equal(loaded.model(x), model(x))
    with pytest.raises(UserError, match="carries its own architecture; leave out --baseline and --variant$"):
        load_pretrained(str(path), variant="b3")


def lite0_checkpoint(path, **changes):
    """An effscale checkpoint of a 3-class Lite0, with `changes` made to what it records."""
    from effscale.models import build_model
    from effscale.weights import architecture

    table = architecture("efficientnet_lite0")
    save_checkpoint(path, build_model(table, num_classes=3), table, ["a", "b", "c"],
                    Preprocessing(64, 64, (0.5,) * 3, (0.25,) * 3, "bilinear"))
    payload = torch.load(path, weights_only=True)
    for key, change in changes.items():
        payload[key] = change(payload[key]) if callable(change) else change
    torch.save(payload, path)
    return path


@pytest.mark.parametrize("key, value, message", [
    ("class_names", None, "class_names: expected a list of one or more class names, got None"),
    ("class_names", [], "class_names: expected a list of one or more class names, got []"),
    ("preprocessing", {"resize": 64}, "preprocessing.crop: missing"),
    ("table", None, "table: expected a mapping of keys, got None"),
])
def test_an_effscale_checkpoint_with_a_broken_entry_names_that_entry(tmp_path, key, value, message):
    path = lite0_checkpoint(tmp_path / "model.pt", **{key: value})
    with pytest.raises(UserError) as err:
        load_pretrained(str(path))
    assert str(err.value) == f"{path}: effscale checkpoint: {message}"


@pytest.mark.parametrize("key, change, message", [
    ("preprocessing", lambda p: {**p, "interpolation": "nope"}, "preprocessing.interpolation: expected one of "
     "nearest, nearest-exact, bilinear, bicubic, box, hamming, lanczos, got 'nope'"),
    ("preprocessing", lambda p: {**p, "resize": 0}, "preprocessing.resize: expected an integer from 1 to 4096, got 0"),
    ("preprocessing", lambda p: {**p, "crop": -64}, "preprocessing.crop: expected an integer from 1 to 4096, got -64"),
    # a million pixels a side would be terabytes of pixels before the model saw one
    ("preprocessing", lambda p: {**p, "resize": 10**6, "crop": 10**6},
     "preprocessing.resize: expected an integer from 1 to 4096, got 1000000"),
    ("preprocessing", lambda p: {**p, "std": [0.25, 0.0, 0.25]},
     "preprocessing.std: expected a list of one or more numbers above 0, got [0.25, 0.0, 0.25]"),
    ("preprocessing", lambda p: {k: v for k, v in p.items() if k != "mean"}, "preprocessing.mean: missing"),
    ("table", lambda t: {k: v for k, v in t.items() if k != "family"}, "table.family: missing"),
    ("table", lambda t: {k: v for k, v in t.items() if k != "stages"}, "table.stages: missing"),
    ("table", lambda t: {**t, "stages": t["stages"][:2] + [{**t["stages"][2], "repeats": -1}]},
     "table.stages[2].repeats: expected an integer of at least 1, got -1"),
    ("table", lambda t: {**t, "activation": "gelu"},
     "table.activation: expected one of hardswish, relu, relu6, silu, got 'gelu'"),
])
def test_damaged_preprocessing_or_stage_table_is_one_line_naming_the_checkpoint_and_field(tmp_path, key, change,
                                                                                          message):
    path = lite0_checkpoint(tmp_path / "model.pt", **{key: change})
    with pytest.raises(UserError) as err:
        load_pretrained(str(path))
    assert str(err.value).startswith(f"{path}: effscale checkpoint: {message}") and "\n" not in str(err.value)


@pytest.mark.parametrize("changes, message", [
    ({"format": "effscal"}, "an effscale checkpoint's entries (table, class_names, preprocessing) with format "
                            "'effscal'; expected format 'effscale'"),
    ({"format": 1}, "an effscale checkpoint's entries (table, class_names, preprocessing) with format 1; "
                    "expected format 'effscale'"),
    ({"version": "x"}, "effscale checkpoint: version: expected an integer of at least 1, got 'x'"),
    ({"version": 0}, "effscale checkpoint: version: expected an integer of at least 1, got 0"),
    ({"version": 2}, "effscale checkpoint version 2 is newer than this effscale reads (1); upgrade effscale"),
])
def test_an_effscale_checkpoint_of_another_format_or_version_is_refused_not_read_as_torchvision(tmp_path, changes,
                                                                                               message):
    path = lite0_checkpoint(tmp_path / "model.pt", **changes)
    with pytest.raises(UserError) as err:
        load_pretrained(str(path))
    assert str(err.value) == f"{path}: {message}"


def test_an_effscale_checkpoint_without_format_or_version_is_refused(tmp_path):
    path = lite0_checkpoint(tmp_path / "model.pt")
    payload = torch.load(path, weights_only=True)
    torch.save({k: v for k, v in payload.items() if k != "format"}, path)
    with pytest.raises(UserError, match=r"model.pt: an effscale checkpoint's entries .* with no format; expected "):
        load_pretrained(str(path))
    torch.save({k: v for k, v in payload.items() if k != "version"}, path)
    with pytest.raises(UserError, match="model.pt: effscale checkpoint: version: expected an integer of at least 1, "
                                        "got None$"):
        load_pretrained(str(path))


def test_a_wrapper_of_ones_own_with_class_names_is_read_as_a_wrapper(tmp_path):
    from effscale.models import build_model
    from effscale.weights import architecture

    state = build_model(architecture("efficientnet_lite0"), num_classes=1000).state_dict()
    torch.save({"model": state, "class_names": ["cat", "dog"]}, tmp_path / "wrapped.pth")
    assert load_pretrained(str(tmp_path / "wrapped.pth")).format == "torchvision"


def test_an_effscale_checkpoint_with_nan_weights_is_refused(tmp_path):
    def poisoned(state):
        state["features.0.0.weight"][0, 0, 0, 0] = float("nan")
        return state

    path = lite0_checkpoint(tmp_path / "model.pt", state_dict=poisoned)
    with pytest.raises(UserError, match=r"model.pt: non-finite weights: features\.0\.0\.weight holds NaN or infinity$"):
        load_pretrained(str(path))


@pytest.mark.parametrize("key, value, message", [
    ("channels", 10**7, r"features\.1\.0\.block\.1\.0\.weight has shape \(16, 32, 1, 1\) in the file, \(10000000, 32, 1, 1\) "),
    ("repeats", 10**7, "the table has 10000015 blocks, the file 296 tensors$"),
])
def test_a_stage_table_asking_for_millions_of_channels_or_blocks_is_refused_before_allocating(tmp_path, key, value,
                                                                                              message):
    def enlarged(table):
        return {**table, "stages": [{**table["stages"][0], key: value}, *table["stages"][1:]]}

    path = lite0_checkpoint(tmp_path / "model.pt", table=enlarged)
    with pytest.raises(UserError, match=f"model.pt: weights do not fit the checkpoint's own stage table: {message}"):
        load_pretrained(str(path))


# --- images of more than 8 bits -------------------------------------------------------------------------

GREY = np.arange(256, dtype=np.uint8).reshape(16, 16)  # every 8-bit value once


@pytest.mark.parametrize("pixels, mode", [
    (GREY.astype(np.uint16) * 257, "I;16"),
    ((GREY.astype(np.uint16) * 257).astype(">u2"), "I;16B"),
    (GREY.astype(np.int32) * 257, "I"),
    (GREY.astype(np.int32), "I"),  # values within 0…255 are 8-bit values already
    (GREY.astype(np.float32) / 255, "F"),
    (GREY.astype(np.float32), "F"),
], ids=["I;16", "I;16B", "I 16-bit", "I 8-bit", "F 0-1", "F 0-255"])
def test_16_and_32_bit_greyscale_keep_their_range_in_8_bits(pixels, mode):
    from PIL import Image

    image = Image.fromarray(pixels)
    assert image.mode == mode
    assert np.array_equal(np.asarray(to_8bit(image, "L")), GREY)
    assert np.array_equal(np.asarray(to_8bit(image, "RGB")), np.stack([GREY] * 3, axis=-1))


@pytest.mark.parametrize("mode", ["RGBA", "LA", "P"])
def test_a_transparent_image_is_laid_on_white_not_on_its_hidden_black(mode):
    from PIL import Image

    # left half transparent black, right half opaque grey 100: a logo cut out of its background
    rgba = np.zeros((8, 8, 4), dtype=np.uint8)
    rgba[:, 4:] = (100, 100, 100, 255)
    image = Image.fromarray(rgba, "RGBA")
    if mode == "P":
        image = image.convert("RGB").quantize(2)
        image.info["transparency"] = image.getpixel((0, 0))
    else:
        image = image.convert(mode)
    for out in ("L", "RGB"):
        pixels = np.asarray(to_8bit(image, out)).astype(int)
        assert (pixels[:, :4] == 255).all() and (pixels[:, 4:] == 100).all()


@pytest.mark.parametrize("name", ["model.h5", "efficientnet-b0.keras", "lite0.tflite"])
def test_a_tensorflow_file_is_said_to_be_one_rather_than_corrupt(tmp_path, name):
    (tmp_path / name).write_bytes(b"\x89HDF\r\n\x1a\n" + bytes(64))
    with pytest.raises(UserError, match=f"{name}: a TensorFlow/Keras file; effscale reads PyTorch weights"):
        load_pretrained(str(tmp_path / name))


@pytest.mark.parametrize("spec", ["lite0", "missing.pth"])
def test_a_variant_the_baseline_does_not_have_is_one_line_before_any_file_is_looked_for(tmp_path, monkeypatch, spec):
    monkeypatch.chdir(tmp_path)  # missing.pth is not there; nor need the lite0 weights package be installed
    with pytest.raises(UserError, match="^--variant b5: efficientnet_lite0 has variants b0, b1, b2, b3, b4$"):
        load_pretrained(spec, baseline="efficientnet_lite0", variant="b5")
    with pytest.raises(UserError, match="^baseline=tinynet: no such option; available: efficientnet_b0, "):
        load_pretrained(spec, baseline="tinynet")


def test_a_failed_download_leaves_no_empty_cache_folders_behind(tmp_path, monkeypatch):
    def offline(url, dst, *args, **kwargs):
        raise OSError("Temporary failure in name resolution")

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    with pytest.raises(UserError, match="could not be downloaded \\(Temporary failure in name resolution\\)"):
        imagenet_file()
    assert not (tmp_path / "torch").exists()
