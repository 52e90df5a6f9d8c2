"""Data for scaling experiments: one LightningDataModule per source, all with the same small surface.

Every module states its shape before reading an image (`num_classes`, `in_channels`, `class_names`,
`native_resolution`, `mean`, `std`) and takes the candidate's input size through the settable
`resolution`. `build_datamodule` makes one from the `data` config group. Sources:

- `procedural` (default): generated in memory from a seed (`effscale.procedural` describes it).
- `fashion_mnist`: the original IDX files (gzipped or not) under `data.root`.
- `cifar10`: torchvision's CIFAR-10 (python version) under `data.root`.
- `imagefolder`: any `root/<class>/<image>` tree, decoded per step; `conf/data/imagenet.yaml` is one.

The first three are small: they are held in memory as uint8, resized once per resolution with an
antialiased filter, and served in whole batches by `TensorBatchLoader`. Only `imagefolder` decodes
files during training.
"""

from __future__ import annotations

import inspect
import math
import numbers
import os
import struct
import warnings
import zlib
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, nullcontext
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import lightning.pytorch as pl
import numpy as np
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

from effscale.checks import MAX_PROCESSES, check_values, count, integer_range
from effscale.devices import available_cores
from effscale.errors import UserError
from effscale.files import first_new_folder, remove_created
from effscale.procedural import PROCEDURAL_CLASSES, generate_procedural
from effscale.images import to_8bit, too_elongated, upright

# --- shared helpers -------------------------------------------------------------------------------


def fitted_workers() -> int:
    """Loader processes for this machine: one per core this process may use, at most 8."""
    return max(1, min(8, available_cores()))


def resize_uint8(images: torch.Tensor, resolution: int, chunk: int = 2048) -> torch.Tensor:
    """`images` (N×C×H×W uint8) at `resolution`², bilinear with antialiasing, so that detail finer than
    the new pixel grid is averaged away rather than aliased, as a lower-resolution camera would record
    it. Done once per resolution, in chunks so that memory stays bounded."""
    if tuple(images.shape[-2:]) == (resolution, resolution):
        return images
    out = torch.empty((len(images), images.shape[1], resolution, resolution), dtype=torch.uint8)
    for start in range(0, len(images), chunk):
        part = images[start:start + chunk].float()
        part = F.interpolate(part, size=(resolution, resolution), mode="bilinear", antialias=True,
                             align_corners=False)
        out[start:start + chunk] = part.round_().clamp_(0, 255)
    return out


def _rank_and_world() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


