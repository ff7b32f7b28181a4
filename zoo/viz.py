"""Attention heatmaps: which source tokens a model looked at for each target token."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from torch import Tensor


def attention_figure(
    maps: dict[str, Tensor],
    src_tokens: Sequence[str],
    tgt_tokens: Sequence[str],
    head: int | None = None,
    title: str = "",
) -> Any:
    """One heatmap per named map (heads, T, S): target tokens down, source tokens across.

    ``head`` picks one head; by default the heads are averaged.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(maps)
    cols = min(n, 3)
    rows = math.ceil(n / cols)
    cell = 0.38
    fig_w = max(4.0, cols * (len(src_tokens) * cell + 1.6))
    fig_h = max(3.0, rows * (len(tgt_tokens) * cell + 1.4))
    fig, axes = plt.subplots(rows, cols, figsize=(fig_w, fig_h), squeeze=False)
    for ax, (name, w) in zip(axes.flat, maps.items()):
        if head is not None and not 0 <= head < w.size(0):
            raise ValueError(f"head {head} does not exist: {name} has heads 0..{w.size(0) - 1}")
        grid = (w.mean(0) if head is None else w[head]).float().cpu().numpy()  # (T, S)
        ax.imshow(grid, cmap="viridis", vmin=0.0, vmax=max(float(grid.max()), 1e-6), aspect="auto")
        ax.set_xticks(range(len(src_tokens)), labels=list(src_tokens), rotation=60, ha="right", fontsize=8)
        ax.set_yticks(range(len(tgt_tokens)), labels=list(tgt_tokens), fontsize=8)
        ax.set_title(name + ("" if head is None or w.size(0) == 1 else f", head {head}"), fontsize=9)
        ax.set_xlabel("source")
        ax.set_ylabel("target")
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def figure_to_array(fig: Any) -> Any:
    """RGB pixels (H, W, 3) of a matplotlib figure, and close it."""
    import matplotlib.pyplot as plt
    import numpy as np

    fig.canvas.draw()
    pixels = np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()
    plt.close(fig)
    return pixels


def piano_roll_figure(notes: Any, title: str = "") -> Any:
    """A piano roll of notes (N, 4) = (pitch, onset s, offset s, velocity): time across,
    pitch up, each note a bar shaded by its velocity."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    arr = np.asarray(notes, dtype=np.float64).reshape(-1, 4)
    end = float(arr[:, 2].max()) if len(arr) else 1.0
    fig, ax = plt.subplots(figsize=(min(16.0, 3.0 + end / 2), 4.0))
    if len(arr):
        colours = plt.cm.viridis(arr[:, 3] / 127.0)
        ax.barh(arr[:, 0], arr[:, 2] - arr[:, 1], left=arr[:, 1], height=0.8, color=colours, edgecolor="none")
        lo, hi = arr[:, 0].min(), arr[:, 0].max()
        ax.set_ylim(lo - 2, hi + 2)
    ax.set_xlim(0, end)
    ax.set_xlabel("time (s)")
    ax.set_ylabel("MIDI pitch")
    ax.grid(axis="y", alpha=0.2)
    if title:
        ax.set_title(title, fontsize=10)
    fig.tight_layout()
    return fig


def save_piano_roll(notes: Any, path: Any, title: str = "") -> Any:
    """Write :func:`piano_roll_figure` to ``path`` (PNG) atomically; returns the path."""
    import os
    from pathlib import Path

    import matplotlib.pyplot as plt

    path = Path(path)
    tmp = path.with_name(path.name + ".tmp.png")
    fig = piano_roll_figure(notes, title)
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    os.replace(tmp, path)
    return path
