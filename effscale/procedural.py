"""The procedural data set: the default source, generated in memory from a seed (no files, no download).

Each image (`native_resolution`, 64 px by default, twice the 32 px the baseline trains at) shows a
square patch and a cross far apart, over a colour gradient with up to four distractor discs and
pixel noise. The class is the pair (patch texture, layout): five textures × two layouts = 10 classes.
Compound scaling only pays off if every dimension has something to buy, so each factor is built for
one of them:

- Resolution. The patch is plain, coarsely striped (period 1/7-1/5 of the image, visible at 24 px)
  or finely striped, horizontally or vertically, with a period of 2-3.4 native pixels. Fine stripes
  are sinusoids that average to the plain patch's colour, so an antialiased downsample all but
  erases them. A fixed linear probe on the amplitude spectrum (tests/test_data.py) tells plain,
  fine-horizontal and fine-vertical apart 93 % of the time at 64 px, 80 % at 48, 62 % at 40, 44 % at
  32 and 35 % at 8 px (chance: 33 %).
- Depth. The layout is whether the cross lies in the patch's row or in its column, 50-68 % of the
  image away. No local feature tells the two apart: a network must see both parts at once, and its
  receptive field grows with depth (and shrinks, relative to the image, as resolution grows: the
  paper's reason to scale depth together with resolution).
- Width. Every colour is random; discs may carry the coarse stripes too, so a texture counts only
  on the square; stripe period, phase, contrast and position vary. Telling all that apart takes
  many filters.

Row/column layouts and stripe orientations are mirror-symmetric, so horizontal flips keep every class
and training uses them.

`python benchmarks/procedural_dims.py` trains a small CNN (three stages of `depth` conv layers, `width`
channels doubling per stage) for 4 epochs on the default splits, scaling one dimension at a time away
from depth 2, width 16, 32 px. Validation accuracy for two training seeds (`--seed 0`, `--seed 1`):

    scaled       depth  width   px   seed 0   seed 1
    baseline         2     16   32   64.2 %   61.5 %
    depth            1     16   32   47.4 %   47.1 %
    depth            3     16   32   77.0 %   71.8 %
    depth            4     16   32   66.8 %   70.4 %
    width            2      8   32   55.7 %   53.8 %
    width            2     32   32   77.1 %   70.7 %
    resolution       2     16   24   59.3 %   59.8 %
    resolution       2     16   48   84.7 %   84.6 %
    resolution       2     16   64   79.6 %   79.6 %

One step up in any dimension alone adds 9 to 23 points; a second step in depth or resolution adds
nothing (depth 4 trains no better in 4 epochs; at 64 px a depth-2 network no longer sees both parts at
once). Each dimension saturates alone, as in the paper's Fig. 3, which is what compound scaling is for.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np


TEXTURES = ("plain", "coarse-horizontal", "coarse-vertical", "fine-horizontal", "fine-vertical")
LAYOUTS = ("row", "column")
PROCEDURAL_CLASSES = tuple(f"{texture}/{layout}" for texture in TEXTURES for layout in LAYOUTS)

# Generator constants. Lengths are fractions of the image side unless they say px (native pixels).
_DISCS = 4                          # distractor discs, each present with probability 0.7
_DISC_TEXTURES = 3                  # discs are plain or coarsely striped (TEXTURES[:3])
_DISC_RADIUS = (0.04, 0.10)
_PATCH_HALF_SIDE = (0.11, 0.15)
_PART_DISTANCE = (0.50, 0.68)       # patch to cross: beyond a shallow network's receptive field
_MARGIN = 0.16                      # keeps both parts inside the image
_COARSE_PERIOD = (0.14, 0.20)
_FINE_PERIOD_PX = (2.0, 3.4)        # below the 4 px a 2× downsample can represent
_CONTRAST = (0.25, 0.45)
_GRADIENT = 0.3                     # background brightness change across the image, at most
_NOISE = 0.06                       # pixel noise, standard deviation (1 = full range)
_CHUNK = 1000                       # images rendered at once, to bound the float32 working memory


def generate_procedural(count: int, native_resolution: int = 64, seed: int | Sequence[int] = 0,
                        num_classes: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """`count` images (uint8, count×3×R×R) and labels (int64), as balanced as `count` allows, the
    same bytes for the same arguments. See the module docstring for what the classes are."""
    rng = np.random.default_rng(seed)
    labels = rng.permutation(np.arange(count) % num_classes)
    images = np.empty((count, 3, native_resolution, native_resolution), np.uint8)
    for start in range(0, count, _CHUNK):
        images[start:start + _CHUNK] = _render(labels[start:start + _CHUNK], native_resolution, rng)
    return images, labels.astype(np.int64)


def _render(labels: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    """One chunk of images, all drawn at once: each step works on the whole N×3×H×W block."""
    axis = np.arange(size, dtype=np.float32)
    grid = (axis.reshape(1, size, 1), axis.reshape(1, 1, size))  # y, x; broadcast against N×1×1
    canvas = _background(len(labels), size, rng, grid)
    _draw_discs(canvas, size, rng, grid)
    patch, cross = _place_parts(labels % len(LAYOUTS), size, rng)
    _draw_patch(canvas, labels // len(LAYOUTS), patch, size, rng, grid)
    _draw_cross(canvas, cross, size, rng, grid)
    canvas += _NOISE * rng.standard_normal(canvas.shape, dtype=np.float32)
    return np.clip(canvas * 255 + 0.5, 0, 255).astype(np.uint8)


def _uniform(rng: np.random.Generator, bounds: tuple[float, float], shape: Any) -> np.ndarray:
    return rng.uniform(bounds[0], bounds[1], shape).astype(np.float32)


def _background(count: int, size: int, rng: np.random.Generator, grid: tuple) -> np.ndarray:
    """A random colour with a linear brightness ramp in a random direction."""
    y, x = grid
    base = _uniform(rng, (0.25, 0.75), (count, 3, 1, 1))
    angle = _uniform(rng, (0, 2 * np.pi), (count, 1, 1))
    slope = _uniform(rng, (0, _GRADIENT), (count, 1, 1)) / size
    ramp = slope * (np.cos(angle) * (x - size / 2) + np.sin(angle) * (y - size / 2))
    return base + ramp[:, None]


def _paint(canvas: np.ndarray, mask: np.ndarray, rng: np.random.Generator) -> None:
    """Fill `mask` (N×H×W) with one random colour per image."""
    colour = _uniform(rng, (0, 1), (len(canvas), 3, 1, 1))
    np.copyto(canvas, colour, where=mask[:, None])


def _fill(canvas: np.ndarray, mask: np.ndarray, texture: np.ndarray, size: int, rng: np.random.Generator,
          grid: tuple) -> None:
    """Fill `mask` with a random colour modulated by each image's texture (an index into TEXTURES)."""
    shape = (len(canvas), 1, 1)
    contrast = _uniform(rng, _CONTRAST, shape)
    colour = _uniform(rng, (0.3, 0.7), (len(canvas), 3, 1, 1))
    pattern = colour * (1 + (contrast * _texture(texture, size, rng, grid))[:, None])
    np.copyto(canvas, pattern, where=mask[:, None])