class TensorBatchLoader:
    """Whole batches straight from in-memory uint8 tensors: one gather and one normalisation per
    batch. A `__getitem__` per sample and a collate take over twice as long on a CPU (an epoch of 6000
    images of 3×32×32 in batches of 64: 0.18 s against 0.08 s on one core).

    Lightning accepts any iterable with `__len__` as a dataloader. A shuffled loader draws a new
    permutation each epoch from its own generator seeded with `seed`, so a run is reproducible.
    DistributedSampler is not used: under DDP every rank draws the same permutation and keeps every
    world_size-th index of it. Shuffled (training) shards are of equal length, leaving out up to
    world_size - 1 samples an epoch, as gradient steps must match across ranks; evaluation shards keep
    every sample once, so accuracy is over the whole split.
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, *, batch_size: int,
                 mean: Sequence[float], std: Sequence[float], shuffle: bool = False,
                 drop_last: bool = False, hflip: bool = False, seed: int = 0) -> None:
        self.images, self.labels = images, labels
        self.batch_size, self.shuffle, self.drop_last, self.hflip = batch_size, shuffle, drop_last, hflip
        mean_t = torch.tensor(mean, dtype=torch.float32).view(-1, 1, 1)
        std_t = torch.tensor(std, dtype=torch.float32).view(-1, 1, 1)
        # (x / 255 - mean) / std as one multiply-subtract. With one stored channel and three means,
        # broadcasting replicates the grey channel (greyscale data for an RGB model).
        self._scale, self._shift = 1 / (255 * std_t), mean_t / std_t
        self._generator = torch.Generator().manual_seed(seed)

    def __len__(self) -> int:
        rank, world = self._rank_and_world()
        samples = len(self.labels) // world if self.shuffle else len(range(rank, len(self.labels), world))
        full, rest = divmod(samples, self.batch_size)
        if self.drop_last:  # BatchNorm cannot train on a last batch of one; a tiny set still gives one batch
            return max(full, 1 if samples else 0)
        return full + (rest > 0)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        order = self._order()
        for start in range(0, len(self) * self.batch_size, self.batch_size):
            yield self._batch(order[start:start + self.batch_size])

    def _order(self) -> torch.Tensor:
        count = len(self.labels)
        order = torch.randperm(count, generator=self._generator) if self.shuffle else torch.arange(count)
        rank, world = self._rank_and_world()
        return order[rank:count - count % world:world] if self.shuffle else order[rank::world]

    def _rank_and_world(self) -> tuple[int, int]:
        rank, world = _rank_and_world()
        if len(self.labels) < world:  # a rank with no batch at all: Lightning refuses a loader of length zero
            raise UserError(f"data: a split of {len(self.labels)} image(s) cannot be shared among {world} devices "
                            "(trainer.devices); give it more images or train on fewer devices")
        return rank, world

    def _batch(self, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.images[index].float().mul(self._scale).sub_(self._shift)
        if self.hflip:
            flip = torch.rand(len(index), generator=self._generator) < 0.5
            x[flip] = x[flip].flip(-1)
        return x, self.labels[index]


# --- the shared base ------------------------------------------------------------------------------


def _count(value: Any, key: str, minimum: int = 1, maximum: int | None = None) -> int:
    check_values({key: value}, "data", {key: count(minimum) if maximum is None else integer_range(minimum, maximum)})
    return int(value)


def _per_channel(values: Any, channels: int, key: str) -> tuple[float, ...]:
    """`values` as one float per channel; a single value stands for every channel."""
    values = [values] if isinstance(values, numbers.Real) else list(values)
    if len(values) not in (1, channels):
        raise UserError(f"data.{key}: {len(values)} values for in_channels={channels}; give {channels}, or one "
                        "for every channel")
    return tuple(float(v) for v in values) * (channels if len(values) == 1 else 1)


class DataModule(pl.LightningDataModule):
    """What every source shares: its shape, its normalisation, the candidate's resolution and the
    loader settings. Subclasses add their own keys (sizes, root, download) and the dataloaders."""

    def __init__(self, *, name: str, num_classes: int | None, in_channels: int, native_resolution: int,
                 mean: Sequence[float], std: Sequence[float], resolution: int | None = None,
                 batch_size: int = 128, num_workers: int | None = None, root: str | None = None,
                 hflip: bool = True, data_seed: int = 0, seed: int = 0) -> None:
        super().__init__()
        self.name = name
        self.root = Path(root).expanduser() if root else None
        self._num_classes = None if num_classes is None else _count(num_classes, "num_classes", 2)
        self.in_channels = _count(in_channels, "in_channels")
        self.native_resolution = _count(native_resolution, "native_resolution")
        self.mean = _per_channel(mean, self.in_channels, "mean")
        self.std = _per_channel(std, self.in_channels, "std")
        if min(self.std) <= 0:
            raise UserError(f"data.std: must be positive, got {list(std)}")
        self.batch_size = _count(batch_size, "batch_size")
        self._num_workers = None if num_workers is None else _count(num_workers, "num_workers", 0, MAX_PROCESSES)
        self.hflip = bool(hflip)
        self.data_seed, self.seed = int(data_seed), int(seed)
        self.resolution = native_resolution if resolution is None else resolution

    @property
    def num_classes(self) -> int:
        return self._num_classes

    @property
    def has_test_split(self) -> bool:
        """Whether the test split is data of its own (not the validation split again)."""
        return True

    @property
    def class_names(self) -> list[str]:
        raise NotImplementedError

    @property
    def resolution(self) -> int:
        """The candidate's input size in pixels (square); loaders made after a change use it."""
        return self._resolution

    @resolution.setter
    def resolution(self, value: int) -> None:
        self._resolution = _count(value, "resolution")

    @property
    def num_workers(self) -> int:
        """Loader processes: the configured number, or `fitted_workers()` when the config says null."""
        return fitted_workers() if self._num_workers is None else self._num_workers

    def read(self) -> None:
        """Read the data now (`prepare_data`, `setup("fit")`): a missing, empty or corrupt data set is one
        error before a sweep writes anything, not the same failure in every trial. Its shape
        (`num_classes`, `in_channels`) is known before, from the config or the class folders' names."""
        self.prepare_data()
        self.setup("fit")


# --- in-memory sources ----------------------------------------------------------------------------

Split = tuple[torch.Tensor, torch.Tensor]  # uint8 images N×C×H×W, int64 labels N


