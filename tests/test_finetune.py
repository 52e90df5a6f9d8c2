"""Transfer learning: the stem re-expressed for the data's normalisation computes what it did before,
and fine-tuning the real pretrained Lite0 beats training from scratch with the same steps."""

import json
import re

import pytest
import torch

from effscale.errors import UserError
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
    replace_classifier(model, 10, "efficientnet")
    assert model(torch.randn(1, 3, 64, 64)).shape == (1, 10)
    assert torch.equal(model.features[-1][0].weight, before)


@pytest.mark.parametrize("baseline, std", [("efficientnet_b0", (1 / 10**0.5) / 3**0.5),  # uniform ±1/√out
                                           ("mobilenet_v2", 0.01),                         # normal, σ = 0.01
                                           ("resnet18", (1 / 512**0.5) / 3**0.5)])         # PyTorch's default
def test_new_classifier_is_drawn_as_torchvision_draws_the_familys(baseline, std):
    torch.manual_seed(0)
    model = build_model(architecture(baseline))
    new = replace_classifier(model, 10, architecture(baseline)["family"])
    assert new is (model.fc if baseline.startswith("resnet") else model.classifier[-1])
    assert new.weight.std().item() == pytest.approx(std, rel=0.05)


# --- the command end to end -----------------------------------------------------------------------

def finetune_config(tmp_path, *overrides):
    from effscale.config import compose, to_dict

    return to_dict(compose("finetune", [f"out={tmp_path}", "finetune.weights=lite0", "finetune.recipe.progress=false",
                                        *overrides]))


def test_head_phase_leaves_backbone_and_its_batchnorm_statistics_untouched(tmp_path):
    from effscale.finetune import finetune
    from effscale.procedural import PROCEDURAL_CLASSES
    from effscale.weights import load_pretrained

    cfg = finetune_config(tmp_path, "data=procedural", "data.train_size=64", "data.val_size=32", "data.test_size=32",
                          "data.resolution=32", "finetune.head_epochs=1", "finetune.recipe.limit_train_batches=2")
    result = finetune(cfg)
    before = load_pretrained("lite0").model.state_dict()
    after = load_pretrained(result["checkpoint"])
    changed = [k for k, v in after.model.state_dict().items()
               if not k.startswith(("classifier", "features.0.")) and not torch.equal(v, before[k])]
    assert changed == []  # running means and variances included: BatchNorm stayed in eval mode
    assert after.class_names == list(PROCEDURAL_CLASSES) and after.model.classifier[1].out_features == 10


def test_ctrl_c_while_fine_tuning_is_an_interrupt_and_writes_no_checkpoint(tmp_path, monkeypatch):
    import lightning as L

    import effscale.finetune

    class CtrlC(L.Callback):
        def on_train_batch_start(self, *args):
            raise KeyboardInterrupt  # inside trainer.fit, where Lightning turns it into sys.exit(1)

    make_trainer = effscale.finetune.make_trainer
    monkeypatch.setattr(effscale.finetune, "make_trainer",
                        lambda recipe, device, callbacks: make_trainer(recipe, device=device, callbacks=[*callbacks, CtrlC()]))
    cfg = finetune_config(tmp_path, "data=procedural", "data.train_size=64", "data.val_size=32", "data.test_size=32",
                          "data.resolution=32", "finetune.head_epochs=1")
    with pytest.raises(KeyboardInterrupt):
        effscale.finetune.finetune(cfg)
    assert not list(tmp_path.rglob("*.pt")) and not (tmp_path / "finetune-procedural").exists()


