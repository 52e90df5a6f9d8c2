"""Data modules: the procedural set's promises, Fashion-MNIST's reader, image folders, the factory."""

from __future__ import annotations

import gzip
import re
import shutil
import struct
import warnings
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import FASHION_MNIST, run_cli
from effscale import data
from effscale.data import IDX_IMAGES, IDX_LABELS, TensorBatchLoader, build_datamodule, read_idx, resize_uint8
from effscale.procedural import TEXTURES, generate_procedural
from effscale.errors import UserError

SMALL_PROCEDURAL = {"name": "procedural", "root": None, "train_size": 200, "val_size": 60, "test_size": 60,
                    "num_classes": 10, "in_channels": 3, "native_resolution": 64, "mean": [0.5] * 3,
                    "std": [0.18] * 3}


# --- procedural -----------------------------------------------------------------------------------


def test_procedural_images_are_the_same_bytes_for_the_same_seed_and_differ_for_another():
    images, labels = generate_procedural(40, seed=3)
    again, again_labels = generate_procedural(40, seed=3)
    other, _ = generate_procedural(40, seed=4)
    assert images.dtype == np.uint8 and images.shape == (40, 3, 64, 64)
    assert images.tobytes() == again.tobytes() and np.array_equal(labels, again_labels)
    assert np.mean(images != other) > 0.9


def test_procedural_classes_are_balanced():
    _, labels = generate_procedural(250, seed=0)
    assert np.bincount(labels, minlength=10).tolist() == [25] * 10


def test_procedural_splits_differ_from_each_other():
    module = build_datamodule(SMALL_PROCEDURAL, resolution=64, batch_size=32)
    seen = {split: {bytes(image.numpy()) for image in module.tensors(split)[0]} for split in ("train", "val", "test")}
    assert [len(images) for images in seen.values()] == [200, 60, 60]  # no image twice within a split
    assert not (seen["train"] & seen["val"] or seen["train"] & seen["test"] or seen["val"] & seen["test"])


def test_resolution_is_applied_to_every_split_and_changes_when_set():
    module = build_datamodule(SMALL_PROCEDURAL, resolution=40, batch_size=32)
    x, y = next(iter(module.train_dataloader()))
    assert x.shape == (32, 3, 40, 40) and x.dtype == torch.float32 and y.shape == (32,)
    module.resolution = 16
    assert next(iter(module.val_dataloader()))[0].shape == (32, 3, 16, 16)
    assert next(iter(module.test_dataloader()))[0].shape == (32, 3, 16, 16)
    assert module.native_resolution == 64 and module.tensors("train")[0].dtype == torch.uint8


def test_batches_are_normalised_by_the_configured_mean_and_std():
    module = build_datamodule(SMALL_PROCEDURAL, resolution=64, batch_size=200)
    x, _ = next(iter(module.train_dataloader()))
    images = module.tensors("train")[0].float() / 255
    assert x.mean().item() == pytest.approx((images.mean().item() - 0.5) / 0.18, abs=1e-3)