class TensorDataModule(DataModule):
    """A source small enough to hold in memory as uint8. Each split is resized once per resolution
    (not once per step) and served by `TensorBatchLoader` in the main process: `num_workers` is 0
    whatever the config says."""

    def __init__(self, **common: Any) -> None:
        super().__init__(**common)
        self._splits: dict[str, Split] | None = None
        self._resized: dict[str, Split] = {}

    def _load(self) -> dict[str, Split]:
        """The train, val and test splits at native resolution."""
        raise NotImplementedError

    def setup(self, stage: str | None = None) -> None:
        if self._splits is None:
            self._splits = self._load()

    @property
    def num_workers(self) -> int:
        return 0

    def tensors(self, split: str) -> Split:
        """`split` ("train", "val" or "test") as uint8 images at the current resolution, and labels."""
        self.setup()
        images, labels = self._splits[split]
        cached = self._resized.get(split)
        if cached is None or cached[0].shape[-1] != self.resolution:
            self._resized[split] = cached = (resize_uint8(images, self.resolution), labels)
        return cached

    def _loader(self, split: str, train: bool) -> TensorBatchLoader:
        images, labels = self.tensors(split)
        return TensorBatchLoader(images, labels, batch_size=self.batch_size, mean=self.mean, std=self.std,
                                 shuffle=train, drop_last=train, hflip=train and self.hflip, seed=self.seed)

    def train_dataloader(self) -> TensorBatchLoader:
        return self._loader("train", train=True)

    def val_dataloader(self) -> TensorBatchLoader:
        return self._loader("val", train=False)

    def test_dataloader(self) -> TensorBatchLoader:
        return self._loader("test", train=False)


def _carve(images: torch.Tensor, labels: torch.Tensor, val_size: int, train_size: int | None,
           seed: int) -> tuple[Split, Split]:
    """A validation split of `val_size` images drawn from a training set with a fixed seed (the same
    for every trial, so that all candidates are compared on the same images), and the rest, optionally
    cut to `train_size` for quick runs."""
    total = len(labels)
    if val_size >= total:
        raise UserError(f"data.val_size: {val_size} leaves no training images out of {total}")
    if train_size is not None and train_size > total - val_size:
        raise UserError(f"data.train_size: {train_size} is more than the {total - val_size} images left "
                        f"after data.val_size={val_size}")
    order = torch.randperm(total, generator=torch.Generator().manual_seed(seed))
    val, train = order[:val_size], order[val_size:]
    if train_size is not None:
        train = train[:train_size]
    return (images[train], labels[train]), (images[val], labels[val])


# --- procedural -----------------------------------------------------------------------------------

@lru_cache(maxsize=6)
def _procedural_split(count: int, native_resolution: int, seed: tuple[int, int], num_classes: int) -> Split:
    """Cached so that the trials of one search process generate each split once (never modified)."""
    images, labels = generate_procedural(count, native_resolution, seed, num_classes)
    return torch.from_numpy(images), torch.from_numpy(labels)


class ProceduralDataModule(TensorDataModule):
    """The embedded default: no files, no download, the same images for the same `data_seed`."""

    def __init__(self, *, train_size: int = 6000, val_size: int = 1000, test_size: int = 1000,
                 **common: Any) -> None:
        super().__init__(**common)
        if self.root is not None:
            raise UserError("data.root: data=procedural generates its images and reads no files "
                            "(for files use data=imagefolder, fashion_mnist or cifar10)")
        if self.in_channels != 3:
            raise UserError(f"data.in_channels: procedural images are RGB (3), got {self.in_channels}")
        if not 2 <= self.num_classes <= len(PROCEDURAL_CLASSES):
            raise UserError(f"data.num_classes: procedural data has 2 to {len(PROCEDURAL_CLASSES)} "
                            f"classes, got {self.num_classes}")
        self.sizes = {"train": _count(train_size, "train_size"), "val": _count(val_size, "val_size"),
                      "test": _count(test_size, "test_size")}

    @property
    def class_names(self) -> list[str]:
        return list(PROCEDURAL_CLASSES[:self.num_classes])

    def _load(self) -> dict[str, Split]:
        # One seed per split, so that changing one split's size leaves the others' images unchanged.
        return {split: _procedural_split(count, self.native_resolution, (self.data_seed, index), self.num_classes)
                for index, (split, count) in enumerate(self.sizes.items())}


# --- Fashion-MNIST --------------------------------------------------------------------------------

FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
                         "Sneaker", "Bag", "Ankle boot")
# IDX magic numbers (LeCun's MNIST format): 0x08 = unsigned bytes, then the number of dimensions.
IDX_IMAGES, IDX_LABELS = 0x0803, 0x0801


