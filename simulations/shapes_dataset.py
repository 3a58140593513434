"""``shapes``: a generated, learnable stand-in for CIFAR-10 (32×32 colour images, 10 classes).

No CIFAR-10 can be downloaded here, so ``cifar-cnn``'s demo data is generated, and says so: each
image is one of ten shapes (disc, square, triangle, ring, plus, cross, horizontal bar, vertical bar,
diamond, two dots) in a random light colour, at a random place and size, on a random dark
background colour with pixel noise. Colour, position and size carry no label information; only the shape does. The
set is seeded, so every run and every site split sees the same images.
"""

from __future__ import annotations

import numpy as np

SIDE = 32
SHAPES = ("disc", "square", "triangle", "ring", "plus", "cross", "hbar", "vbar", "diamond", "two-dots")
DEFAULT_SIZE = 3000


def _masks(dx: np.ndarray, dy: np.ndarray, r: np.ndarray) -> list[np.ndarray]:
    """Boolean (N, 32, 32) masks of every shape, centred at offsets ``dx``, ``dy`` (pixels), radius ``r``."""
    ax, ay = np.abs(dx), np.abs(dy)
    dist = np.hypot(dx, dy)
    thin = 0.3 * r
    return [
        dist <= r,
        np.maximum(ax, ay) <= 0.8 * r,
        (ay <= 0.85 * r) & (ax <= (dy + 0.85 * r) * 0.6),
        (dist <= r) & (dist >= 0.55 * r),
        ((ax <= thin) & (ay <= r)) | ((ay <= thin) & (ax <= r)),
        (np.abs(ax - ay) <= thin) & (np.maximum(ax, ay) <= r),
        (ay <= thin) & (ax <= r),
        (ax <= thin) & (ay <= r),
        ax + ay <= r,
        (np.hypot(dx - 0.55 * r, dy) <= 0.4 * r) | (np.hypot(dx + 0.55 * r, dy) <= 0.4 * r),
    ]


def generate_shapes(n: int = DEFAULT_SIZE, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(x, y): x (n, 32, 32, 3) uint8 RGB images, y (n,) int64 labels 0-9, classes balanced."""
    rng = np.random.default_rng(seed)
    y = np.arange(n, dtype=np.int64) % len(SHAPES)
    rng.shuffle(y)
    grid = np.arange(SIDE, dtype=np.float32) + 0.5
    cx = rng.uniform(11, 21, size=(n, 1, 1)).astype(np.float32)
    cy = rng.uniform(11, 21, size=(n, 1, 1)).astype(np.float32)
    r = rng.uniform(6.5, 10.5, size=(n, 1, 1)).astype(np.float32)
    dx, dy = grid[None, None, :] - cx, grid[None, :, None] - cy
    masks = _masks(dx, dy, r)
    shape_mask = np.zeros((n, SIDE, SIDE), dtype=bool)
    for label, mask in enumerate(masks):
        rows = y == label
        shape_mask[rows] = mask[rows]
    # random hues; the shape is always the brighter part of the image (a dark background, a light shape)
    background = rng.uniform(0, 0.45, size=(n, 1, 1, 3)).astype(np.float32)
    foreground = rng.uniform(0.55, 1, size=(n, 1, 1, 3)).astype(np.float32)
    image = np.where(shape_mask[..., None], foreground, background)
    image = image + rng.normal(0, 0.06, size=image.shape).astype(np.float32)
    return (np.clip(image, 0, 1) * 255).round().astype(np.uint8), y
