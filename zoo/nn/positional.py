"""Position encodings."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn


class SinusoidalPositions(nn.Module):
    """Fixed sine/cosine positions of Vaswani et al. 2017, section 3.5.

    PE[pos, 2i] = sin(pos / 10000^(2i/C)), PE[pos, 2i+1] = cos(pos / 10000^(2i/C)).
    Kept as a non-persistent buffer: nothing about it is stored in a checkpoint.
    """

    def __init__(self, d_model: int, max_len: int) -> None:
        super().__init__()
        pos = torch.arange(max_len, dtype=torch.float32)[:, None]
        inv = torch.exp(torch.arange(0, d_model, 2, dtype=torch.float32) * (-math.log(10000.0) / d_model))
        pe = torch.zeros(max_len, d_model)
        pe[:, 0::2] = torch.sin(pos * inv)
        pe[:, 1::2] = torch.cos(pos * inv[: d_model // 2])  # an odd width has one cosine fewer
        self.register_buffer("pe", pe, persistent=False)
        self.max_len = max_len

    def forward(self, length: int, offset: int = 0) -> Tensor:
        """Positions ``offset .. offset+length-1`` as a (length, C) tensor."""
        if offset + length > self.max_len:
            raise ValueError(
                f"sequence of {offset + length} positions is longer than the model's maximum of "
                f"{self.max_len}; shorten the input or build the model with a larger max_len"
            )
        return self.pe[offset : offset + length]

    def at(self, positions: Tensor) -> Tensor:
        """The encodings of ``positions`` (any shape of indices) -> (..., C)."""
        if positions.numel() and int(positions.max()) >= self.max_len:
            raise ValueError(
                f"position {int(positions.max())} is past the model's maximum of {self.max_len}; "
                "shorten the input or build the model with a larger max_len"
            )
        return self.pe[positions]
