"""Attention of a recurrent decoder over the encoder outputs (the source).

Bahdanau et al. 2015 ("Neural Machine Translation by Jointly Learning to Align and
Translate") and Luong et al. 2015 ("Effective Approaches to Attention-based Neural Machine
Translation") differ only in how they score a decoder state q against an encoder output k:

* ``additive`` (Bahdanau; Luong's ``concat`` is the same function): v^T tanh(W1 q + W2 k),
* ``dot`` (Luong): q . k,
* ``general`` (Luong): q^T W k,
* ``scaled_dot`` (Vaswani et al. 2017, one head): q . k / sqrt(d).

Each is a small sibling under :class:`SourceAttention`, which turns the scores into weights
over the source positions and the weighted sum of the values. A score that projects the
keys does it once per sentence in :meth:`SourceAttention.precompute`, not once per decoding
step. The modules keep no state between calls. ConvS2S (Gehring et al. 2017) uses
:class:`DotAttention` in each decoder layer.

Shapes: B batch, T decoder steps (queries), S source positions, Cq query width, Ck key
width, Cv value width, A the additive score's hidden width; scores and weights (B, T, S).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn


class SourceAttention(nn.Module):
    """softmax(score(q, k)) over the source positions, then the weighted sum of the values.

    Subclasses define :meth:`score` and may override :meth:`precompute` to project the
    keys once per sentence.
    """

    def precompute(self, memory: Tensor) -> Tensor:
        """memory (B, S, Ck) -> the keys :meth:`score` reads, (B, S, *); by default the memory itself."""
        return memory

    def score(self, query: Tensor, keys: Tensor) -> Tensor:
        """query (B, T, Cq), keys from :meth:`precompute` (B, S, *) -> scores (B, T, S)."""
        raise NotImplementedError

    def forward(self, query: Tensor, keys: Tensor, values: Tensor, pad_mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """query (B, T, Cq), keys from :meth:`precompute`, values (B, S, Cv), pad_mask (B, S) True at padding.

        Returns the context (B, T, Cv) and the weights (B, T, S), zero on padding. The
        softmax is taken in float32 whatever the values' dtype.
        """
        scores = self.score(query, keys)  # (B, T, S)
        if pad_mask is not None:
            scores = scores.masked_fill(pad_mask[:, None, :], float("-inf"))
        weights = scores.float().softmax(-1).to(values.dtype)
        return weights @ values, weights


class AdditiveAttention(SourceAttention):
    """Bahdanau: score = v^T tanh(W1 q + W2 k). Luong's "concat", v^T tanh(W [q; k]), is the same function.

    Args:
        query_dim: Cq. key_dim: Ck. attn_dim: A, the width of the tanh layer.
    """

    def __init__(self, query_dim: int, key_dim: int, attn_dim: int) -> None:
        super().__init__()
        self.w_query = nn.Linear(query_dim, attn_dim, bias=False)
        self.w_key = nn.Linear(key_dim, attn_dim)
        self.v = nn.Linear(attn_dim, 1, bias=False)

    def precompute(self, memory: Tensor) -> Tensor:
        """(B, S, Ck) -> W2 k + b, (B, S, A)."""
        return self.w_key(memory)

    def score(self, query: Tensor, keys: Tensor) -> Tensor:
        """(B, T, Cq), (B, S, A) -> (B, T, S)."""
        hidden = torch.tanh(self.w_query(query)[:, :, None] + keys[:, None])  # (B, T, S, A)
        return self.v(hidden).squeeze(-1)


class DotAttention(SourceAttention):
    """Luong dot: score = q . k (query and key of the same width; ``attn_dim`` is unused)."""

    def __init__(self, query_dim: int, key_dim: int, attn_dim: int = 0) -> None:
        super().__init__()
        if query_dim != key_dim:
            raise ValueError(f"dot attention needs query_dim == key_dim, got {query_dim} and {key_dim}; use 'general'")

    def score(self, query: Tensor, keys: Tensor) -> Tensor:
        """(B, T, C), (B, S, C) -> (B, T, S)."""
        return query @ keys.transpose(1, 2)


class ScaledDotAttention(DotAttention):
    """Vaswani et al.: score = q . k / sqrt(d), d the query width."""

    def score(self, query: Tensor, keys: Tensor) -> Tensor:
        """(B, T, C), (B, S, C) -> (B, T, S)."""
        return super().score(query, keys) / math.sqrt(query.size(-1))


class GeneralAttention(SourceAttention):
    """Luong general: score = q^T W k, with W k computed once per sentence (``attn_dim`` is unused)."""

    def __init__(self, query_dim: int, key_dim: int, attn_dim: int = 0) -> None:
        super().__init__()
        self.w = nn.Linear(key_dim, query_dim, bias=False)

    def precompute(self, memory: Tensor) -> Tensor:
        """(B, S, Ck) -> W k, (B, S, Cq)."""
        return self.w(memory)

    def score(self, query: Tensor, keys: Tensor) -> Tensor:
        """(B, T, Cq), (B, S, Cq) -> (B, T, S)."""
        return query @ keys.transpose(1, 2)


SOURCE_ATTENTION: dict[str, type[SourceAttention]] = {
    "additive": AdditiveAttention,
    "concat": AdditiveAttention,
    "dot": DotAttention,
    "general": GeneralAttention,
    "scaled_dot": ScaledDotAttention,
}


def source_attention(kind: str, query_dim: int, key_dim: int, attn_dim: int) -> SourceAttention:
    """Build the attention ``kind`` (a key of :data:`SOURCE_ATTENTION`); an unknown kind names the allowed ones."""
    if kind not in SOURCE_ATTENTION:
        raise ValueError(f"unknown attention {kind!r}; choose one of {', '.join(SOURCE_ATTENTION)}")
    return SOURCE_ATTENTION[kind](query_dim, key_dim, attn_dim)