def test_finetune_cli_writes_a_checkpoint_predict_reads_with_the_data_class_names(tmp_path):
    from PIL import Image

    from conftest import run_cli
    from effscale.procedural import PROCEDURAL_CLASSES, generate_procedural

    out = run_cli("finetune", f"out={tmp_path}", "data=procedural", "data.train_size=64", "data.val_size=32",
                  "data.test_size=32", "data.resolution=32", "finetune.head_epochs=1", "finetune.unfreeze_epochs=1",
                  "finetune.recipe.limit_train_batches=2", "name=tiny")
    assert out.returncode == 0, out.stderr
    checkpoint = tmp_path / "tiny" / "model.pt"
    assert f"checkpoint: {checkpoint}" in out.stdout and "after training everything" in out.stdout
    images, _ = generate_procedural(1, seed=5)
    Image.fromarray(images[0].transpose(1, 2, 0)).save(tmp_path / "sample.png")
    out = run_cli("predict", str(tmp_path / "sample.png"), "--weights", str(checkpoint), "--json", "--top", "3")
    assert out.returncode == 0, out.stderr
    top = json.loads(out.stdout)["top"]
    assert len(top) == 3 and all(t["class"] in PROCEDURAL_CLASSES for t in top)


def test_finetune_missing_weights_file_one_line_exit_2(tmp_path, capsys):
    from effscale.cli import main

    assert main(["finetune", f"out={tmp_path}", f"finetune.weights={tmp_path / 'nope.pt'}"]) == 2
    err = capsys.readouterr().err
    assert err.strip().endswith("nope.pt: no such file") and len(err.strip().splitlines()) == 1
    assert not any(tmp_path.iterdir())  # nothing written


def test_the_recipes_num_workers_reaches_the_data_as_a_sweeps_trainer_num_workers_does(tmp_path, capsys, monkeypatch):
    import effscale.finetune
    from effscale.cli import main

    seen = {}

    def build(cfg, resolution, batch_size, num_workers=None, seed=0):
        seen["num_workers"] = num_workers
        raise UserError("data read")

    monkeypatch.setattr(effscale.finetune, "build_datamodule", build)
    assert main(["finetune", f"out={tmp_path}", "+finetune.recipe.num_workers=3"]) == 2
    assert capsys.readouterr().err == "effscale finetune: data read\n" and seen == {"num_workers": 3}