def _idx_bytes(path: Path) -> tuple[bytes, bool]:
    """The file's (decompressed) bytes, and whether the gzip stream was complete. What a truncated
    gzip still holds is returned, so that the size check can say how much is missing."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise UserError(f"{path}: cannot read ({exc.strerror})") from None
    if path.suffix != ".gz":
        return raw, True
    parts = []
    while True:  # a gzip file may hold several members one after another (`cat a.gz b.gz`, bgzip)
        stream = zlib.decompressobj(wbits=31)  # 31: a gzip header and trailer around the deflate data
        try:
            parts.append(stream.decompress(raw))
        except zlib.error as exc:
            raise UserError(f"{path}: not a valid gzip file ({exc})") from None
        raw = stream.unused_data.lstrip(b"\0")  # some writers pad members with zeros, as gzip reads
        if not (stream.eof and raw):
            return b"".join(parts), stream.eof


def read_idx(path: Path | str, magic: int) -> np.ndarray:
    """The array stored in an IDX file: a big-endian int32 magic number (whose low byte is the number of
    dimensions), one int32 per dimension, then the unsigned bytes. Every way the file can be wrong is
    a `UserError` naming it."""
    path = Path(path)
    data, complete = _idx_bytes(path)
    ndim = magic & 0xFF
    header = 4 + 4 * ndim
    if len(data) < header:
        raise UserError(f"{path}: truncated, expected at least {header} bytes, found {len(data)}")
    found = struct.unpack(">i", data[:4])[0]
    if found != magic:
        raise UserError(f"{path}: wrong magic number {found}, expected {magic}")
    dims = struct.unpack(f">{ndim}I", data[4:header])
    expected = header + math.prod(dims)
    if len(data) < expected:
        raise UserError(f"{path}: truncated, expected {expected} bytes, found {len(data)}")
    if not complete:
        raise UserError(f"{path}: truncated, the gzip stream ends early")
    if len(data) > expected:
        raise UserError(f"{path}: {len(data) - expected} bytes beyond the {expected} its header declares")
    return np.frombuffer(data, np.uint8, offset=header).reshape(dims)


class CarvedDataModule(TensorDataModule):
    """A published data set with a training and a test split: `test` is its test split, and `val` is
    carved from its training split with `data_seed` (candidates are ranked on it, so it is never empty)."""

    NAME = ""
    CLASSES: tuple[str, ...] = ()
    IN_CHANNELS: tuple[int, ...] = (3,)
    CHANNELS_SAY = ""

    def __init__(self, *, download: bool = False, val_size: int = 5000, train_size: int | None = None,
                 test_size: int | None = None, **common: Any) -> None:
        super().__init__(**common)
        if self.num_classes != len(self.CLASSES):
            raise UserError(f"data.num_classes: {self.NAME} has {len(self.CLASSES)} classes, got {self.num_classes}")
        if self.in_channels not in self.IN_CHANNELS:
            raise UserError(f"data.in_channels: {self.CHANNELS_SAY}, got {self.in_channels}")
        self.download = bool(download)
        self.val_size = _count(val_size, "val_size")
        self.train_size = None if train_size is None else _count(train_size, "train_size")
        self.test_size = None if test_size is None else _count(test_size, "test_size")

    @property
    def class_names(self) -> list[str]:
        return list(self.CLASSES)

    def _read(self, train: bool) -> Split:
        """The training or the test split at native resolution."""
        raise NotImplementedError

    def _load(self) -> dict[str, Split]:
        train, val = _carve(*self._read(train=True), self.val_size, self.train_size, self.data_seed)
        return {"train": train, "val": val, "test": self._test_split()}

    def _test_split(self) -> Split:
        """The test split, or `test_size` of its images drawn with `data_seed` (the same for every trial)."""
        images, labels = self._read(train=False)
        if self.test_size is None:
            return images, labels
        if self.test_size > len(labels):
            raise UserError(f"data.test_size: {self.test_size} is more than the {len(labels)} images of "
                            f"{self.NAME}'s test split")
        chosen = torch.randperm(len(labels), generator=torch.Generator().manual_seed(self.data_seed))[:self.test_size]
        return images[chosen], labels[chosen]


@contextmanager
def fetching(name: str, root: Path, into: Path) -> Iterator[None]:
    """A download of data set `name` under data.root=`root` into `into`: a failure (offline, say) is one
    line, and the folders the download made are removed again."""
    new = first_new_folder(into)
    try:
        yield
    except (OSError, RuntimeError) as exc:
        remove_created(new, into)
        reason = " ".join(str(exc).split())  # torchvision's message spans lines, one per mirror tried
        raise UserError(f"data.download: could not fetch {name} into {root} ({reason[:300]})") from None


class FashionMNISTDataModule(CarvedDataModule):
    """Fashion-MNIST (Xiao et al. 2017) from its original IDX files (train and t10k)."""

    NAME, CLASSES = "Fashion-MNIST", FASHION_MNIST_CLASSES
    IN_CHANNELS, CHANNELS_SAY = (1, 3), "1 (grey) or 3 (grey replicated as RGB)"

    def prepare_data(self) -> None:
        if not self.download:
            return
        from torchvision.datasets import FashionMNIST

        with fetching(self.NAME, self._root(), self._root() / "FashionMNIST" / "raw"):  # where torchvision puts it
            FashionMNIST(str(self._root()), download=True)

    def _root(self) -> Path:
        if self.root is None:
            raise UserError("data.root: not set; point it at the Fashion-MNIST IDX files "
                            "(data.root=DIR) or add data.download=true")
        return self.root

    def _file(self, stem: str) -> Path:
        """`stem` or `stem`.gz in the root, or where torchvision's download puts it."""
        root = self._root()
        if not root.is_dir():
            raise UserError(f"data.root: {root} is not a directory")
        for folder in (root, root / "FashionMNIST" / "raw"):
            for name in (stem, stem + ".gz"):
                if (folder / name).is_file():
                    return folder / name
        raise UserError(f"{root / stem}[.gz]: missing (data.download=true fetches the Fashion-MNIST files)")

    def _read(self, train: bool) -> Split:
        prefix = "train" if train else "t10k"
        images_path, labels_path = self._file(f"{prefix}-images-idx3-ubyte"), self._file(f"{prefix}-labels-idx1-ubyte")
        images, labels = read_idx(images_path, IDX_IMAGES), read_idx(labels_path, IDX_LABELS)
        if len(images) != len(labels):
            raise UserError(f"{labels_path}: {len(labels)} labels for the {len(images)} images in {images_path.name}")
        if images.shape[1:] != (self.native_resolution,) * 2:
            raise UserError(f"{images_path}: images are {images.shape[1]}×{images.shape[2]} px, expected "
                            f"{self.native_resolution}×{self.native_resolution}")
        if len(labels) and labels.max() >= self.num_classes:
            raise UserError(f"{labels_path}: label {labels.max()} outside 0..{self.num_classes - 1}")
        return torch.from_numpy(images.copy()).unsqueeze(1), torch.from_numpy(labels.astype(np.int64))


