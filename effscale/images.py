"""Decoding an image file the way a viewer shows it, for training (effscale/data.py) and for
classification (effscale/predict.py): turned upright, its value range kept, transparency on white,
and refused when it is too elongated to resize."""

from __future__ import annotations

from typing import Any

# The longest a side may be, in multiples of the other: preprocessing resizes the shorter side to a few
# hundred pixels, which would make a 15000×1 strip gigabytes.
MAX_ASPECT = 100
# The largest side preprocessing may resize or crop an image to: nearly 7× B7's 600 px, where one image
# is already 200 MB as floats.
MAX_IMAGE_SIDE = 4096
EXIF_ORIENTATION = 0x0112


def too_elongated(size: tuple[int, int]) -> str | None:
    """Why an image of `size` (width, height) cannot be resized for a model, or None."""
    width, height = size
    if max(width, height) > MAX_ASPECT * max(1, min(width, height)):
        return f"{width}×{height} pixels, too elongated to resize (one side over {MAX_ASPECT}× the other)"
    return None


def upright(image: Any) -> Any:
    """A decoded PIL image turned as its camera's EXIF orientation tag says: phones store photos
    sideways and tag them, and a model sees what a viewer shows."""
    from PIL import ImageOps

    return ImageOps.exif_transpose(image) if image.getexif().get(EXIF_ORIENTATION, 1) != 1 else image


def to_8bit(image: Any, mode: str) -> Any:
    """A PIL image as `mode` ("L" or "RGB") with its value range kept: Pillow's own convert clips 16- and
    32-bit greyscale at 255, which turns a 16-bit photo almost white. A transparent image is laid on
    white, as a viewer shows it: Pillow's convert drops alpha, and a PNG's transparent pixels are often
    black underneath."""
    if image.mode in ("RGBA", "LA", "PA", "La", "RGBa") or (image.mode == "P" and "transparency" in image.info):
        from PIL import Image

        image = image.convert("RGBA")
        image = Image.alpha_composite(Image.new("RGBA", image.size, (255, 255, 255, 255)), image)
    if image.mode.startswith("I;16") or image.mode in ("I", "F"):
        import numpy as np
        from PIL import Image

        values = np.asarray(image, dtype=np.float64)
        if image.mode.startswith("I;16") or (image.mode == "I" and values.max(initial=0) > 255):
            values = values / 257  # 65535 → 255
        elif image.mode == "F" and values.min(initial=0) >= 0 and values.max(initial=0) <= 1:
            values = values * 255
        image = Image.fromarray(np.clip(np.nan_to_num(values), 0, 255).round().astype(np.uint8))
    return image.convert(mode)