@pytest.mark.parametrize("key, change, field", [
    ("preprocessing", lambda p: {**p, "interpolation": "nope"}, "preprocessing.interpolation: expected one of "),
    ("table", lambda t: {k: v for k, v in t.items() if k != "stages"}, "table.stages: missing"),
])
def test_finetune_from_a_checkpoint_with_damaged_preprocessing_or_table_is_one_line_exit_2(tmp_path, capsys, key,
                                                                                           change, field):
    from effscale.cli import main
    from effscale.weights import Preprocessing, save_checkpoint

    table = architecture("efficientnet_lite0")
    path = save_checkpoint(tmp_path / "in" / "model.pt", build_model(table, num_classes=2), table, ["a", "b"],
                           Preprocessing(72, 64, IMAGENET_MEAN, IMAGENET_STD, "bilinear"))
    payload = torch.load(path, weights_only=True)
    payload[key] = change(payload[key])
    torch.save(payload, path)
    assert main(["finetune", f"out={tmp_path / 'out'}", f"finetune.weights={path}"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"effscale finetune: {path}: effscale checkpoint: {field}") and len(err.splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_finetune_from_weights_with_nan_is_one_line_exit_2(tmp_path, capsys):
    from effscale.cli import main

    state = random_b0().state_dict()
    state["features.1.0.block.0.1.running_mean"][5] = float("nan")
    torch.save(state, tmp_path / "b0.pth")
    assert main(["finetune", f"out={tmp_path / 'out'}", f"finetune.weights={tmp_path / 'b0.pth'}"]) == 2
    assert capsys.readouterr().err == (f"effscale finetune: {tmp_path / 'b0.pth'}: non-finite weights: "
                                       "features.1.0.block.0.1.running_mean holds NaN or infinity\n")
    assert not (tmp_path / "out").exists()


def test_features_nearly_the_same_for_every_real_image_are_refused(tmp_path, fashion_mnist_dir):
    from effscale.finetune import finetune

    # On Fashion-MNIST at 32 px 99.99 % of Lite0's features are 0, and a few keep a trace of the image's
    # border: a classifier on them stays at chance (0.12 after an epoch) as surely as on exact zeros.
    with pytest.raises(UserError, match=r"^at 32 px the pretrained network gives every image the same "
                                        r"features, to within [1-9]e-0[5-6] \(as Lite0"):
        finetune(finetune_config(tmp_path, "data=fashion_mnist", f"data.root={fashion_mnist_dir}",
                                 "data.train_size=256", "data.val_size=64", "data.resolution=32",
                                 "finetune.min_resolution=1"))
    assert not any(tmp_path.iterdir())


def test_small_inputs_are_raised_to_min_resolution_and_features_the_same_for_every_image_are_refused(tmp_path,
                                                                                                         capsys):
    from effscale.finetune import finetune
    from effscale.weights import load_pretrained

    data = ["data=procedural", "data.train_size=64", "data.val_size=32", "data.test_size=32", "data.resolution=32",
            "finetune.head_epochs=1"]
    # At 32 px Lite0's last stage sees 1×1 and every one of its 1,280 features is 0 for every image.
    with pytest.raises(UserError, match=r"^at 32 px the pretrained network gives every image the same "
                                        r"features, to within 0 \(as Lite0 does when its last stage sees 1×1\)"):
        finetune(finetune_config(tmp_path, *data, "finetune.min_resolution=1"))
    assert not any(tmp_path.iterdir())
    result = finetune(finetune_config(tmp_path, *data, "finetune.recipe.limit_train_batches=1"))
    assert "input size 64 px: data.resolution=32 is below finetune.min_resolution=64" in capsys.readouterr().out
    assert load_pretrained(result["checkpoint"]).preprocessing.crop == 64


def test_an_input_size_whose_training_step_cannot_fit_in_memory_is_one_line_before_anything_runs(
        tmp_path, capsys, monkeypatch):
    import effscale.finetune
    from effscale.cli import main
    from effscale.finetune import least_memory_mb
    from effscale.weights import load_pretrained

    # Without the check the kernel killed such a run (5000 px took 21 GB), with no message.
    monkeypatch.setattr(effscale.finetune, "memory_mb", lambda device: 16 * 1024.0)
    assert main(["finetune", f"out={tmp_path / 'out'}", "device=cpu", "data.resolution=5000", "data.train_size=64",
                 "data.val_size=32", "data.test_size=32"]) == 2
    assert capsys.readouterr().err == ("effscale finetune: a training step at 5000 px, batch 32, needs at least 44.7 GB, "
                                       "more than the 16.0 GB available on this machine; lower data.resolution or "
                                       "finetune.batch_size\n")
    assert not (tmp_path / "out").exists()
    # A floor: for each of 32 images, Lite0's first expansion (96 channels of 2500 x 2500 in 16 bits) and
    # the input (3 x 5000 x 5000 in fp32), with 18 MB of weights; a 448 px run (about 1.5 GB head-only on
    # a CPU) is far from refused.
    lite0 = load_pretrained("lite0").model
    floor = 32 * (96 * 2500**2 * 2 + 3 * 5000**2 * 4) / 2**20
    assert least_memory_mb(lite0, 3, 5000, 32) == pytest.approx(floor + 18, abs=1)
    assert least_memory_mb(lite0, 3, 448, 32) < 400


def test_a_gpu_out_of_memory_past_the_floor_is_one_line_and_leaves_no_checkpoint_folder(tmp_path, capsys, monkeypatch):
    import effscale.finetune
    from effscale.cli import main

    def out_of_memory(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

    monkeypatch.setattr(effscale.finetune, "train_phases", out_of_memory)
    assert main(["finetune", f"out={tmp_path / 'out'}", "data.train_size=64", "data.val_size=32",
                 "data.test_size=32"]) == 2
    assert capsys.readouterr().err == ("effscale finetune: the GPU ran out of memory at 64 px, batch 32; lower "
                                       "data.resolution or finetune.batch_size\n")
    assert not (tmp_path / "out").exists()


def test_training_that_diverges_is_one_line_naming_the_phase_and_writes_nothing(tmp_path, capsys):
    from effscale.cli import main

    assert main(["finetune", f"out={tmp_path / 'out'}", "data.train_size=64", "data.val_size=32", "data.test_size=32",
                 "finetune.head_epochs=1", "finetune.recipe.lr=1e38", "finetune.recipe.progress=false"]) == 2
    # (On CUDA the loss is read every 16 steps: "loss is not finite in the last steps of epoch 0".)
    assert re.fullmatch(r"effscale finetune: training diverged in the head phase \(loss is [^)]+ epoch 0[^)]*\); "
                        r"lower finetune.recipe.lr\n", capsys.readouterr().err)
    assert not (tmp_path / "out").exists()


def test_a_checkpoint_path_of_null_is_one_line(tmp_path, capsys):
    from effscale.cli import main

    assert main(["finetune", f"out={tmp_path}", "finetune.checkpoint=null"]) == 2
    assert capsys.readouterr().err == "effscale finetune: finetune.checkpoint: expected a file path, got None\n"
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize("where, message", [
    (lambda p: [f"out={p / 'a-file'}"], "finetune.checkpoint: cannot write {p}/a-file/finetune-procedural/model.pt ("),
    (lambda p: [f"out={p / 'a-file' / 'deeper'}", "name=x"], "finetune.checkpoint: cannot write {p}/a-file/deeper/x/"),
    (lambda p: [f"finetune.checkpoint={p}"], "finetune.checkpoint: {p} is a folder; expected a file to write, such as "
                                             "{p}/model.pt"),
    # A folder not made yet, named by its slash: not a file called `sub`.
    (lambda p: [f"finetune.checkpoint={p}/sub/"], "finetune.checkpoint: {p}/sub is a folder; expected a file to write, "
                                                  "such as {p}/sub/model.pt"),
])
def test_a_checkpoint_path_that_cannot_be_written_is_one_line_before_any_training(tmp_path, capsys, monkeypatch,
                                                                                 where, message):
    import effscale.finetune
    from effscale.cli import main

    def no_training(*args, **kwargs):
        raise AssertionError("training started")

    monkeypatch.setattr(effscale.finetune, "make_trainer", no_training)
    (tmp_path / "a-file").write_text("not a folder")
    assert main(["finetune", *where(tmp_path), "data=procedural", "data.train_size=64", "data.val_size=32",
                 "data.test_size=32", "data.resolution=32"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"effscale finetune: {message.format(p=tmp_path)}") and len(err.splitlines()) == 1, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file"]


@pytest.mark.parametrize("edit, message", [
    (lambda s: (s / "val" / "dog").rename(s / "val" / "dogs"),
     "{s}/val/dogs: a class folder {s}/train lacks; train, val and test need the same class folders"),
    (lambda s: [image.unlink() for image in (s / "train" / "cat").iterdir()],
     "{s}/train/cat: no images (.jpg, .jpeg, .png, .ppm, .bmp, .pgm, .tif, .tiff, .webp); every class folder needs "
     "at least one"),
])
def test_finetune_on_image_folders_whose_classes_differ_or_are_empty_is_one_line(tmp_path, capsys, edit, message):
    from PIL import Image

    from effscale.cli import main

    for split in ("train", "val"):
        for name in ("cat", "dog"):
            (tmp_path / "set" / split / name).mkdir(parents=True)
            for i in range(2):
                Image.new("RGB", (24, 20), (40 * i, 90, 200)).save(tmp_path / "set" / split / name / f"{i}.png")
    edit(tmp_path / "set")
    assert main(["finetune", f"out={tmp_path / 'out'}", "data=imagefolder", f"data.root={tmp_path / 'set'}",
                 "data.resolution=32", "finetune.head_epochs=1", "finetune.batch_size=2"]) == 2
    assert capsys.readouterr().err == f"effscale finetune: {message.format(s=tmp_path / 'set')}\n"
    assert not (tmp_path / "out").exists()


@pytest.mark.slow  # about a minute on 2 idle cores, longer on a busy machine
def test_pretrained_lite0_beats_training_from_scratch_with_the_same_steps(tmp_path, fashion_mnist_dir):
    """800 Fashion-MNIST images at 64 px, 2 epochs of 25 steps each: the ImageNet features of Lite0 with a
    new classifier against the same network trained from random initialisation (measured: 0.71 against
    0.21 on 500 validation images, whose standard error is about 0.02)."""
    from effscale.data import build_datamodule
    from effscale.finetune import finetune
    from effscale.train import fit_candidate

    data = [f"data.root={fashion_mnist_dir}", "data=fashion_mnist", "data.train_size=800", "data.val_size=500",
            "data.resolution=64", "finetune.head_epochs=2", "finetune.recipe.limit_val_batches=16"]
    cfg = finetune_config(tmp_path, *data)
    pretrained = finetune(cfg)

    table = {**architecture("efficientnet_lite0"), "resolution": 64}
    recipe = {**cfg["finetune"]["recipe"], "max_epochs": 2}
    scratch = fit_candidate(table, build_datamodule(cfg["data"], 64, cfg["finetune"]["batch_size"]), recipe)
    # A lead of more than twice the difference's standard error (about 0.03), leaving room for another CPU's
    # rounding of the same seeded run.
    assert pretrained["val_acc"] > scratch["val_acc"] + 0.06, (pretrained, scratch)


def test_image_folder_checkpoint_records_class_folders_and_evaluation_crop(tmp_path):
    from PIL import Image

    from effscale.finetune import finetune
    from effscale.weights import load_pretrained

    skimage_data = pytest.importorskip("skimage.data")
    for name in ("chelsea", "coffee"):
        photo = Image.fromarray(getattr(skimage_data, name)())
        (tmp_path / "photos" / name).mkdir(parents=True)
        for i in range(6):
            photo.crop((20 * i, 10 * i, 20 * i + 200, 10 * i + 200)).save(tmp_path / "photos" / name / f"{i}.jpg")
    cfg = finetune_config(tmp_path, "data=imagefolder", f"data.root={tmp_path / 'photos'}", "data.val_fraction=0.25",
                          "data.resolution=32", "finetune.head_epochs=1", "finetune.batch_size=4")
    result = finetune(cfg)
    assert result["test_acc"] is None  # no test/ folder: the validation images are all that was held out
    loaded = load_pretrained(result["checkpoint"])
    assert loaded.class_names == ["chelsea", "coffee"]
    assert (loaded.preprocessing.resize, loaded.preprocessing.crop) == (73, 64)  # 64 / 0.875, then the centre
    assert loaded.preprocessing.mean == (0.485, 0.456, 0.406)


@pytest.mark.parametrize("batch_norm_only", [False, True])
def test_frozen_batchnorm_leaves_stochastic_depth_on_while_the_backbone_trains(batch_norm_only):
    from types import SimpleNamespace

    from torch import nn
    from torchvision.ops import StochasticDepth

    from effscale.finetune import KeepBackboneBatchNormFrozen, head_module
    from effscale.weights import load_pretrained

    network = load_pretrained("lite0").model.train()
    KeepBackboneBatchNormFrozen(batch_norm_only).on_train_epoch_start(None, SimpleNamespace(network=network))
    head = set(map(id, head_module(network).modules()))
    backbone = [m for m in network.modules() if id(m) not in head]
    depth = [m for m in backbone if isinstance(m, StochasticDepth)]
    assert len(depth) > 10 and all(m.training == batch_norm_only for m in depth)
    assert not any(m.training for m in backbone if isinstance(m, nn.BatchNorm2d))
    assert all(m.training for m in head_module(network).modules())


def test_a_second_fine_tuning_into_the_same_place_keeps_the_first_model(tmp_path):
    from effscale.finetune import finetune

    cfg = finetune_config(tmp_path, "data=procedural", "data.train_size=64", "data.val_size=32", "data.test_size=32",
                          "data.resolution=32", "finetune.head_epochs=1", "finetune.recipe.limit_train_batches=1",
                          "name=same")
    first = finetune(cfg)["checkpoint"]
    before = (tmp_path / "same" / "model.pt").read_bytes()
    second = finetune(cfg)["checkpoint"]
    assert (first, second) == (str(tmp_path / "same" / "model.pt"), str(tmp_path / "same" / "model-v1.pt"))
    assert (tmp_path / "same" / "model.pt").read_bytes() == before and (tmp_path / "same" / "model-v1.pt").is_file()
