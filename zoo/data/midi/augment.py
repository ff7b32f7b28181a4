"""Augmentation of training pieces: transposition and (for notes) a stretch in time, drawn
afresh for every piece each time it is read."""

from __future__ import annotations

import numpy as np


def augment_notes(notes: np.ndarray, rng: np.random.Generator, transpose: int = 3,
                  stretch: float = 0.05) -> np.ndarray:
    """Transpose by a random integer in [-transpose, transpose] semitones (kept inside 0..127)
    and stretch time by a random factor in [1 - stretch, 1 + stretch]."""
    out = np.array(notes, dtype=np.float64, copy=True)
    if len(out):
        lo, hi = max(-transpose, -int(out[:, 0].min())), min(transpose, 127 - int(out[:, 0].max()))
        out[:, 0] += rng.integers(lo, hi + 1)
        out[:, 1:3] *= rng.uniform(1 - stretch, 1 + stretch)
    return out


def augment_grid(grid: np.ndarray, rng: np.random.Generator, transpose: int = 3) -> np.ndarray:
    """Transpose a chorale grid's sounding voices by a random integer in [-transpose, transpose]."""
    sounding = grid >= 0
    if not sounding.any():
        return grid
    lo, hi = max(-transpose, -int(grid[sounding].min())), min(transpose, 127 - int(grid[sounding].max()))
    return np.where(sounding, grid + rng.integers(lo, hi + 1), grid)
