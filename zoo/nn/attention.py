"""The attention core shared by every model in the zoo.

Scaled dot-product attention (Vaswani et al. 2017, "Attention Is All You Need"),
softmax(q k^T / sqrt(D)) v, is computed in one place, :func:`attend`, which every
attention of the package calls: :class:`MultiHeadAttention` here, the Music Transformer's
relative self-attention (:mod:`zoo.nn.relative`, which adds relative-position logits) and
the Image Transformer's local self-attention (:mod:`zoo.nn.local`, which attends in blocks).
:func:`attend` has two paths, the fused ``torch.nn.functional.scaled_dot_product_attention``
and the same three operations written out, and :func:`written_out` alone picks between them.

Incremental decoding is part of the module's API: pass a :class:`KVCache` and
:class:`MultiHeadAttention` keeps the keys and values it has seen, appending for
self-attention and computing them once for cross-attention (``static=True``), so no model
writes its own cache.

Shapes: B batch, H heads, T queries, S keys, C model width, D = C / H per head; scores and
weights are ``(B, H, T, S)``. The source attentions of the recurrent encoder-decoders, which
score with other functions than a scaled dot product, are in :mod:`zoo.nn.source_attention`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from zoo.nn.dropout import dropout as _dropout

# bf16 / fp16 attention on the CPU is written out (q k^T, softmax, x v) for up to this many
# query-key pairs: there the fused CPU kernel took 2-6x longer (benchmarks/RESULTS.md)
WRITTEN_OUT_MAX_PAIRS = 256 * 256
_HALF = (torch.bfloat16, torch.float16)


@dataclass
class KVCache:
    """Keys and values of one attention layer during incremental decoding.

    ``static`` caches (cross-attention over a fixed memory) are filled on the first call
    and reused; the others grow by the new keys at every call. Tensors are ``(B, H, S, D)``,
    batch first, so :func:`zoo.nn.decoding.reorder` can follow beam search.

    A growing cache writes into a buffer with room to spare (its capacity doubles when it
    fills), so a step appends in O(new keys) instead of copying every earlier key;
    ``k`` and ``v`` are views of the filled part.
    """

    k: Tensor | None = None
    v: Tensor | None = None
    static: bool = False
    _kbuf: Tensor | None = field(default=None, repr=False)
    _vbuf: Tensor | None = field(default=None, repr=False)

    @property
    def length(self) -> int:
        return 0 if self.k is None else self.k.size(2)

    def append(self, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Add ``(B, H, T, D)`` keys and values after the cached ones; returns all of them."""
        old, new = self.length, self.length + k.size(2)
        buf = self._kbuf
        if buf is None or buf.size(2) < new or buf.shape[:2] != k.shape[:2] or buf.dtype != k.dtype:
            cap = max(2 * new, 64)
            kbuf = k.new_empty(k.size(0), k.size(1), cap, k.size(3))
            vbuf = v.new_empty(v.size(0), v.size(1), cap, v.size(3))
            if old:
                kbuf[:, :, :old] = self.k
                vbuf[:, :, :old] = self.v
            self._kbuf, self._vbuf = kbuf, vbuf
        self._kbuf[:, :, old:new] = k
        self._vbuf[:, :, old:new] = v
        self.k, self.v = self._kbuf[:, :, :new], self._vbuf[:, :, :new]
        return self.k, self.v

    def select(self, index: Tensor) -> "KVCache":
        """Keep batch rows ``index`` (beam search); a static cache is the same for every beam."""
        if not self.static and self.k is not None:
            self.k, self.v = self.k.index_select(0, index), self.v.index_select(0, index)
            self._kbuf = self._vbuf = None  # the next append starts a fresh buffer
        return self


def causal_mask(t: int, s: int, device: torch.device | None = None) -> Tensor:
    """Boolean ``(T, S)`` mask, True where query ``i`` (the last ``t`` of ``s`` positions) may look."""
    offset = s - t
    q = torch.arange(t, device=device)[:, None] + offset
    k = torch.arange(s, device=device)[None, :]
    return k <= q


