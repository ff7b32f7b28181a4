"""Pictures of images: a grid of them, as an array or a PNG file (written atomically)."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import numpy as np
from torch import Tensor

from zoo.io import atomic_write


def image_grid(images: Any, ncols: int | None = None, pad: int = 1, pad_value: int = 0) -> np.ndarray:
    """(N, H, W[, C]) images -> one (rows*(H+pad)+pad, cols*(W+pad)+pad[, C]) array, row by row."""
    x = np.asarray(images.cpu() if isinstance(images, Tensor) else images)
    if x.ndim not in (3, 4) or len(x) == 0:
        raise ValueError(f"image_grid takes a non-empty stack (N, H, W) or (N, H, W, C), got shape {tuple(x.shape)}")
    n, h, w = x.shape[:3]
    cols = ncols or math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    grid = np.full((rows * (h + pad) + pad, cols * (w + pad) + pad, *x.shape[3:]), pad_value, dtype=x.dtype)
    for i in range(n):
        r, c = divmod(i, cols)
        top, left = pad + r * (h + pad), pad + c * (w + pad)
        grid[top : top + h, left : left + w] = x[i]
    return grid


def save_grid(
    path: str | os.PathLike, images: Any, max_value: int = 255, ncols: int | None = None, scale: int = 4
) -> Path:
    """Write a grid of images as a PNG (grey or RGB), each pixel ``scale`` x ``scale``; returns the path."""
    from matplotlib import image as mpimg

    grid = image_grid(images, ncols).astype(np.float64) / max_value
    grid = grid.repeat(scale, axis=0).repeat(scale, axis=1)
    if grid.ndim == 3 and grid.shape[2] == 1:
        grid = grid[..., 0]
    if grid.ndim == 2:
        return atomic_write(path, lambda tmp: mpimg.imsave(tmp, grid, format="png", cmap="gray", vmin=0.0, vmax=1.0))
    return atomic_write(path, lambda tmp: mpimg.imsave(tmp, np.clip(grid, 0.0, 1.0), format="png"))
