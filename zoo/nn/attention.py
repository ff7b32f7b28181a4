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
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from zoo.nn.dropout import dropout as _dropout

# bf16 / fp16 attention on the CPU is written out (q k^T, softmax, x v) for up to this many
# query-key pairs: there SDPA's fused CPU kernel took 3-6x longer (issue 7, benchmarks/RESULTS.md)
WRITTEN_OUT_MAX_PAIRS = 256 * 256


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
    """Whether attention of ``q`` (B, H, T, D) over ``s`` keys runs as three written-out operations.

    True for bf16 / fp16 on the CPU with at most :data:`WRITTEN_OUT_MAX_PAIRS` query-key pairs:
    there ``scaled_dot_product_attention``'s fused CPU kernel took 3-6x longer than
    ``softmax(q k^T) v`` written out, forward and backward (issue 7: translation batches of
    ~200 x 21 tokens, 36.7 ms against 9.5 ms a layer; a decoding step of one query over 37
    cached keys at batch 64, 1.10 ms against 0.15 ms), and it still was at 1,024 positions.
    Longer sequences keep the fused kernel, which never holds the (T, S) scores.
    """
    return q.device.type == "cpu" and q.dtype in (torch.bfloat16, torch.float16) and q.size(-2) * s <= WRITTEN_OUT_MAX_PAIRS


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
        t, s = q.size(2), k.size(2)

        mask = None  # bool, True = may attend; broadcast to (B, H, T, S)
        if key_padding_mask is not None:
            mask = ~key_padding_mask[:, None, None, :]
        use_is_causal = causal and mask is None and t == s
        if causal and not use_is_causal and t > 1:
            cm = causal_mask(t, s, q.device)
            mask = cm if mask is None else mask & cm

        p = self.dropout if self.training else 0.0
        weights = None
        if need_weights:
            scores = q @ k.transpose(-2, -1) / math.sqrt(self.head_dim)  # (B, H, T, S)
            if use_is_causal:
                mask = causal_mask(t, s, q.device)
            if mask is not None:
                scores = scores.masked_fill(~mask, float("-inf"))
            weights = scores.softmax(dim=-1)
            out = F.dropout(weights, p, self.training) @ v
        elif written_out(q, s):
            if use_is_causal:
                mask = causal_mask(t, s, q.device)
            scores = torch.matmul(q, k.transpose(-2, -1)).mul_(self.head_dim**-0.5)  # (B, H, T, S)
            if mask is not None:
                scores = scores.masked_fill_(~mask, float("-inf"))
            out = _dropout(scores.softmax(dim=-1), p, self.training) @ v
        else:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p, is_causal=use_is_causal)
        b, _, t, _ = out.shape
        out = out.transpose(1, 2).reshape(b, t, -1)  # (B, T, C)
        return self.out_proj(out), weights


# --- relative self-attention (Shaw et al. 2018; Huang et al. 2018) ---------------------
#
# A query at position i scores key j by q_i . (k_j + r_{j-i}), r a learned embedding of
# the distance j - i (clipped at max_relative_distance - 1). Shaw et al. built the
# (L, L, D) tensor of r_{j-i}; the Music Transformer's "skewing" gets the same scores from
# the (L, L) product Q Er^T, Er holding one embedding per distance, by padding a column,
# reshaping and slicing so that row i is shifted left by its position. Memory is
# O(L D + L^2) instead of O(L^2 D).


def skew(rel: Tensor, past: int) -> Tensor:
    """Align relative logits with keys.

    ``rel[..., a, k]`` scores query ``a`` against distance ``k - (S - 1)`` (k = 0 is the
    farthest distance, k = S - 1 distance 0), for T queries that are the last T of S
    positions (``past = S - T`` keys come before the first query). Returns ``out[..., a, j]``
    = the score of query ``a`` against key ``j``, ``rel[..., a, j - past - a + S - 1]``. Entries
    for keys after the query (j > past + a) are meaningless: mask them.
    """
    *lead, t, s = rel.shape
    if s != t + past:
        raise ValueError(f"skew needs S = T + past keys, got T={t}, S={s}, past={past}")
    flat = F.pad(rel, (1, 0)).reshape(*lead, t * (s + 1))  # a zero column on the left, rows joined
    return flat[..., t : t + t * s].view(*lead, t, s)


