"""Images as token sequences: raster order, the channels of a pixel side by side, each
intensity quantised to ``levels`` values (the paper uses all 256).

An image becomes a sequence in raster order, the channels of a pixel side by side
(r, g, b of pixel (0, 0), then of pixel (0, 1), ...), each intensity quantised to
``levels`` values. A model predicts each intensity from all the earlier ones: a
softmax over ``levels`` classes per sub-pixel, as in the paper.

Tokens: ``0 .. levels-1`` are intensities, ``bos_id = levels`` starts every sequence,
and ``pad_id = levels + 1`` is a real id that never occurs in a batch (every image has
the same length). It is not shared with ``bos_id`` because the zoo's models build
``nn.Embedding(padding_idx=pad_id)``, which keeps that row at zero and never trains it:
a start token sharing it would have no embedding of its own. The loss's
``ignore_index=pad_id`` then ignores nothing, as it should. There is no end token: a
sampler stops after ``height * width * channels`` tokens.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor

from zoo.data.tokenizer import JsonTokenizer


def _divisors(n: int) -> list[int]:
    return [d for d in range(2, n + 1) if n % d == 0]


def check_levels(levels: int, max_value: int) -> None:
    """``levels`` must split ``0..max_value`` into equal bins."""
    if not isinstance(levels, int) or levels < 2 or (max_value + 1) % levels:
        works = ", ".join(map(str, _divisors(max_value + 1)))
        raise ValueError(
            f"levels={levels} does not divide the {max_value + 1} intensities 0..{max_value} evenly; use one of {works}"
        )


class PixelTokenizer(JsonTokenizer):
    """Images (N, H, W) or (N, H, W, C) of integers 0..max_value <-> token sequences (N, H*W*C).

    ``token = value * levels // (max_value + 1)``; decoding gives the value in the middle of
    the token's bin (the upper middle one when the bin is even), which is the value itself
    when ``levels == max_value + 1``. Saved as a small JSON file beside a checkpoint.
    """

    what = "pixel tokenizer"
    eos_id = None  # fixed-length sequences: no end token

    def __init__(self, levels: int, max_value: int = 255, channels: int = 1, *, height: int, width: int) -> None:
        for name, v in (("max_value", max_value), ("channels", channels), ("height", height), ("width", width)):
            if not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be a positive integer, not {v!r}")
        check_levels(levels, max_value)
        self.levels, self.max_value, self.channels, self.height, self.width = levels, max_value, channels, height, width
        self.bin = (max_value + 1) // levels  # intensities per token

    # -- ids and shape ---------------------------------------------------------------
    @property
    def bos_id(self) -> int:
        return self.levels

    @property
    def pad_id(self) -> int:
        return self.levels + 1

    @property
    def vocab_size(self) -> int:
        return self.levels + 2

    @property
    def shape(self) -> tuple[int, int, int]:
        """(H, W, C) of the images this tokenizer reads."""
        return self.height, self.width, self.channels

    @property
    def seq_len(self) -> int:
        return self.height * self.width * self.channels

    def coords(self) -> np.ndarray:
        """(T, 3): the (row, column, channel) of every position of a sequence."""
        r, c, ch = np.unravel_index(np.arange(self.seq_len), self.shape)
        return np.stack([r, c, ch], axis=1)

    # -- values <-> tokens -----------------------------------------------------------
    def quantize(self, values: Any) -> np.ndarray:
        """Intensities 0..max_value (any shape) -> tokens 0..levels-1, same shape."""
        v = np.asarray(values.cpu() if isinstance(values, Tensor) else values)
        if v.dtype.kind == "f":
            if v.size and not np.all(np.isfinite(v) & (v == np.round(v))):
                raise ValueError(
                    f"pixel values must be whole numbers 0..{self.max_value}; got fractions "
                    f"(scale floats in [0, 1] by {self.max_value} and round them first)"
                )
        elif v.dtype.kind not in "iub":
            raise ValueError(f"pixel values must be integers 0..{self.max_value}, not {v.dtype}")
        if v.size and (v.min() < 0 or v.max() > self.max_value):
            raise ValueError(
                f"pixel values must lie in 0..{self.max_value} for this tokenizer; found {v.min()}..{v.max()} "
                "(rescale the images, or make a tokenizer with a larger max_value)"
            )
        dtype = np.uint8 if self.levels <= 256 else np.int32
        return (v.astype(np.int64) // self.bin).astype(dtype)

    def dequantize(self, tokens: Any) -> np.ndarray:
        """Tokens 0..levels-1 (any shape) -> intensities at the middle of their bins."""
        t = np.asarray(tokens.cpu() if isinstance(tokens, Tensor) else tokens).astype(np.int64)
        if t.size and (t.min() < 0 or t.max() >= self.levels):
            bad = int(t.max()) if t.max() >= self.levels else int(t.min())
            raise ValueError(
                f"token {bad} is not an intensity (those are 0..{self.levels - 1}; {self.bos_id} is the start "
                f"token, {self.pad_id} padding); strip the start token before decoding"
            )
        dtype = np.uint8 if self.max_value <= 255 else np.int32
        return (t * self.bin + self.bin // 2).astype(dtype)

    def _check_images(self, images: Any) -> np.ndarray:
        x = np.asarray(images.cpu() if isinstance(images, Tensor) else images)
        h, w, c = self.shape
        ok = (x.ndim == 4 and x.shape[1:] == (h, w, c)) or (c == 1 and x.ndim == 3 and x.shape[1:] == (h, w))
        if not ok:
            want = f"(N, {h}, {w}) or (N, {h}, {w}, 1)" if c == 1 else f"(N, {h}, {w}, {c})"
            hint = "; add a batch axis (images[None])" if x.ndim in (2, 3) and x.shape[:2] == (h, w) else ""
            raise ValueError(
                f"this tokenizer reads images of shape {want} ({h}x{w}, {c} channel{'s' * (c > 1)}), "
                f"got {tuple(x.shape)}{hint}"
            )
        return x

    def encode_array(self, images: Any) -> np.ndarray:
        """Like :meth:`encode`, as a small-integer numpy array (N, T), for storing many images."""
        x = self._check_images(images)
        return self.quantize(x).reshape(len(x), self.seq_len)  # C order: raster, channels interleaved

    def encode(self, images: Any) -> Tensor:
        """Images (N, H, W) or (N, H, W, C) -> tokens (N, H*W*C), long."""
        return torch.from_numpy(self.encode_array(images).astype(np.int64))

    def decode(self, tokens: Any) -> np.ndarray:
        """Tokens (N, T) or (T,) -> images (N, H, W) for one channel, else (N, H, W, C).

        A leading start token (sequences of length T + 1 beginning with ``bos_id``, as a
        sampler returns them) is dropped.
        """
        t = np.asarray(tokens.cpu() if isinstance(tokens, Tensor) else tokens)
        if t.ndim == 1:
            t = t[None]
        if t.ndim == 2 and t.shape[1] == self.seq_len + 1 and np.all(t[:, 0] == self.bos_id):
            t = t[:, 1:]
        if t.ndim != 2 or t.shape[1] != self.seq_len:
            raise ValueError(
                f"expected token sequences (N, {self.seq_len}) for {self.height}x{self.width}x{self.channels} "
                f"images, got {tuple(t.shape)}"
            )
        x = self.dequantize(t).reshape(len(t), *self.shape)
        return x[..., 0] if self.channels == 1 else x

    # -- JSON ------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {
            "type": "pixels",
            "levels": self.levels,
            "max_value": self.max_value,
            "channels": self.channels,
            "height": self.height,
            "width": self.width,
            "order": "raster, channels interleaved",
            "special_tokens": {"bos": self.bos_id, "pad": self.pad_id},
            "vocab_size": self.vocab_size,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "PixelTokenizer":
        if d.get("type") != "pixels":
            raise ValueError(f"not a pixel tokenizer (type={d.get('type')!r}); expected a file saved by PixelTokenizer")
        try:
            return cls(d["levels"], d["max_value"], d["channels"], height=d["height"], width=d["width"])
        except KeyError as err:
            raise ValueError(f"pixel tokenizer description lacks {err}; re-save it with PixelTokenizer.save") from None

    def __repr__(self) -> str:
        return (f"PixelTokenizer(levels={self.levels}, max_value={self.max_value}, channels={self.channels}, "
                f"height={self.height}, width={self.width})")