@pytest.fixture(scope="module")
def fine_detail_set() -> tuple[torch.Tensor, torch.Tensor]:
    """Procedural images of the three classes that differ only in fine detail (plain,
    fine-horizontal, fine-vertical stripes; either layout), with labels 0, 1, 2."""
    images, labels = generate_procedural(1500, seed=11)
    wanted = [TEXTURES.index(t) for t in ("plain", "fine-horizontal", "fine-vertical")]
    keep = np.isin(labels // 2, wanted)
    texture = torch.from_numpy(labels[keep] // 2)
    return torch.from_numpy(images[keep]), torch.searchsorted(torch.tensor(wanted), texture)


@contextmanager
def one_thread():
    """Hundreds of tiny optimiser steps run fastest on one thread, above all on a busy machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def fine_detail_accuracy(images: torch.Tensor, labels: torch.Tensor, resolution: int) -> float:
    """Held-out accuracy of logistic regression on the log-amplitude spectrum (blind to where the
    patch is) of the grey images seen at `resolution` and shown again at 64 px, so that the same
    classifier judges every resolution."""
    x = resize_uint8(images, resolution)
    x = torch.nn.functional.interpolate(x.float(), size=(64, 64), mode="bilinear", align_corners=False)
    grey = x.mean(1) - x.mean((1, 2, 3))[:, None, None]
    features = torch.log1p(torch.fft.rfft2(grey).abs()).flatten(1)
    features = (features - features.mean(0)) / (features.std(0) + 1e-6)
    train, test = slice(0, 300), slice(300, None)
    torch.manual_seed(0)
    classifier = torch.nn.Linear(features.shape[1], 3)
    optimizer = torch.optim.Adam(classifier.parameters(), lr=0.01, weight_decay=1e-3)
    with one_thread():
        for _ in range(300):
            loss = torch.nn.functional.cross_entropy(classifier(features[train]), labels[train])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return (classifier(features[test]).argmax(1) == labels[test]).float().mean().item()


def test_fine_detail_classes_need_more_than_the_baselines_resolution(fine_detail_set):
    native, baseline, low = (fine_detail_accuracy(*fine_detail_set, r) for r in (64, 32, 8))
    assert native > 0.85
    assert baseline < native - 0.3
    assert low < 0.42  # chance is 1/3


def test_loader_shuffles_reproducibly_from_its_seed():
    images = torch.arange(100, dtype=torch.uint8).view(100, 1, 1, 1)
    labels = torch.arange(100)

    def first_epoch(seed: int) -> list[int]:
        loader = TensorBatchLoader(images, labels, batch_size=30, mean=[0], std=[1 / 255], shuffle=True,
                                   drop_last=True, seed=seed)
        return torch.cat([y for _, y in loader]).tolist()

    assert len(first_epoch(0)) == 90 and first_epoch(0) == first_epoch(0) != first_epoch(1)
    assert sorted(first_epoch(0)) != list(range(90))


def test_loader_gives_each_distributed_rank_a_disjoint_equal_shard(monkeypatch):
    images, labels = torch.zeros(10, 1, 1, 1, dtype=torch.uint8), torch.arange(10)
    seen = []
    for rank in range(3):
        monkeypatch.setattr(data, "_rank_and_world", lambda rank=rank: (rank, 3))
        loader = TensorBatchLoader(images, labels, batch_size=2, mean=[0], std=[1], shuffle=True, seed=5)
        seen.append(torch.cat([y for _, y in loader]).tolist())
        assert len(loader) == 2
    assert [len(s) for s in seen] == [3, 3, 3] and len(set(sum(seen, []))) == 9


def test_evaluation_shards_under_ddp_hold_every_image_once(monkeypatch):
    images, labels = torch.zeros(10, 1, 1, 1, dtype=torch.uint8), torch.arange(10)
    seen = []
    for rank in range(3):
        monkeypatch.setattr(data, "_rank_and_world", lambda rank=rank: (rank, 3))
        loader = TensorBatchLoader(images, labels, batch_size=2, mean=[0], std=[1])
        seen.append(torch.cat([y for _, y in loader]).tolist())
        assert len(loader) == 2
    assert [len(s) for s in seen] == [4, 3, 3] and sorted(sum(seen, [])) == list(range(10))
    loader = TensorBatchLoader(images[:2], labels[:2], batch_size=2, mean=[0], std=[1])
    with pytest.raises(UserError, match=r"^data: a split of 2 image\(s\) cannot be shared among 3 devices"):
        len(loader)  # the third rank would have no batch


def test_lightning_trains_on_the_tensor_loader(tmp_path):
    import lightning.pytorch as pl

    class Tiny(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 10))

        def training_step(self, batch, _):
            return torch.nn.functional.cross_entropy(self.net(batch[0]), batch[1])

        def validation_step(self, batch, _):
            self.log("val_loss", torch.nn.functional.cross_entropy(self.net(batch[0]), batch[1]))

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    module = build_datamodule(SMALL_PROCEDURAL, resolution=8, batch_size=50)
    trainer = pl.Trainer(max_epochs=2, accelerator="cpu", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path)
    trainer.fit(Tiny(), datamodule=module)
    assert trainer.global_step == 2 * 4 and "val_loss" in trainer.callback_metrics


# --- Fashion-MNIST --------------------------------------------------------------------------------

needs_fashion_mnist = pytest.mark.skipif(not FASHION_MNIST.is_dir(),
                                         reason=f"real Fashion-MNIST files not found at {FASHION_MNIST}")


def _fashion_cfg(root: Path, **extra) -> dict:
    return {"name": "fashion_mnist", "root": str(root), "num_classes": 10, "in_channels": 1,
            "native_resolution": 28, "mean": [0.286], "std": [0.353], **extra}


@needs_fashion_mnist
def test_fashion_mnist_reads_the_real_files():
    module = build_datamodule(_fashion_cfg(FASHION_MNIST), resolution=28, batch_size=256)
    (train, train_labels), (val, _), (test, test_labels) = (module.tensors(s) for s in ("train", "val", "test"))
    assert (len(train), len(val), len(test)) == (55000, 5000, 10000)
    assert train.shape[1:] == (1, 28, 28) and train.dtype == torch.uint8
    assert (train.min().item(), train.max().item()) == (0, 255)
    assert torch.bincount(test_labels).tolist() == [1000] * 10
    assert module.num_classes == 10 and len(module.class_names) == 10
    first = read_idx(FASHION_MNIST / "train-labels-idx1-ubyte.gz", IDX_LABELS)[0]
    assert module.class_names[first] == "Ankle boot" and first == 9


@needs_fashion_mnist
def test_fashion_mnist_replicates_grey_for_three_channels_and_subsamples():
    module = build_datamodule(_fashion_cfg(FASHION_MNIST, in_channels=3, train_size=1000, val_size=500),
                              resolution=32, batch_size=100)
    x, _ = next(iter(module.train_dataloader()))
    assert x.shape == (100, 3, 32, 32) and torch.equal(x[:, 0], x[:, 2])
    assert len(module.train_dataloader()) == 10 and len(module.tensors("val")[1]) == 500


def _write_idx(path: Path, magic: int, array: np.ndarray, keep_bytes: int | None = None) -> Path:
    content = struct.pack(">i", magic) + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes()
    content = content[:keep_bytes]
    path.write_bytes(gzip.compress(content) if path.suffix == ".gz" else content)
    return path


def _tiny_fashion_root(root: Path) -> Path:
    """A valid Fashion-MNIST layout with 30 training and 10 test images."""
    root.mkdir()
    rng = np.random.default_rng(0)
    for prefix, count in (("train", 30), ("t10k", 10)):
        _write_idx(root / f"{prefix}-images-idx3-ubyte.gz", IDX_IMAGES, rng.integers(0, 256, (count, 28, 28), np.uint8))
        _write_idx(root / f"{prefix}-labels-idx1-ubyte", IDX_LABELS, np.arange(count, dtype=np.uint8) % 10)
    return root


def test_fashion_mnist_reads_gzipped_and_plain_files(tmp_path):
    module = build_datamodule(_fashion_cfg(_tiny_fashion_root(tmp_path / "fm"), val_size=10), 28, 8)
    assert [len(module.tensors(s)[1]) for s in ("train", "val", "test")] == [20, 10, 10]


def test_test_size_takes_the_same_part_of_the_test_split_for_every_trial(tmp_path):
    root = _tiny_fashion_root(tmp_path / "fm")
    whole = build_datamodule(_fashion_cfg(root, val_size=10), 28, 8).tensors("test")
    part = [build_datamodule(_fashion_cfg(root, val_size=10, test_size=4), 28, 8, seed=seed).tensors("test")
            for seed in (0, 1)]
    assert len(part[0][1]) == 4 and torch.equal(part[0][0], part[1][0]) and torch.equal(part[0][1], part[1][1])
    assert all(any(torch.equal(image, other) for other in whole[0]) for image in part[0][0])  # test images only
    with pytest.raises(UserError, match=r"^data.test_size: 11 is more than the 10 images of Fashion-MNIST's test "
                                        r"split$"):
        build_datamodule(_fashion_cfg(root, val_size=10, test_size=11), 28, 8).tensors("test")


def test_a_gzip_of_several_members_reads_whole_and_one_cut_in_its_last_member_is_truncated(tmp_path):
    labels = np.arange(30, dtype=np.uint8) % 10
    content = struct.pack(">ii", IDX_LABELS, 30) + labels.tobytes()
    path = tmp_path / "train-labels-idx1-ubyte.gz"
    members = gzip.compress(content[:20]) + b"\0" * 4 + gzip.compress(content[20:])  # `cat a.gz b.gz`, padded
    path.write_bytes(members + b"\0" * 8)
    assert read_idx(path, IDX_LABELS).tolist() == labels.tolist()
    path.write_bytes(members[:-12])
    with pytest.raises(UserError, match="truncated, expected 38 bytes, found "):
        read_idx(path, IDX_LABELS)


def test_wrong_magic_number_names_the_file(tmp_path):
    root = _tiny_fashion_root(tmp_path / "fm")
    bad = _write_idx(root / "train-images-idx3-ubyte.gz", 1234, np.zeros((30, 28, 28), np.uint8))
    with pytest.raises(UserError, match=f"^{bad}: wrong magic number 1234, expected 2051$"):
        build_datamodule(_fashion_cfg(root, val_size=10), 28, 8).setup()


@pytest.mark.parametrize("name", ["train-labels-idx1-ubyte", "train-images-idx3-ubyte.gz"])
def test_truncated_file_names_the_file_and_the_size_it_needs(tmp_path, name):
    root = _tiny_fashion_root(tmp_path / "fm")
    shape = (30,) if "labels" in name else (30, 28, 28)
    magic = IDX_LABELS if "labels" in name else IDX_IMAGES
    expected = 4 + 4 * len(shape) + int(np.prod(shape))
    bad = _write_idx(root / name, magic, np.zeros(shape, np.uint8), keep_bytes=expected - 7)
    with pytest.raises(UserError, match=f"^{bad}: truncated, expected {expected} bytes, found {expected - 7}$"):
        build_datamodule(_fashion_cfg(root, val_size=10), 28, 8).setup()


@needs_fashion_mnist
def test_cut_off_copy_of_the_real_gzip_is_reported_truncated(tmp_path):
    real = (FASHION_MNIST / "train-labels-idx1-ubyte.gz").read_bytes()
    bad = tmp_path / "train-labels-idx1-ubyte.gz"
    bad.write_bytes(real[:len(real) // 2])
    with pytest.raises(UserError, match=f"^{bad}: truncated, expected 60008 bytes, found "):
        read_idx(bad, IDX_LABELS)


def test_labels_that_do_not_match_the_images_name_the_file(tmp_path):
    root = _tiny_fashion_root(tmp_path / "fm")
    bad = _write_idx(root / "t10k-labels-idx1-ubyte", IDX_LABELS, np.zeros(9, np.uint8))
    with pytest.raises(UserError, match=f"^{bad}: 9 labels for the 10 images in t10k-images-idx3-ubyte.gz$"):
        build_datamodule(_fashion_cfg(root, val_size=10), 28, 8).setup()


def test_missing_fashion_mnist_root_or_file_names_the_path(tmp_path):
    with pytest.raises(UserError, match=f"^data.root: {tmp_path / 'absent'} is not a directory$"):
        build_datamodule(_fashion_cfg(tmp_path / "absent"), 28, 8).setup()
    root = _tiny_fashion_root(tmp_path / "fm")
    (root / "t10k-images-idx3-ubyte.gz").unlink()
    with pytest.raises(UserError, match=f"{root / 't10k-images-idx3-ubyte'}\\[.gz\\]: missing"):
        build_datamodule(_fashion_cfg(root, val_size=10), 28, 8).setup()


def test_cifar10_without_its_files_is_a_user_error_naming_the_root(tmp_path):
    from omegaconf import OmegaConf

    cfg = OmegaConf.load(Path(__file__).resolve().parents[1] / "conf" / "data" / "cifar10.yaml")
    cfg.root = str(tmp_path)
    with pytest.raises(UserError, match=f"^data.root: no intact CIFAR-10 .* under {tmp_path};"):
        build_datamodule(cfg, 32, 8).setup()


# --- image folders --------------------------------------------------------------------------------


def _folder_cfg(root: Path, **extra) -> dict:
    return {"name": "imagefolder", "root": str(root), "num_classes": None, "in_channels": 3,
            "native_resolution": 224, "mean": [0.5] * 3, "std": [0.25] * 3, "num_workers": 0, **extra}


def _image_tree(root: Path, per_class: int = 6) -> Path:
    rng = np.random.default_rng(0)
    for name in ("cat", "dog"):
        (root / name).mkdir(parents=True)
        for index in range(per_class):
            pixels = rng.integers(0, 256, (20, 24, 3), np.uint8)
            Image.fromarray(pixels).save(root / name / f"{index}.{'png' if index % 2 else 'jpg'}")
    return root


def test_imagefolder_skips_unreadable_images_with_one_counted_warning(tmp_path):
    root = _image_tree(tmp_path / "photos")
    (root / "cat" / "a-garbage.png").write_bytes(b"not an image at all")
    whole = (root / "dog" / "0.jpg").read_bytes()
    (root / "dog" / "b-cut.jpg").write_bytes(whole[:len(whole) // 2])
    module = build_datamodule(_folder_cfg(root, val_fraction=0.25), resolution=16, batch_size=4)
    with pytest.warns(UserWarning, match=r"skipped 2 unreadable image\(s\), the first .*a-garbage.png") as caught:
        module.setup()
    assert len(caught) == 1
    assert [len(module._samples[s]) for s in ("train", "val")] == [9, 3]
    x, y = next(iter(module.train_dataloader()))
    assert x.shape == (4, 3, 16, 16) and module.class_names == ["cat", "dog"] and module.num_classes == 2
    assert next(iter(module.val_dataloader()))[0].shape == (3, 3, 16, 16)


def test_an_image_beyond_pillows_pixel_guard_is_one_warning_naming_it_not_pillows_at_every_open(tmp_path,
                                                                                                 monkeypatch):
    root = _image_tree(tmp_path / "photos", per_class=3)  # 20×24 = 480 pixels each
    Image.new("RGB", (30, 30)).save(root / "cat" / "large.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 600)  # as 9500×9500 is beyond Pillow's 89 million
    module = build_datamodule(_folder_cfg(root, val_fraction=0.25), resolution=16, batch_size=8)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        module.setup()
        for _ in range(20):  # random crops of the large image, some beyond the guard again
            list(module.train_dataloader())
        list(module.val_dataloader())
    assert [str(w.message) for w in caught] == [
        f"{root}: 1 image(s) beyond Pillow's 600 pixels (a guard against decompression bombs), the largest "
        f"{root / 'cat' / 'large.png'} (900 pixels), decoded at every epoch"]


@pytest.mark.parametrize("num_workers", [0, 1])
def test_an_unreadable_image_met_without_verify_stops_in_one_line_naming_it(tmp_path, num_workers):
    root = _image_tree(tmp_path / "photos", per_class=2)
    whole = (root / "dog" / "0.jpg").read_bytes()
    (root / "dog" / "0.jpg").write_bytes(whole[:len(whole) // 2])  # a truncated JPEG
    module = build_datamodule(_folder_cfg(root, verify=False, val_fraction=0.25, num_workers=num_workers), 16, 4)
    module.setup()
    with pytest.raises(UserError) as raised:  # from a worker process too, where DataLoader wraps it
        for split in ("train", "val"):
            list(getattr(module, f"{split}_dataloader")())
    assert str(raised.value).startswith(f"{root / 'dog' / '0.jpg'}: unreadable image (OSError: ")
    assert str(raised.value).endswith("; data.verify=true skips such files") and "\n" not in str(raised.value)


def test_imagefolder_shards_under_ddp_hold_every_evaluation_image_once_and_train_on_a_small_share(tmp_path,
                                                                                                   monkeypatch):
    import effscale.data

    root = _image_tree(tmp_path / "photos", per_class=5)  # 10 images: 5 for training, 5 for validation
    module = build_datamodule(_folder_cfg(root, val_fraction=0.5), resolution=16, batch_size=2)
    module.setup()
    seen = []
    for rank in (0, 1):
        monkeypatch.setattr(effscale.data, "_rank_and_world", lambda rank=rank: (rank, 2))
        seen += [index for batch in module.val_dataloader().batch_sampler for index in batch]
    assert sorted(seen) == list(range(5))  # Lightning's own sampler would pad to 6, counting one image twice
    module.batch_size = 3
    assert not module.train_dataloader().drop_last  # a rank's share, 5 // 2 = 2 images, is one short batch
    monkeypatch.setattr(effscale.data, "_rank_and_world", lambda: (0, 1))
    module.batch_size = 2
    assert module.train_dataloader().drop_last


def test_imagefolder_uses_train_and_val_folders_when_present(tmp_path):
    _image_tree(tmp_path / "set" / "train", per_class=4)
    _image_tree(tmp_path / "set" / "val", per_class=2)
    module = build_datamodule(_folder_cfg(tmp_path / "set", in_channels=1, mean=[0.5], std=[0.25]), 12, 4)
    module.setup()
    assert [len(module._samples[s]) for s in ("train", "val", "test")] == [8, 4, 4]
    assert next(iter(module.test_dataloader()))[0].shape == (4, 1, 12, 12)
    assert not module.has_test_split  # its test split is val again
    _image_tree(tmp_path / "set" / "test", per_class=1)
    assert build_datamodule(_folder_cfg(tmp_path / "set"), 12, 4).has_test_split


@pytest.mark.parametrize("in_channels", [1, 3])
def test_a_16_bit_png_gives_the_tensor_of_its_8_bit_version_not_white(tmp_path, in_channels):
    grey = np.random.default_rng(0).integers(0, 256, (30, 40), np.uint8)
    batches = {}
    for bits, pixels in ((8, grey), (16, grey.astype(np.uint16) * 257)):
        for split in ("train", "val"):
            for name in ("cat", "dog"):
                (tmp_path / f"{bits}" / split / name).mkdir(parents=True)
                Image.fromarray(pixels).save(tmp_path / f"{bits}" / split / name / "0.png")
        cfg = _folder_cfg(tmp_path / f"{bits}", in_channels=in_channels, mean=[0.0] * in_channels,
                          std=[1.0] * in_channels)
        batches[bits] = next(iter(build_datamodule(cfg, 16, 2).val_dataloader()))[0]
    with Image.open(tmp_path / "16" / "val" / "cat" / "0.png") as image:
        assert image.mode == "I;16"
    assert batches[8].shape == (2, in_channels, 16, 16) and 0.3 < batches[8].mean() < 0.7
    assert (batches[16] - batches[8]).abs().max() <= 1 / 255


def test_imagefolder_missing_or_empty_root_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match=f"^data.root: {tmp_path / 'nowhere'} is not a directory$"):
        build_datamodule(_folder_cfg(tmp_path / "nowhere"), 16, 4).setup()
    (tmp_path / "empty" / "cat").mkdir(parents=True)
    (tmp_path / "empty" / "dog").mkdir()
    with pytest.raises(UserError, match=f"^{tmp_path / 'empty'}: no images"):
        build_datamodule(_folder_cfg(tmp_path / "empty"), 16, 4).setup()
    with pytest.raises(UserError, match="no class folders"):
        build_datamodule(_folder_cfg(tmp_path / "empty" / "cat"), 16, 4).setup()


def test_an_image_folder_of_one_class_is_a_user_error(tmp_path):
    _image_tree(tmp_path / "set", per_class=4)
    for extra in sorted((tmp_path / "set").iterdir())[1:]:
        shutil.rmtree(extra)
    only = next((tmp_path / "set").iterdir()).name
    message = f"{tmp_path / 'set'}: one class folder ({only}); a classifier needs two or more"
    with pytest.raises(UserError, match=f"^{re.escape(message)}$"):
        build_datamodule(_folder_cfg(tmp_path / "set"), 16, 4).setup()


@pytest.mark.parametrize("edit, message", [
    (lambda s: shutil.copytree(s / "val" / "cat", s / "val" / "bird"),
     "{s}/val/bird: a class folder {s}/train lacks; train, val and test need the same class folders"),
    (lambda s: shutil.rmtree(s / "val" / "dog"),
     "{s}/val: no class folder dog, which {s}/train has; train, val and test need the same class folders"),
    (lambda s: (s / "val" / "dog").rename(s / "val" / "Dog"),
     "{s}/val/Dog: a class folder {s}/train lacks; train, val and test need the same class folders"),
    (lambda s: (_image_tree(s / "test", per_class=1), shutil.rmtree(s / "test" / "cat")),
     "{s}/test: no class folder cat, which {s}/train has; train, val and test need the same class folders"),
])
def test_splits_whose_class_folders_differ_are_one_line_naming_the_class(tmp_path, edit, message):
    _image_tree(tmp_path / "set" / "train", per_class=2)
    _image_tree(tmp_path / "set" / "val", per_class=1)
    edit(tmp_path / "set")
    module = build_datamodule(_folder_cfg(tmp_path / "set"), 16, 4)
    with pytest.raises(UserError) as raised:
        module.num_classes  # what a model is built for: refused before any image is opened
    assert str(raised.value) == message.format(s=tmp_path / "set")


def test_hidden_folders_such_as_jupyters_are_not_classes(tmp_path):
    _image_tree(tmp_path / "set" / "train", per_class=2)
    _image_tree(tmp_path / "set" / "val", per_class=1)
    (tmp_path / "set" / "val" / ".ipynb_checkpoints").mkdir()
    (tmp_path / "set" / "train" / ".git").mkdir()
    module = build_datamodule(_folder_cfg(tmp_path / "set"), 16, 4)
    module.setup()
    assert module.class_names == ["cat", "dog"]


@pytest.mark.parametrize("split", ["train", "val"])
def test_an_empty_class_folder_is_one_line_naming_it(tmp_path, split):
    _image_tree(tmp_path / "set" / "train", per_class=2)
    _image_tree(tmp_path / "set" / "val", per_class=1)
    for image in (tmp_path / "set" / split / "dog").iterdir():
        image.unlink()
    (tmp_path / "set" / split / "dog" / "notes.txt").write_text("no image here")
    with pytest.raises(UserError) as raised:
        build_datamodule(_folder_cfg(tmp_path / "set"), 16, 4).setup()
    assert str(raised.value) == (f"{tmp_path / 'set' / split / 'dog'}: no images (.jpg, .jpeg, .png, .ppm, .bmp, "
                                 ".pgm, .tif, .tiff, .webp); every class folder needs at least one")


def test_imagenet_shape_config_needs_no_files():
    from omegaconf import OmegaConf

    cfg = OmegaConf.load(Path(__file__).resolve().parents[1] / "conf" / "data" / "imagenet.yaml")
    module = build_datamodule(cfg, resolution=224, batch_size=8)
    assert (module.num_classes, module.in_channels, len(module.class_names)) == (1000, 3, 1000)


# --- the factory ----------------------------------------------------------------------------------


def test_every_shipped_config_builds():
    from omegaconf import OmegaConf

    for path in sorted((Path(__file__).resolve().parents[1] / "conf" / "data").glob("*.yaml")):
        cfg = OmegaConf.load(path)
        module = build_datamodule(cfg, resolution=32, batch_size=8, num_workers=1)
        if cfg.num_classes is not None:  # None: counted from the class folders, and there is no folder here
            assert module.num_classes == len(module.class_names) == cfg.num_classes, path.name
        assert module.in_channels == cfg.in_channels, path.name
        assert len(module.mean) == len(module.std) == module.in_channels, path.name


def test_unknown_source_or_setting_is_a_user_error():
    with pytest.raises(UserError, match="^data.name: unknown data source 'mnist'"):
        build_datamodule({**SMALL_PROCEDURAL, "name": "mnist"}, 32, 8)
    with pytest.raises(UserError, match="^data.trian_size: not a setting of data=procedural .* drop it with "
                                        "~data.trian_size$"):
        build_datamodule({**SMALL_PROCEDURAL, "trian_size": 5}, 32, 8)
    with pytest.raises(UserError, match="^data.mean: 2 values for in_channels=3; give 3, or one for every channel$"):
        build_datamodule({**SMALL_PROCEDURAL, "mean": [0.5, 0.5]}, 32, 8)
    with pytest.raises(UserError, match="^data.root: data=procedural generates its images"):
        build_datamodule({**SMALL_PROCEDURAL, "root": "/data"}, 32, 8)
    with pytest.raises(UserError, match="^data.num_workers: expected an integer from 0 to 1024, got 5000$"):
        build_datamodule({**SMALL_PROCEDURAL, "num_workers": 5000}, 32, 8)


def test_no_validation_images_is_one_line(tmp_path):
    with pytest.raises(UserError, match=r"^data.val_size: expected an integer of at least 1, got 0$"):
        build_datamodule(_fashion_cfg(_tiny_fashion_root(tmp_path / "fm"), val_size=0), 28, 8)


@pytest.mark.parametrize("split, what", [("train", "training"), ("test", "test")])
def test_a_class_whose_images_of_a_split_are_all_unreadable_is_one_line_not_a_class_never_trained_or_tested(
        tmp_path, recwarn, split, what):
    root = tmp_path / "photos"
    for name in ("train", "val", "test"):
        _image_tree(root / name, per_class=3)
    for index in range(3):
        (root / split / "dog" / f"{index}.{'png' if index % 2 else 'jpg'}").write_bytes(b"not an image")
    module = build_datamodule(_folder_cfg(root), resolution=16, batch_size=4)
    with pytest.raises(UserError) as raised:
        module.setup()
    assert str(raised.value).startswith(f"{root}: no readable {what} image of class dog is left (3 unreadable, "
                                        f"the first {root / split / 'dog' / '0.jpg'}: ")
    assert "\n" not in str(raised.value) and module._samples is None
    assert not [w for w in recwarn if "unreadable" in str(w.message)]  # the refusal is the one line


@pytest.mark.parametrize("data_seed", range(4))
def test_the_held_out_validation_images_are_drawn_per_class_and_leave_each_class_a_training_image(tmp_path,
                                                                                                  data_seed):
    rng = np.random.default_rng(0)
    root = tmp_path / "photos"
    for name, count in (("common", 16), ("rare", 1), ("some", 8)):
        (root / name).mkdir(parents=True)
        for index in range(count):
            Image.fromarray(rng.integers(0, 256, (20, 24, 3), np.uint8)).save(root / name / f"{index}.png")
    module = build_datamodule(_folder_cfg(root, val_fraction=0.25, data_seed=data_seed), resolution=16, batch_size=4)
    module.setup()
    labels = {split: sorted(label for _, label in module._samples[split]) for split in ("train", "val")}
    assert labels["val"].count(0) == 4 and labels["val"].count(2) == 2 and 1 not in labels["val"]  # 6 of 25
    assert set(labels["train"]) == {0, 1, 2} and len(labels["train"]) == 19


@pytest.mark.parametrize("sizes, held", [([1, 1, 1, 3], [0, 0, 0, 2]), ([1, 1, 1, 1, 5, 5], [0, 0, 0, 0, 4, 3])])
def test_small_classes_keep_their_one_image_and_larger_ones_give_what_the_fraction_asks(tmp_path, sizes, held):
    root = tmp_path / "photos"
    for label, size in enumerate(sizes):
        (root / f"c{label}").mkdir(parents=True)
        for index in range(size):
            Image.new("RGB", (8, 8), (label, index, 0)).save(root / f"c{label}" / f"{index}.png")
    module = build_datamodule(_folder_cfg(root, val_fraction=0.5), resolution=8, batch_size=4)
    module.setup()
    assert [sum(label == c for _, label in module._samples["val"]) for c in range(len(sizes))] == held


def test_a_folder_of_one_image_a_class_has_nothing_to_hold_out(tmp_path):
    root = _image_tree(tmp_path / "photos", per_class=1)
    module = build_datamodule(_folder_cfg(root, val_fraction=0.5), resolution=16, batch_size=4)
    with pytest.raises(UserError, match="one image a class, none to hold out for validation; give a val folder"):
        module.setup()


def test_imagefolder_turns_photos_upright_and_skips_a_strip_too_elongated_to_resize(tmp_path):
    from effscale.data import _ImageFiles

    root = _image_tree(tmp_path / "photos", per_class=3)
    pixels = np.random.default_rng(1).integers(0, 256, (20, 24, 3), np.uint8)
    exif = Image.Exif()
    exif[0x0112] = 6  # stored turned; a viewer shows it rotated 90° clockwise
    Image.fromarray(pixels).transpose(Image.Transpose.ROTATE_90).save(root / "cat" / "turned.png", exif=exif)
    Image.fromarray(pixels).save(tmp_path / "upright.png")
    Image.new("RGB", (5000, 2)).save(root / "dog" / "strip.png")
    module = build_datamodule(_folder_cfg(root, val_fraction=0.25), resolution=16, batch_size=4)
    with pytest.warns(UserWarning, match=r"skipped 1 unreadable image\(s\), the first .*strip.png \(5000×2 pixels, "
                                         r"too elongated to resize"):
        module.setup()
    files = _ImageFiles([(str(root / "cat" / "turned.png"), 0), (str(tmp_path / "upright.png"), 0)],
                        lambda image: torch.from_numpy(np.array(image)), "RGB")
    assert torch.equal(files[0][0], files[1][0])
    with pytest.raises(UserError, match="strip.png: unreadable image .*too elongated"):
        _ImageFiles([(str(root / "dog" / "strip.png"), 1)], lambda image: image, "RGB")[0]


def test_a_preset_made_for_another_data_set_on_an_image_folder_says_how_to_drop_its_sizes(tmp_path):
    for name in ("cat", "dog"):
        (tmp_path / "images" / name).mkdir(parents=True)
        for i in range(3):
            Image.new("RGB", (12, 12), (80 * i, 40, 200)).save(tmp_path / "images" / name / f"{i}.png")
    run = run_cli("search", "+sweep=quick", "data=imagefolder", f"data.root={tmp_path / 'images'}",
                  f"out={tmp_path / 'results'}", cwd=tmp_path)
    assert run.returncode == 2 and len(run.stderr.splitlines()) == 1, run.stderr
    assert run.stderr.startswith("effscale search: data.test_size, data.train_size, data.val_size: not settings of "
                                 "data=imagefolder")
    assert run.stderr.rstrip().endswith("drop them with ~data.test_size ~data.train_size ~data.val_size")
    assert not (tmp_path / "results").exists()


def test_a_download_that_fails_offline_is_one_line_and_leaves_no_folder(tmp_path, monkeypatch):
    import yaml
    from torchvision.datasets import CIFAR10, FashionMNIST

    from effscale.config import CONF_DIR

    def load_config(name):
        return yaml.safe_load((CONF_DIR / "data" / f"{name}.yaml").read_text())

    def offline(self):  # as torchvision's: the folders first, then one line per mirror tried
        Path(self.raw_folder if hasattr(self, "raw_folder") else self.root).mkdir(parents=True, exist_ok=True)
        raise RuntimeError("Error downloading train-images-idx3-ubyte.gz:\nTried https://mirror, got:\n"
                           "<urlopen error [Errno -3] Temporary failure in name resolution>\n")

    monkeypatch.setattr(FashionMNIST, "download", offline)
    root = tmp_path / "data" / "fm"
    module = build_datamodule(dict(load_config("fashion_mnist"), root=str(root), download=True), 32, 8)
    with pytest.raises(UserError, match=r"^data.download: could not fetch Fashion-MNIST into .*fm \(Error downloading "
                                        r"train-images-idx3-ubyte.gz: Tried https://mirror, got: <urlopen error"):
        module.prepare_data()
    assert not (tmp_path / "data").exists()
    root.mkdir(parents=True)  # a folder of the user's stays, without what the download made in it
    with pytest.raises(UserError, match="could not fetch"):
        module.prepare_data()
    assert list(root.iterdir()) == []

    monkeypatch.setattr(CIFAR10, "download", offline)
    module = build_datamodule(dict(load_config("cifar10"), root=str(tmp_path / "c10"), download=True), 32, 8)
    with pytest.raises(UserError, match=r"^data.download: could not fetch CIFAR-10 into .*c10 \(Error downloading"):
        module.prepare_data()
    assert not (tmp_path / "c10").exists()