class RelativeSelfAttention(nn.Module):
    """Causal multi-head self-attention with learned relative positions, global or local.

    Args:
        d_model, n_heads, dropout, bias: as :class:`MultiHeadAttention`.
        max_relative_distance: distances 0 .. max_relative_distance - 1 (looking back) get
            embeddings of their own; farther keys share the last one (Shaw et al.'s clipping).
        share_heads: one table of distance embeddings for all heads (H times fewer
            parameters); by default each head learns its own, as in the Music Transformer
            paper (Er of shape (H, L, D)).
        block_len: 0 for global attention over the whole sequence; else local attention
            (the paper's "relative local attention"): the sequence is cut into blocks of
            ``block_len`` positions and each query sees its own block up to itself and the
            whole previous block.

    Incremental decoding with a :class:`KVCache` keeps every key (global) or reads only the
    window a query can see (local); relative positions are counted from the cache length.
    """

    def __init__(
        self,
        d_model: int,
        n_heads: int,
        max_relative_distance: int,
        dropout: float = 0.0,
        bias: bool = True,
        share_heads: bool = False,
        block_len: int = 0,
    ) -> None:
        super().__init__()
        if isinstance(max_relative_distance, bool) or not isinstance(max_relative_distance, int) or max_relative_distance < 1:
            raise ValueError(
                f"max_relative_distance must be a whole number of 1 or more (the farthest distance with an "
                f"embedding of its own), got {max_relative_distance!r}"
            )
        if block_len < 0:
            raise ValueError(f"block_len must be 0 (global attention) or a positive block length, got {block_len}")
        self.attn = MultiHeadAttention(d_model, n_heads, dropout, bias)  # the projections and the head split
        self.n_heads, self.head_dim = self.attn.n_heads, self.attn.head_dim
        self.max_relative_distance, self.block_len = max_relative_distance, block_len
        # rel_emb[h, m] embeds distance m - (max_relative_distance - 1): the last row is distance 0
        self.rel_emb = nn.Parameter(torch.randn(1 if share_heads else n_heads, max_relative_distance, self.head_dim)
                                    * self.head_dim**-0.5)

    def distance_embeddings(self, s: int) -> Tensor:
        """(H or 1, S, D): row k embeds distance k - (S - 1), clipped to the farthest learned one."""
        m = self.max_relative_distance
        idx = (torch.arange(s, device=self.rel_emb.device) - (s - 1) + (m - 1)).clamp_(min=0)
        return self.rel_emb[:, idx]

    def relative_logits(self, q: Tensor, past: int) -> Tensor:
        """(B, H, T, S) scores q_a . r_{j - (past + a)} for the T queries after ``past`` earlier keys."""
        s = past + q.size(2)
        er = self.distance_embeddings(s).to(q.dtype)  # (H|1, S, D)
        return skew(q @ er.transpose(-2, -1), past)

    def forward(self, x: Tensor, *, cache: KVCache | None = None) -> Tensor:
        """x (B, T, C) -> (B, T, C); with a cache, x holds only the new positions."""
        a = self.attn
        q = a._split(a.q_proj(x))
        k, v = a._split(a.k_proj(x)), a._split(a.v_proj(x))
        past = 0
        if cache is not None:
            past = cache.length
            k, v = cache.append(k, v)
        if self.block_len and cache is None:
            out = self._local(q, k, v)
        else:
            out = self._global(q, k, v, past)
        b, _, t, _ = out.shape
        return a.out_proj(out.transpose(1, 2).reshape(b, t, -1))

    def _attend(self, q: Tensor, k: Tensor, v: Tensor, rel: Tensor, visible: Tensor) -> Tensor:
        """softmax((q k^T + rel) / sqrt(D), over visible keys) v.

        Written out rather than through scaled_dot_product_attention with ``rel`` as a float
        mask: on CPU that path was 2.5-3x slower forward + backward at L = 1024 (the fused
        kernels take no mask that needs a gradient), and the (T, S) scores exist either way.
        The sums are done in place: none of them is needed again by autograd.
        """
        scores = torch.matmul(q, k.transpose(-2, -1))
        scores.add_(rel).mul_(self.head_dim**-0.5)
        scores.add_(torch.zeros(visible.shape, dtype=scores.dtype, device=scores.device).masked_fill_(~visible, float("-inf")))
        weights = scores.softmax(-1)
        if self.training and self.attn.dropout > 0:
            weights = F.dropout(weights, self.attn.dropout)
        return torch.matmul(weights, v)

    def _global(self, q: Tensor, k: Tensor, v: Tensor, past: int) -> Tensor:
        t, s = q.size(2), k.size(2)
        if self.block_len:  # a cached step of local attention: only the window the queries can see
            first = max(0, (past // self.block_len - 1) * self.block_len)
            k, v = k[:, :, first:], v[:, :, first:]
            qpos = torch.arange(past, s, device=q.device)[:, None]
            kpos = torch.arange(first, s, device=q.device)[None, :]
            visible = (kpos <= qpos) & (kpos >= (qpos // self.block_len - 1) * self.block_len)
            return self._attend(q, k, v, self.relative_logits(q, past - first), visible)
        return self._attend(q, k, v, self.relative_logits(q, past), causal_mask(t, s, q.device))

    def _local(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        """Blocks of n queries against their own and the previous block's 2n keys: O(L n) memory."""
        n = self.block_len
        b, h, t, d = q.shape
        nb = -(-t // n)
        pad = nb * n - t  # the padded tail is in every real query's future, so it is masked
        q, k, v = (F.pad(z, (0, 0, 0, pad)).view(b, h, nb, n, d) for z in (q, k, v))
        k = torch.cat([F.pad(k, (0, 0, 0, 0, 1, 0))[:, :, :-1], k], dim=3)  # (B, H, nb, 2n, D): previous + own
        v = torch.cat([F.pad(v, (0, 0, 0, 0, 1, 0))[:, :, :-1], v], dim=3)
        er = self.distance_embeddings(2 * n).to(q.dtype)[:, None]  # (H|1, 1, 2n, D)
        rel = skew(q @ er.transpose(-2, -1), n)  # (B, H, nb, n, 2n)
        qi = torch.arange(n, device=q.device)[:, None]
        kj = torch.arange(2 * n, device=q.device)[None, :]
        visible = (kj <= qi + n).expand(nb, n, 2 * n).clone()
        visible[0, :, :n] = False  # the first block has no previous block
        out = self._attend(q, k, v, rel, visible)  # (B, H, nb, n, D)
        return out.reshape(b, h, nb * n, d)[:, :, :t]


def naive_relative_attention(q: Tensor, k: Tensor, v: Tensor, rel_emb: Tensor, visible: Tensor) -> Tensor:
    """Shaw et al.'s formulation, for tests: builds the (T, S, D) tensor of distance embeddings.

    q (B, H, T, D), k and v (B, H, S, D), queries the last T of S positions; ``rel_emb``
    (H|1, M, D) with row M-1 = distance 0; ``visible`` (T, S) bool.
    """
    t, s, m = q.size(2), k.size(2), rel_emb.size(1)
    qpos = torch.arange(s - t, s)[:, None]
    dist = torch.arange(s)[None, :] - qpos  # (T, S), <= 0 where visible
    r = rel_emb[:, (dist + m - 1).clamp(0, m - 1)]  # (H|1, T, S, D)
    scores = (q @ k.transpose(-2, -1) + torch.einsum("bhtd,htsd->bhts", q, r.expand(q.size(1), -1, -1, -1)))
    scores = (scores / math.sqrt(q.size(-1))).masked_fill(~visible, float("-inf"))
    return scores.softmax(-1) @ v


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
