"""`effscale predict IMAGE…`: classify photos with pretrained weights loaded into effscale's builder.

The weights decide everything the photo goes through: the architecture (unless --baseline says),
the class names (ImageNet's from torchvision's metadata, or a fine-tuned checkpoint's own) and the
preprocessing they were trained with (see `effscale.weights`).
"""

from __future__ import annotations

import json
import warnings
from itertools import islice
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, TypeVar

from effscale.errors import UserError

if TYPE_CHECKING:  # torch loads once the images are known good: a mistyped path is one line at once
    from effscale.weights import Pretrained

BATCH = 16
T = TypeVar("T")


def check_image(path: str | Path) -> None:
    """From its header only: whether `path` is an image Pillow opens and preprocessing can resize; a
    UserError saying why not. Every path is checked before the weights load; pixels are decoded later,
    a batch at a time, so that a folder of photos never sits decoded in memory at once."""
    _opened(path, lambda image: _resizable(path, image), warn=True)


def open_image(path: str | Path) -> Any:
    """The image at `path`, fully decoded and turned upright (EXIF orientation), or a UserError saying why not."""
    from effscale.images import upright

    # copy() decodes: a truncated file fails here
    return _opened(path, lambda image: upright(_resizable(path, image).copy()))


def _resizable(path: str | Path, image: Any) -> Any:
    from effscale.images import too_elongated

    why = too_elongated(image.size)
    if why:
        raise UserError(f"{path}: {why}")
    return image


def _opened(path: str | Path, read: Callable[[Any], T], warn: bool = False) -> T:
    """`read(image)` of the image at `path`, with every way the file can be wrong a one-line UserError.
    With `warn`, a warning naming the file if it is larger than Pillow opens without one (that
    warning names no file, and would come again when the image is decoded)."""
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    if not path.exists():
        why = "a symbolic link that leads to no file (broken, or a loop)" if path.is_symlink() else "no such file"
        raise UserError(f"{path}: {why}")
    if not path.is_file():
        raise UserError(f"{path}: not a file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                pixels, limit = image.width * image.height, Image.MAX_IMAGE_PIXELS
                if warn and limit and pixels > limit:
                    decoded_mb = pixels * len(image.getbands()) / 2**20
                    warnings.warn(f"{path}: {pixels:,} pixels, beyond Pillow's {limit:,} (a guard against "
                                  f"decompression bombs); decoding it takes {decoded_mb:,.0f} MB", stacklevel=2)
                return read(image)
    except UserError:
        raise
    except UnidentifiedImageError:
        raise UserError(f"{path}: not an image (Pillow cannot identify it)") from None
    except Image.DecompressionBombError as exc:  # Pillow's guard against a file that decodes to gigabytes
        raise UserError(f"{path}: image too large to open ({exc})") from None
    except Exception as exc:  # damaged files also raise TypeError, struct.error, IndexError, ... from the decoders
        raise UserError(f"{path}: corrupt or truncated image ({str(exc) or type(exc).__name__})") from None


def classify(pretrained: Pretrained, images: Iterable[Any], top: int = 5) -> list[list[tuple[int, float]]]:
    """For each image, the `top` (class index, probability) pairs, most probable first. `images` is
    read a batch at a time (a generator that decodes them holds one batch in memory)."""
    import torch

    transform = pretrained.preprocessing.transform()
    pretrained.model.eval()
    top = min(top, len(pretrained.class_names))
    results = []
    images = iter(images)
    while chunk := list(islice(images, BATCH)):
        batch = torch.stack([transform(image) for image in chunk])
        del chunk
        with torch.no_grad():
            probs = pretrained.model(batch).softmax(dim=1)
        values, indices = probs.topk(top, dim=1)
        results += [list(zip(i.tolist(), v.tolist())) for i, v in zip(indices, values)]
    return results


def describe(pretrained: Pretrained) -> str:
    """Two lines: which model and weights, and how images are prepared for them."""
    p = pretrained.preprocessing
    variant = pretrained.table.get("variant")
    name = pretrained.table["name"] + (f" variant={variant}" if variant not in (None, "b0") else "")
    return (f"model   {name}, {pretrained.format} weights from {_relative(pretrained.source)}\n"
            f"images  {p.interpolation} resize {p.resize}, centre crop {p.crop}, "
            f"mean {_numbers(p.mean)}, std {_numbers(p.std)}")


def _relative(path: str) -> str:
    try:
        return str(Path(path).resolve().relative_to(Path.cwd()))
    except ValueError:
        return path


def _numbers(values: tuple[float, ...]) -> str:
    """0.498 for equal channels, 0.485/0.456/0.406 otherwise."""
    return f"{values[0]:.3g}" if len(set(values)) == 1 else "/".join(f"{v:.3g}" for v in values)


def print_table(paths: list[str], results: list[list[tuple[int, float]]], names: list[str]) -> None:
    width = max(len(names[i]) for ranked in results for i, _ in ranked)
    for path, ranked in zip(paths, results):
        print(f"\n{path}")
        for rank, (index, prob) in enumerate(ranked, start=1):
            print(f"  {rank}  {names[index]:<{width}}  {100 * prob:5.1f} %  (class {index})")


def run(image_paths: list[str], weights: str = "imagenet", baseline: str | None = None,
        variant: str | None = None, top: int = 5, as_json: bool = False) -> None:
    """Print the top-k classes of each image: a table, or one JSON object per image."""
    if top < 1:
        raise UserError(f"--top must be at least 1, got {top}")
    for path in image_paths:  # a wrong path, or a file that is no image, fails before the weights load
        check_image(path)
    from effscale.weights import load_pretrained

    pretrained = load_pretrained(weights, baseline, variant)
    results = classify(pretrained, (open_image(path) for path in image_paths), top)
    names = pretrained.class_names
    if as_json:
        for path, ranked in zip(image_paths, results):
            print(json.dumps({
                "image": path, "model": pretrained.table["name"], "variant": pretrained.table.get("variant"),
                "weights": pretrained.source,
                "top": [{"rank": r, "class": names[i], "index": i, "prob": round(p, 6)}
                        for r, (i, p) in enumerate(ranked, start=1)],
            }))
    else:
        print(describe(pretrained))
        print_table(image_paths, results, names)
