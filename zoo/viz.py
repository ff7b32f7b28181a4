"""Attention pictures: which source tokens a model looked at for each target token (heatmaps), and
which story sentences a memory network read at each hop (bars).

Figures are drawn on a plain ``matplotlib.figure.Figure``, never through pyplot: the
caller's matplotlib backend stays as it was (a notebook's inline one, a desktop window),
and nothing is left open in pyplot's list of figures. Save one with :func:`save_figure`.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from torch import Tensor

from zoo.io import atomic_write


def attention_figure(
    maps: dict[str, Tensor],
    src_tokens: Sequence[str],
    tgt_tokens: Sequence[str],
    head: int | None = None,
    title: str = "",
) -> Any:
    """One heatmap per named map (heads, T, S): target tokens down, source tokens across.

    ``head`` picks one head; by default the heads are averaged. Returns a ``Figure``.
    """
    from matplotlib.figure import Figure

    n = len(maps)
    cols = min(n, 3)
    rows = math.ceil(n / cols)
    cell = 0.38
    fig_w = max(4.0, cols * (len(src_tokens) * cell + 1.6))
    fig_h = max(3.0, rows * (len(tgt_tokens) * cell + 1.4))
    fig = Figure(figsize=(fig_w, fig_h))
    axes = fig.subplots(rows, cols, squeeze=False)
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


def memory_attention_figure(
    weights: Tensor,
    sentences: Sequence[str],
    support: Sequence[int] = (),
    title: str = "",
) -> Any:
    """One panel per hop of a memory network: its weight (hops, N) on each of the N story sentences.

    Sentences run down in story order, numbered from 1; the supporting facts (indices into
    ``sentences``) are drawn in red and starred. Returns a ``Figure``.
    """
    from matplotlib.figure import Figure

    hops, n = weights.shape
    marked = set(support)
    labels = [f"{i + 1}. {s}" + (" *" if i in marked else "") for i, s in enumerate(sentences)]
    fig = Figure(figsize=(2.2 * hops + 0.09 * max(map(len, labels), default=10) + 1.0, max(2.5, 0.32 * n + 1.4)))
    axes = fig.subplots(1, hops, sharey=True, squeeze=False)[0]
    for k, ax in enumerate(axes):
        w = weights[k].float().cpu().numpy()
        ax.barh(range(n), w, color=["tab:red" if i in marked else "tab:blue" for i in range(n)])
        ax.set_xlim(0.0, max(1.0, float(w.max(initial=0.0))))
        ax.set_title(f"hop {k + 1}", fontsize=9)
        ax.set_xlabel("attention")
    axes[0].set_yticks(range(n), labels=labels, fontsize=8)
    for i, tick in enumerate(axes[0].get_yticklabels()):
        if i in marked:
            tick.set_color("tab:red")
    axes[0].invert_yaxis()  # the first sentence on top
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def figure_to_array(fig: Any) -> Any:
    """RGB pixels (H, W, 3) of a matplotlib figure, rendered with Agg whatever the backend."""
    import numpy as np
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = fig.canvas if isinstance(fig.canvas, FigureCanvasAgg) else FigureCanvasAgg(fig)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()


def save_figure(fig: Any, path: str | os.PathLike, dpi: int = 100) -> Path:
    """Write ``fig`` to ``path`` atomically, in the format its suffix names (``.png``, ``.pdf``, ``.svg``)."""
    path = Path(path)
    fmt = path.suffix.lstrip(".").lower() or "png"
    return atomic_write(path, lambda tmp: fig.savefig(tmp, format=fmt, dpi=dpi))