def written_out(q: Tensor, s: int) -> bool:
    """Whether attention of ``q`` (..., T, D) over ``s`` keys, with no bias, runs written out.

    True for bf16 / fp16 on the CPU with at most :data:`WRITTEN_OUT_MAX_PAIRS` query-key pairs
    (per block, for blocked attention). There ``scaled_dot_product_attention``'s fused CPU
    kernel took 2-6x longer than ``softmax(q k^T) v`` written out, forward and backward, up to
    1,024 positions (benchmarks/RESULTS.md): translation batches of ~200 x 21 tokens, 36.7 ms
    against 9.5 ms a layer; a decoding step of one query over 37 cached keys at batch 64,
    1.10 ms against 0.15 ms; the Image Transformer's MNIST blocks of 56 queries x 224 keys,
    0.38 s against 0.18 s a layer. Longer sequences keep the fused kernel, which never holds
    the (T, S) scores.
    """
    return q.device.type == "cpu" and q.dtype in _HALF and q.size(-2) * s <= WRITTEN_OUT_MAX_PAIRS


def attend(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    mask: Tensor | None = None,
    *,
    causal: bool = False,
    bias: Tensor | None = None,
    dropout_p: float = 0.0,
    need_weights: bool = False,
) -> tuple[Tensor, Tensor | None]:
    """softmax((q k^T + bias) / sqrt(D) + mask) v, the attention every module of the package computes.

    Args:
        q: (..., T, D) queries, e.g. (B, H, T, D), or (B, H, NB, Lq, D) for blocks.
        k, v: (..., S, D) keys and values.
        mask: broadcastable to (..., T, S): bool, True where the query may attend, or
            additive floats (0 or -inf).
        causal: query i, the (S - T + i)-th of S positions, sees keys up to its own
            position (so cached keys count as earlier positions); ``mask``, if any, is bool.
        bias: (..., T, S) extra logits in the units of q k^T, added before the scaling
            (relative positions: q . r). Their gradient flows.
        dropout_p: dropout on the attention weights (0 when not training).
        need_weights: also return the weights (..., T, S), before dropout.

    Returns:
        (..., T, D) output and the weights or None.

    Two paths: the fused ``scaled_dot_product_attention``, and the same three operations
    written out, which runs when the weights are asked for, with a bias (the fused kernels
    take no mask that needs a gradient, and SDPA's general path for a float mask was 2-3x
    slower here), or where :func:`written_out` says so. The written-out sums are done in
    place, as autograd needs none of them again.
    """
    t, s = q.size(-2), k.size(-2)
    fused_causal = causal and mask is None and t == s  # SDPA's is_causal counts from the first key
    if causal and not fused_causal and t > 1:  # one query, the last position, sees every key
        visible = causal_mask(t, s, q.device)
        mask = visible if mask is None else mask & visible
    if not (need_weights or bias is not None or written_out(q, s)):
        if mask is not None and mask.is_floating_point():
            mask = mask.to(q.dtype)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p, is_causal=fused_causal), None
    if fused_causal:
        mask = causal_mask(t, s, q.device)
    scores = torch.matmul(q, k.transpose(-2, -1))  # (..., T, S)
    if bias is not None:
        scores.add_(bias)
    scores.mul_(q.size(-1) ** -0.5)
    if mask is not None:
        if mask.dtype == torch.bool:
            scores.masked_fill_(~mask, float("-inf"))
        else:
            scores.add_(mask.to(scores.dtype))
    weights = scores.softmax(dim=-1)
    return _dropout(weights, dropout_p) @ v, weights if need_weights else None


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

    def _merge(self, x: Tensor) -> Tensor:  # (B, H, T, D) -> (B, T, C)
        b, _, t, _ = x.shape
        return x.transpose(1, 2).reshape(b, t, -1)

    def _keys_values(self, memory: Tensor, cache: KVCache | None) -> tuple[Tensor, Tensor]:
        if cache is not None and cache.static and cache.k is not None:
            return cache.k, cache.v  # cross-attention: projected once per sentence
        k, v = self._split(self.k_proj(memory)), self._split(self.v_proj(memory))
        if cache is None:
            return k, v
        if cache.static:  # contiguous (B, H, S, D): every step's matmuls read them without a copy
            cache.k, cache.v = k.contiguous(), v.contiguous()
            return cache.k, cache.v
        return cache.append(k, v)

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
        mask = None if key_padding_mask is None else ~key_padding_mask[:, None, None, :]  # (B, 1, 1, S)
        out, weights = attend(q, k, v, mask, causal=causal, dropout_p=self.dropout if self.training else 0.0,
                              need_weights=need_weights)
        return self.out_proj(self._merge(out)), weights
