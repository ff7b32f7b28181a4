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
        if n_heads < 1:
            raise ValueError(f"n_heads must be at least 1, got {n_heads}")
        if d_model % n_heads:
            raise ValueError(
                f"d_model={d_model} is not divisible by n_heads={n_heads}; each head takes d_model / n_heads "
                "channels, so pick n_heads among the divisors of d_model"
            )
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


# --- attention of a recurrent decoder over encoder outputs --------------------------
#
# Bahdanau et al. 2015 and Luong et al. 2015 differ in how they score a decoder state q
# against an encoder output k. The scores live here as siblings under one small base;
# each projects the keys once per sentence (``precompute``), not once per decoding step.


class SourceAttention(nn.Module):
    """softmax(score(q, k)) over the source positions, then the weighted sum of the values.

    Subclasses define ``score(query (B, T, Cq), keys (B, S, *)) -> (B, T, S)`` and may
    override ``precompute(memory (B, S, Ck)) -> keys`` to project the keys once.
    """

    def precompute(self, memory: Tensor) -> Tensor:
        return memory

    def score(self, query: Tensor, keys: Tensor) -> Tensor:
        raise NotImplementedError

    def forward(self, query: Tensor, keys: Tensor, values: Tensor, pad_mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """query (B, T, Cq), keys from :meth:`precompute`, values (B, S, Cv), pad_mask (B, S) True at padding.

        Returns the context (B, T, Cv) and the weights (B, T, S), zero on padding.
        """
        scores = self.score(query, keys)  # (B, T, S)
        if pad_mask is not None:
            scores = scores.masked_fill(pad_mask[:, None, :], float("-inf"))
        weights = scores.float().softmax(-1).to(values.dtype)
        return weights @ values, weights


class AdditiveAttention(SourceAttention):
    """Bahdanau: score = v^T tanh(W1 q + W2 k). Luong's "concat", v^T tanh(W [q; k]), is the same function."""

    def __init__(self, query_dim: int, key_dim: int, attn_dim: int) -> None:
        super().__init__()
        self.w_query = nn.Linear(query_dim, attn_dim, bias=False)
        self.w_key = nn.Linear(key_dim, attn_dim)
        self.v = nn.Linear(attn_dim, 1, bias=False)

    def precompute(self, memory: Tensor) -> Tensor:
        return self.w_key(memory)  # (B, S, A)

    def score(self, query: Tensor, keys: Tensor) -> Tensor:
        hidden = torch.tanh(self.w_query(query)[:, :, None] + keys[:, None])  # (B, T, S, A)
        return self.v(hidden).squeeze(-1)


class DotAttention(SourceAttention):
    """Luong dot: score = q . k (query and key of the same width)."""

    def __init__(self, query_dim: int, key_dim: int, attn_dim: int = 0) -> None:
        super().__init__()
        if query_dim != key_dim:
            raise ValueError(f"dot attention needs query_dim == key_dim, got {query_dim} and {key_dim}; use 'general'")

    def score(self, query: Tensor, keys: Tensor) -> Tensor:
        return query @ keys.transpose(1, 2)


class ScaledDotAttention(DotAttention):
    """Vaswani et al.: score = q . k / sqrt(d)."""

    def score(self, query: Tensor, keys: Tensor) -> Tensor:
        return query @ keys.transpose(1, 2) / math.sqrt(query.size(-1))


class GeneralAttention(SourceAttention):
    """Luong general: score = q^T W k, with W k computed once per sentence."""

    def __init__(self, query_dim: int, key_dim: int, attn_dim: int = 0) -> None:
        super().__init__()
        self.w = nn.Linear(key_dim, query_dim, bias=False)

    def precompute(self, memory: Tensor) -> Tensor:
        return self.w(memory)  # (B, S, Cq)

    def score(self, query: Tensor, keys: Tensor) -> Tensor:
        return query @ keys.transpose(1, 2)


SOURCE_ATTENTION: dict[str, type[SourceAttention]] = {
    "additive": AdditiveAttention,
    "concat": AdditiveAttention,
    "dot": DotAttention,
    "general": GeneralAttention,
    "scaled_dot": ScaledDotAttention,
}


def source_attention(kind: str, query_dim: int, key_dim: int, attn_dim: int) -> SourceAttention:
    """Build the attention ``kind``; an unknown kind names the allowed ones."""
    if kind not in SOURCE_ATTENTION:
        raise ValueError(f"unknown attention {kind!r}; choose one of {', '.join(SOURCE_ATTENTION)}")
    return SOURCE_ATTENTION[kind](query_dim, key_dim, attn_dim)