# --- CIFAR-10 -------------------------------------------------------------------------------------

CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


class CIFAR10DataModule(CarvedDataModule):
    """CIFAR-10 through torchvision's reader, which checks the files' MD5 sums."""

    NAME, CLASSES = "CIFAR-10", CIFAR10_CLASSES
    IN_CHANNELS, CHANNELS_SAY = (3,), "CIFAR-10 images are RGB (3)"

    def prepare_data(self) -> None:
        if self.download:
            self._read(train=True)

    def _read(self, train: bool) -> Split:
        from torchvision.datasets import CIFAR10

        if self.root is None:
            raise UserError("data.root: not set; point it at the folder holding cifar-10-batches-py "
                            "(data.root=DIR) or add data.download=true")
        try:
            with fetching(self.NAME, self.root, self.root) if self.download else nullcontext():
                dataset = CIFAR10(str(self.root), train=train, download=self.download)
        except RuntimeError:  # torchvision: "Dataset not found or corrupted"
            raise UserError(f"data.root: no intact CIFAR-10 (cifar-10-batches-py) under {self.root}; "
                            "data.download=true fetches it") from None
        images = torch.from_numpy(dataset.data).permute(0, 3, 1, 2).contiguous()
        return images, torch.tensor(dataset.targets, dtype=torch.int64)


# --- image folders --------------------------------------------------------------------------------

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
EVAL_CROP = 0.875  # evaluation resizes to resolution / 0.875, then centre-crops: ImageNet's 224 of 256
Sample = tuple[str, int]


