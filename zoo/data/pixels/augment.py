"""Augmentation of training images: each moved by a few pixels, drawn afresh every batch."""

from __future__ import annotations

import numpy as np


def shift_images(images: np.ndarray, max_shift: int, rng: np.random.Generator) -> np.ndarray:
    """Move each image (N, H, W[, C]) by a random whole number of pixels, up to ``max_shift``
    each way in each direction, filling with 0; a shift that would push a non-zero pixel out of
    the frame is narrowed so that none is lost (an all-zero image stays put)."""
    out = np.zeros_like(images)
    for i, img in enumerate(images):
        ink = img != 0 if img.ndim == 2 else (img != 0).any(axis=-1)
        rows, cols = np.flatnonzero(ink.any(axis=1)), np.flatnonzero(ink.any(axis=0))
        if len(rows) == 0:
            out[i] = img
            continue
        h, w = ink.shape
        dy = int(rng.integers(-min(max_shift, rows[0]), min(max_shift, h - 1 - rows[-1]) + 1))
        dx = int(rng.integers(-min(max_shift, cols[0]), min(max_shift, w - 1 - cols[-1]) + 1))
        out[i, max(dy, 0) : h + min(dy, 0), max(dx, 0) : w + min(dx, 0)] = \
            img[max(-dy, 0) : h - max(dy, 0), max(-dx, 0) : w - max(dx, 0)]
    return out
