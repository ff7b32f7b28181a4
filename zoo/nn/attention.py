"""The attention family shared by every model in the zoo.

Multi-head scaled dot-product attention (Vaswani et al. 2017) runs through
``torch.nn.functional.scaled_dot_product_attention``. Incremental decoding is part of
the module's API: pass a :class:`KVCache` and the module keeps the keys and values it
has seen, appending for self-attention and computing once for cross-attention
(``static=True``), so no model writes its own cache.

Shapes: B batch, T queries, S keys, H heads, D = C / H per head.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn


@dataclass
class KVCache:
    """Keys and values of one attention layer during incremental decoding.

    ``static`` caches (cross-attention over a fixed memory) are filled on the first call
    and reused; the others grow by the new keys at every call. Tensors are ``(B, H, S, D)``,
    batch first, so :func:`zoo.nn.decoding.reorder` can follow beam search.
    """

    k: Tensor | None = None
    v: Tensor | None = None
    static: bool = False

    @property
    def length(self) -> int:
        return 0 if self.k is None else self.k.size(2)


def causal_mask(t: int, s: int, device: torch.device | None = None) -> Tensor:
    """Boolean ``(T, S)`` mask, True where query ``i`` (the last ``t`` of ``s`` positions) may look."""
    offset = s - t
    q = torch.arange(t, device=device)[:, None] + offset
    k = torch.arange(s, device=device)[None, :]
    return k <= q


class MultiHeadAttention(nn.Module):
    """Multi-head attention with an optional key/value cache.

    Args:
        d_model: model width C.
        n_heads: number of heads H; C must divide evenly.
        dropout: dropout on the attention weights while training.
        bias: whether the projections have a bias.
    """

    def __init__(self, d_model: int, n_heads: int, dropout: float = 0.0, bias: bool = True) -> None:
        super().__init__()
        if d_model % n_heads:
            raise ValueError(f"d_model={d_model} is not divisible by n_heads={n_heads}")
        self.n_heads = n_heads
        self.head_dim = d_model // n_heads
        self.dropout = dropout
        self.q_proj = nn.Linear(d_model, d_model, bias=bias)
        self.k_proj = nn.Linear(d_model, d_model, bias=bias)
        self.v_proj = nn.Linear(d_model, d_model, bias=bias)
        self.out_proj = nn.Linear(d_model, d_model, bias=bias)

    def _split(self, x: Tensor) -> Tensor:  # (B, T, C) -> (B, H, T, D)
        b, t, _ = x.shape
        return x.view(b, t, self.n_heads, self.head_dim).transpose(1, 2)

    def _keys_values(self, memory: Tensor, cache: KVCache | None) -> tuple[Tensor, Tensor]:
        if cache is not None and cache.static and cache.k is not None:
            return cache.k, cache.v  # cross-attention: projected once per sentence
        k, v = self._split(self.k_proj(memory)), self._split(self.v_proj(memory))
        if cache is not None:
            if not cache.static and cache.k is not None:
                k = torch.cat([cache.k, k], dim=2)
                v = torch.cat([cache.v, v], dim=2)
            cache.k, cache.v = k, v
        return k, v

    def forward(
        self,
        query: Tensor,
        memory: Tensor | None = None,
        *,
        key_padding_mask: Tensor | None = None,
        causal: bool = False,
        cache: KVCache | None = None,
        need_weights: bool = False,
    ) -> tuple[Tensor, Tensor | None]:
        """Attend from ``query`` (B, T, C) to ``memory`` (B, S, C), or to itself when memory is None.

        Args:
            key_padding_mask: (B, S) bool, True at padding keys to ignore.
            causal: query i sees keys up to its own position (with a cache, counting the
                cached keys as earlier positions).
            cache: a :class:`KVCache` to read and extend during incremental decoding.
            need_weights: also return the attention weights (B, H, T, S), computed
                explicitly instead of with the fused kernel.

        Returns:
            (B, T, C) output and the weights or None.
        """
        memory = query if memory is None else memory
        q = self._split(self.q_proj(query))  # (B, H, T, D)
        k, v = self._keys_values(memory, cache)  # (B, H, S, D)
        t, s = q.size(2), k.size(2)

        mask = None  # bool, True = may attend; broadcast to (B, H, T, S)
        if key_padding_mask is not None:
            mask = ~key_padding_mask[:, None, None, :]
        use_is_causal = causal and mask is None and t == s
        if causal and not use_is_causal and t > 1:
            cm = causal_mask(t, s, q.device)
            mask = cm if mask is None else mask & cm

        p = self.dropout if self.training else 0.0
        if need_weights:
            scores = q @ k.transpose(-2, -1) / math.sqrt(self.head_dim)  # (B, H, T, S)
            if use_is_causal:
                mask = causal_mask(t, s, q.device)
            if mask is not None:
                scores = scores.masked_fill(~mask, float("-inf"))
            weights = scores.softmax(dim=-1)
            out = F.dropout(weights, p, self.training) @ v
        else:
            weights = None
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p, is_causal=use_is_causal)
        b, _, t, _ = out.shape
        out = out.transpose(1, 2).reshape(b, t, -1)  # (B, T, C)
        return self.out_proj(out), weights