def _draw_discs(canvas: np.ndarray, size: int, rng: np.random.Generator, grid: tuple) -> None:
    """Distractors that may carry the patch's coarse textures, so that a network must tie a texture
    to the square shape rather than just notice it somewhere."""
    y, x = grid
    shape = (len(canvas), 1, 1)
    for _ in range(_DISCS):
        radius = _uniform(rng, _DISC_RADIUS, shape) * size
        cx, cy = _uniform(rng, (0, size), shape), _uniform(rng, (0, size), shape)
        present = rng.random(shape) < 0.7
        texture = rng.integers(0, _DISC_TEXTURES, len(canvas))
        _fill(canvas, ((x - cx) ** 2 + (y - cy) ** 2 < radius ** 2) & present, texture, size, rng, grid)


def _place_parts(layout: np.ndarray, size: int, rng: np.random.Generator) -> tuple[tuple, tuple]:
    """Centres (x, y) of patch and cross: apart along one axis (x for "row", y for "column"), level
    on the other up to a small jitter, either one first."""
    count = len(layout)
    margin = _MARGIN * size
    distance = _uniform(rng, _PART_DISTANCE, count) * size
    first = margin + _uniform(rng, (0, 1), count) * (size - 2 * margin - distance)
    patch_first = rng.random(count) < 0.5
    patch_along = np.where(patch_first, first, first + distance)
    cross_along = np.where(patch_first, first + distance, first)
    patch_across = _uniform(rng, (margin, size - margin), count)
    cross_across = patch_across + _uniform(rng, (-0.03, 0.03), count) * size
    row = layout == 0
    patch = np.where(row, patch_along, patch_across), np.where(row, patch_across, patch_along)
    cross = np.where(row, cross_along, cross_across), np.where(row, cross_across, cross_along)
    return patch, cross


def _texture(texture: np.ndarray, size: int, rng: np.random.Generator, grid: tuple) -> np.ndarray:
    """Brightness modulation in [-1, 1] for each texture class. Fine stripes are sinusoids, so they
    average to exactly the plain patch's colour once blurred."""
    y, x = grid
    shape = (len(texture), 1, 1)
    phase = _uniform(rng, (0, 2 * np.pi), shape)
    coarse = _uniform(rng, _COARSE_PERIOD, shape) * size
    fine = _uniform(rng, _FINE_PERIOD_PX, shape)
    kind = texture.reshape(shape)
    patterns = [np.sign(np.sin(2 * np.pi * y / coarse + phase)), np.sign(np.sin(2 * np.pi * x / coarse + phase)),
                np.cos(2 * np.pi * y / fine + phase), np.cos(2 * np.pi * x / fine + phase)]
    return np.select([kind == k for k in range(1, len(TEXTURES))], patterns, 0.0).astype(np.float32)


def _draw_patch(canvas: np.ndarray, texture: np.ndarray, centre: tuple, size: int,
                rng: np.random.Generator, grid: tuple) -> None:
    y, x = grid
    shape = (len(canvas), 1, 1)
    half = _uniform(rng, _PATCH_HALF_SIDE, shape) * size
    cx, cy = (c.reshape(shape) for c in centre)
    _fill(canvas, (np.abs(x - cx) < half) & (np.abs(y - cy) < half), texture, size, rng, grid)


def _draw_cross(canvas: np.ndarray, centre: tuple, size: int, rng: np.random.Generator,
                grid: tuple) -> None:
    y, x = grid
    cx, cy = (c.reshape(len(canvas), 1, 1) for c in centre)
    arm, thickness = 0.08 * size, max(1.0, 0.025 * size)
    dx, dy = np.abs(x - cx), np.abs(y - cy)
    _paint(canvas, ((dx < thickness) & (dy < arm)) | ((dy < thickness) & (dx < arm)), rng)