def _checked(path: str) -> tuple[str | None, int]:
    """Why PIL cannot decode `path` (None: it can), and its pixel count. `verify()` checks the container
    without decoding (and leaves the image unusable), and a truncated JPEG passes it, so a second open
    decodes the pixels."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            image.verify()
        with Image.open(path) as image:
            image.load()
    except Exception as exc:  # PIL raises OSError, SyntaxError, ValueError, ... for bad files
        return f"{type(exc).__name__}: {exc}", 0
    return too_elongated(image.size), image.width * image.height


class _ImageFiles(torch.utils.data.Dataset):
    """(path, label) pairs decoded on access, as `mode` ("RGB" or "L"), through `transform`."""

    def __init__(self, samples: list[Sample], transform: Any, mode: str) -> None:
        self.samples, self.transform, self.mode = samples, transform, mode

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        from PIL import Image

        path, label = self.samples[index]
        # Setup warned of an image beyond Pillow's pixel guard, which Pillow checks again at each open and crop.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            try:
                with Image.open(path) as image:
                    why = too_elongated(image.size)
                    if why:
                        raise ValueError(why)
                    image = to_8bit(upright(image), self.mode)  # decodes it
            except Exception as exc:  # every trial would meet it: stop, naming the file
                raise UserError(f"{path}: unreadable image ({type(exc).__name__}: {exc}); "
                                "data.verify=true skips such files") from None
            return self.transform(image), label


def _class_folders(folder: Path) -> set[str]:
    """The class folders in `folder`: its sub-folders but hidden ones (.ipynb_checkpoints, .git)."""
    return {entry.name for entry in os.scandir(folder) if entry.is_dir() and not entry.name.startswith(".")}


class ImageFolderDataModule(DataModule):
    """Any `root/<class>/<image>` tree (torchvision ImageFolder's layout). With `root/train` and
    `root/val` (and optionally `root/test`) those are the splits; otherwise `val_fraction` of each
    class's images is held out with `data_seed`. Without a test split, `test` is `val` (and
    `has_test_split` False: the commands then report no test accuracy). Every image is opened once at
    setup (`verify: true`) so that a corrupt file is skipped with one warning, not met mid-epoch."""

    def __init__(self, *, val_fraction: float = 0.1, verify: bool = True, **common: Any) -> None:
        super().__init__(**common)
        if self.in_channels not in (1, 3):
            raise UserError(f"data.in_channels: 1 (grey) or 3 (RGB), got {self.in_channels}")
        if not 0 < val_fraction < 1:
            raise UserError(f"data.val_fraction: expected a fraction between 0 and 1, got {val_fraction}")
        self.val_fraction, self.verify = float(val_fraction), bool(verify)
        self._classes: list[str] | None = None
        self._samples: dict[str, list[Sample]] | None = None

    @property
    def num_classes(self) -> int:
        return len(self.class_names) if self._num_classes is None else self._num_classes

    @property
    def class_names(self) -> list[str]:
        """The class folders' names, sorted; without a root (a shape-only config such as imagenet),
        placeholders for `num_classes`."""
        if self._classes is None:
            if self.root is None and self._num_classes is not None:
                return [f"class {index}" for index in range(self._num_classes)]
            dirs = self._split_dirs()
            classes = self._find_classes(dirs["train"])
            for split in ("val", "test"):
                if dirs[split] is not None:
                    self._same_classes(dirs[split], classes, dirs["train"])
            self._classes = classes
        return list(self._classes)

    @property
    def has_test_split(self) -> bool:
        return self._split_dirs()["test"] is not None

    def _split_dirs(self) -> dict[str, Path | None]:
        if self.root is None:
            raise UserError("data.root: not set; point it at a folder of <class>/<image> folders (data.root=DIR)")
        if not self.root.is_dir():
            raise UserError(f"data.root: {self.root} is not a directory")
        if not (self.root / "train").is_dir():
            return {"train": self.root, "val": None, "test": None}
        return {split: self.root / split if (self.root / split).is_dir() else None
                for split in ("train", "val", "test")}

    @staticmethod
    def _find_classes(folder: Path) -> list[str]:
        classes = sorted(_class_folders(folder))
        if not classes:
            raise UserError(f"{folder}: no class folders (expected {folder}/<class>/<image files>)")
        if len(classes) == 1:
            raise UserError(f"{folder}: one class folder ({classes[0]}); a classifier needs two or more")
        return classes

    @staticmethod
    def _same_classes(folder: Path, classes: list[str], train: Path) -> None:
        """`folder` (val/ or test/) has the class folders of `train`, no more and no fewer."""
        found = _class_folders(folder)
        extra, missing = sorted(found - set(classes)), sorted(set(classes) - found)
        if extra:
            raise UserError(f"{folder / extra[0]}: a class folder {train} lacks; train, val and test need the "
                            "same class folders")
        if missing:
            raise UserError(f"{folder}: no class folder {missing[0]}, which {train} has; train, val and test "
                            "need the same class folders")

    def _images(self, folder: Path) -> list[Sample]:
        """Every image file under `folder`/<class>/, recursively, in a fixed order; each class folder
        must hold one."""
        samples, empty = [], None
        for label, name in enumerate(self.class_names):
            before = len(samples)
            for directory, _, files in sorted(os.walk(folder / name, followlinks=True)):
                samples += [(os.path.join(directory, file), label) for file in sorted(files)
                            if file.lower().endswith(IMAGE_EXTENSIONS)]
            if len(samples) == before and empty is None:
                empty = name
        if not samples:
            raise UserError(f"{folder}: no images ({', '.join(IMAGE_EXTENSIONS)}) in its class folders")
        if empty is not None:
            raise UserError(f"{folder / empty}: no images ({', '.join(IMAGE_EXTENSIONS)}); every class folder "
                            "needs at least one")
        return samples

    def setup(self, stage: str | None = None) -> None:
        if self._samples is None:
            samples = self._scan()
            self._samples = self._without_unreadable(samples) if self.verify else samples

    def _scan(self) -> dict[str, list[Sample]]:
        dirs = self._split_dirs()
        if self._num_classes is not None and self._num_classes != len(self.class_names):
            raise UserError(f"data.num_classes: {self._num_classes}, but {dirs['train']} has "
                            f"{len(self.class_names)} class folders")
        train = self._images(dirs["train"])
        if dirs["val"] is None:
            train, val = self._hold_out(train)
        else:
            val = self._images(dirs["val"])
        return {"train": train, "val": val, "test": val if dirs["test"] is None else self._images(dirs["test"])}

    def _hold_out(self, samples: list[Sample]) -> tuple[list[Sample], list[Sample]]:
        """`val_fraction` of the images for validation, drawn with `data_seed` from each class in
        proportion to its size (largest remainders), each class keeping one training image at least:
        drawn from all images at once, a rare class could lose every one."""
        by_class: dict[int, list[Sample]] = {}
        for sample in samples:
            by_class.setdefault(sample[1], []).append(sample)
        total = max(1, round(self.val_fraction * len(samples)))
        quota = {label: self.val_fraction * len(members) for label, members in by_class.items()}
        spare = {label: len(members) - 1 for label, members in by_class.items()}  # one stays to train on
        held = {label: min(int(q), spare[label]) for label, q in quota.items()}
        order = sorted(by_class, key=lambda k: (int(quota[k]) - quota[k], k))  # largest remainder first
        while sum(held.values()) < total and any(held[k] < spare[k] for k in order):
            for label in order:
                if sum(held.values()) < total and held[label] < spare[label]:
                    held[label] += 1
        if not any(held.values()):
            raise UserError(f"data.val_fraction: {self.root} has one image a class, none to hold out for "
                            "validation; give a val folder")
        generator = torch.Generator().manual_seed(self.data_seed)
        train: list[Sample] = []
        val: list[Sample] = []
        for label in sorted(by_class):
            members = by_class[label]
            order = torch.randperm(len(members), generator=generator).tolist()
            val += [members[i] for i in order[:held[label]]]
            train += [members[i] for i in order[held[label]:]]
        return train, val

    def _without_unreadable(self, splits: dict[str, list[Sample]]) -> dict[str, list[Sample]]:
        """Each file opened once, in parallel threads (PIL decodes without the GIL); the unreadable ones
        dropped with a single warning that counts them and names the first. A split left with no image,
        or with none of a class it had (a test accuracy over the other classes only), is refused."""
        from PIL import Image

        paths = sorted({path for samples in splits.values() for path, _ in samples})
        # Pillow's warning of an image beyond its pixel guard names no file and comes at each open: ours instead.
        with warnings.catch_warnings(), ThreadPoolExecutor(max(1, self.num_workers)) as pool:
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            checked = dict(zip(paths, pool.map(_checked, paths)))
        problems = {path: why for path, (why, _) in checked.items() if why}
        kept = {split: [s for s in samples if s[0] not in problems] for split, samples in splits.items()}
        for split, samples in kept.items():
            if not samples:
                raise UserError(f"{self.root}: no readable images left in the {split} split")
        for split, samples in splits.items():
            gone = {label for _, label in samples} - {label for _, label in kept[split]}
            if gone:  # and so unreadable, each image of the class in this split
                label = min(gone)
                lost = sorted(path for path, of in samples if of == label)
                what = "training" if split == "train" else split
                raise UserError(f"{self.root}: no readable {what} image of class {self.class_names[label]} is left "
                                f"({len(lost)} unreadable, the first {lost[0]}: {problems[lost[0]]})")
        if problems:
            first = min(problems)
            warnings.warn(f"{self.root}: skipped {len(problems)} unreadable image(s), the first {first} "
                          f"({problems[first]})", stacklevel=2)
        limit = Image.MAX_IMAGE_PIXELS
        large = {path: pixels for path, (why, pixels) in checked.items() if not why and limit and pixels > limit}
        if large:
            largest = max(large, key=large.get)
            warnings.warn(f"{self.root}: {len(large)} image(s) beyond Pillow's {limit:,} pixels (a guard against "
                          f"decompression bombs), the largest {largest} ({large[largest]:,} pixels), decoded at "
                          "every epoch", stacklevel=2)
        return kept

    def _transform(self, train: bool) -> Any:
        """Training: a random crop of 8-100 % of the image (Inception-style) resized to `resolution`;
        evaluation: resize and centre crop. Both end in `mean`/`std` normalisation."""
        from torchvision import transforms

        size = self.resolution
        if train:
            steps = [transforms.RandomResizedCrop(size)] + ([transforms.RandomHorizontalFlip()] if self.hflip else [])
        else:
            steps = [transforms.Resize(round(size / EVAL_CROP)), transforms.CenterCrop(size)]
        return transforms.Compose([*steps, transforms.ToTensor(), transforms.Normalize(self.mean, self.std)])

    def _loader(self, split: str, train: bool) -> torch.utils.data.DataLoader:
        self.setup()
        dataset = _ImageFiles(self._samples[split], self._transform(train), "L" if self.in_channels == 1 else "RGB")
        workers = self.num_workers
        rank, world = _rank_and_world()
        sampler = None
        if world > 1 and not train:
            # Lightning's own DistributedSampler pads each rank's shard with repeated images, which the
            # accuracy would count: every image once, on one rank or another.
            from lightning.pytorch.overrides.distributed import UnrepeatedDistributedSampler

            sampler = UnrepeatedDistributedSampler(dataset, num_replicas=world, rank=rank, shuffle=False)
        return torch.utils.data.DataLoader(
            dataset, batch_size=self.batch_size, shuffle=train, sampler=sampler,
            drop_last=train and len(dataset) // world > self.batch_size,  # each rank trains on its share
            num_workers=workers, persistent_workers=workers > 0, pin_memory=torch.cuda.is_available(),
            generator=torch.Generator().manual_seed(self.seed))

    def train_dataloader(self) -> torch.utils.data.DataLoader:
        return self._loader("train", train=True)

    def val_dataloader(self) -> torch.utils.data.DataLoader:
        return self._loader("val", train=False)

    def test_dataloader(self) -> torch.utils.data.DataLoader:
        return self._loader("test", train=False)


# --- from a config --------------------------------------------------------------------------------

DATAMODULES: dict[str, type[DataModule]] = {
    "procedural": ProceduralDataModule,
    "fashion_mnist": FashionMNISTDataModule,
    "cifar10": CIFAR10DataModule,
    "imagefolder": ImageFolderDataModule,
}


def _settings(cls: type[DataModule]) -> set[str]:
    """The keyword arguments `cls` accepts: its own and those of every base it passes `**common` to."""
    return {name for klass in cls.__mro__ if "__init__" in vars(klass) and issubclass(klass, DataModule)
            for name, parameter in inspect.signature(klass.__init__).parameters.items()
            if parameter.kind is inspect.Parameter.KEYWORD_ONLY}


def build_datamodule(cfg: Mapping[str, Any], resolution: int, batch_size: int, num_workers: int | None = None,
                     seed: int = 0) -> DataModule:
    """The data module the `data` config group describes, at a candidate's `resolution` and
    `batch_size`; `seed` orders the batches (the images and splits depend on `data_seed` only)."""
    cfg = OmegaConf.to_container(cfg, resolve=True) if OmegaConf.is_config(cfg) else dict(cfg)
    name = cfg.get("name")
    if name not in DATAMODULES:
        raise UserError(f"data.name: unknown data source {name!r}; expected one of {', '.join(DATAMODULES)}")
    cls = DATAMODULES[name]
    unknown = sorted(set(cfg) - _settings(cls))
    if unknown:  # often a +sweep preset's, made for another data set: the removal is said in full
        keys = [f"data.{key}" for key in unknown]
        raise UserError(f"{', '.join(keys)}: not {'a setting' if len(keys) == 1 else 'settings'} of data={name} "
                        f"(its settings: {', '.join(sorted(_settings(cls) - {'seed'}))}); set by a +sweep preset? "
                        f"drop {'it' if len(keys) == 1 else 'them'} with {' '.join('~' + k for k in keys)}")
    overrides = {"resolution": resolution, "batch_size": batch_size, "seed": seed}
    if num_workers is not None:
        overrides["num_workers"] = num_workers
    return cls(**{**cfg, **overrides})
