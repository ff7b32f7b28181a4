"""The attention family shared by every model in the zoo.

Multi-head scaled dot-product attention (Vaswani et al. 2017) runs through
``torch.nn.functional.scaled_dot_product_attention``. Incremental decoding is part of
the module's API: pass a :class:`KVCache` and the module keeps the keys and values it
has seen, appending for self-attention and computing once for cross-attention
(``static=True``), so no model writes its own cache.

Beside it, the attention of the later models, in sections below: relative self-attention
with the Music Transformer's memory-linear skewing (global or local blocks), the Image
Transformer's local 1D / 2D self-attention, and the source attention of the recurrent
encoder-decoders (Bahdanau additive, Luong dot / general).

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
        relative_pitch: 0 for none; else the paper's relative pitch (its JSB experiments):
            each score also gets ``q_a . p_h[clip(pitch_key - pitch_query)]``, intervals of
            up to ``relative_pitch`` semitones each way with an embedding of their own, and one
            more for a pair where either token is no pitch. Forward then needs ``pitches``
            (-1 for no pitch). Computed as ``q @ P^T`` (T x intervals) and one gather, so no
            (T, S, D) tensor is built. The table starts at zero: a model given relative pitch
            computes what it did without until it learns otherwise. Global attention only.

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
        relative_pitch: int = 0,
    ) -> None:
        super().__init__()
        if isinstance(max_relative_distance, bool) or not isinstance(max_relative_distance, int) or max_relative_distance < 1:
            raise ValueError(
                f"max_relative_distance must be a whole number of 1 or more (the farthest distance with an "
                f"embedding of its own), got {max_relative_distance!r}"
            )
        if block_len < 0:
            raise ValueError(f"block_len must be 0 (global attention) or a positive block length, got {block_len}")
        if relative_pitch < 0 or (relative_pitch and block_len):
            raise ValueError(f"relative_pitch must be 0 (none) or a positive interval in semitones, with global attention "
                             f"(block_len 0); got relative_pitch={relative_pitch}, block_len={block_len}")
        self.attn = MultiHeadAttention(d_model, n_heads, dropout, bias)  # the projections and the head split
        self.n_heads, self.head_dim = self.attn.n_heads, self.attn.head_dim
        self.max_relative_distance, self.block_len = max_relative_distance, block_len
        self.query_chunk = 256  # global attention over longer sequences runs in chunks of this many queries
        # rel_emb[h, m] embeds distance m - (max_relative_distance - 1): the last row is distance 0
        self.rel_emb = nn.Parameter(torch.randn(1 if share_heads else n_heads, max_relative_distance, self.head_dim)
                                    * self.head_dim**-0.5)
        self.relative_pitch = relative_pitch
        if relative_pitch:  # row i + relative_pitch: interval i (clipped); the last row: no interval
            self.pitch_emb = nn.Parameter(torch.zeros(1 if share_heads else n_heads, 2 * relative_pitch + 2, self.head_dim))

    def distance_embeddings(self, s: int) -> Tensor:
        """(H or 1, S, D): row k embeds distance k - (S - 1), clipped to the farthest learned one."""
        m = self.max_relative_distance
        idx = (torch.arange(s, device=self.rel_emb.device) - (s - 1) + (m - 1)).clamp_(min=0)
        return self.rel_emb[:, idx]

    def interval_index(self, query_pitches: Tensor, key_pitches: Tensor) -> Tensor:
        """(B, T), (B, S) pitches (-1: none) -> (B, 1, T, S) rows of ``pitch_emb`` for each pair."""
        m = self.relative_pitch
        qp, kp = query_pitches[:, None, :, None], key_pitches[:, None, None, :]
        return torch.where((qp >= 0) & (kp >= 0), (kp - qp).clamp(-m, m) + m, 2 * m + 1)

    def relative_logits(self, q: Tensor, past: int, pitches: Tensor | None = None) -> Tensor:
        """(B, H, T, S) scores q_a . r_{j - (past + a)} for the T queries after ``past`` earlier keys,
        plus the relative pitch scores when ``pitches`` (B, S) of all S positions are given."""
        s = past + q.size(2)
        er = self.distance_embeddings(s).to(q.dtype)  # (H|1, S, D)
        rel = skew(q @ er.transpose(-2, -1), past)
        if pitches is not None:
            by_interval = q @ self.pitch_emb.to(q.dtype).transpose(-2, -1)  # (B, H, T, intervals)
            index = self.interval_index(pitches[:, past:s], pitches[:, :s])
            # in place: rel is a fresh view of skew's padded product, which no backward needs
            rel = rel.add_(by_interval.gather(-1, index.expand(-1, q.size(1), -1, -1)))
        return rel

    def forward(self, x: Tensor, *, cache: KVCache | None = None, pitches: Tensor | None = None) -> Tensor:
        """x (B, T, C) -> (B, T, C); with a cache, x holds only the new positions. With relative
        pitch, ``pitches`` (B, S) are the pitches of every position so far (cached ones first)."""
        if self.relative_pitch and pitches is None:
            raise ValueError("this attention has relative pitch: give pitches, (B, S) MIDI pitches of the positions (-1: none)")
        a = self.attn
        q = a._split(a.q_proj(x))
        k, v = a._split(a.k_proj(x)), a._split(a.v_proj(x))
        past = 0
        if cache is not None:
            past = cache.length
            k, v = cache.append(k, v)
        if pitches is not None and pitches.shape != (k.size(0), k.size(2)):
            raise ValueError(f"pitches must be (B, S) = {(k.size(0), k.size(2))}, one per position so far; got {tuple(pitches.shape)}")
        if self.block_len and cache is None:
            out = self._local(q, k, v)
        else:
            out = self._global(q, k, v, past, pitches if self.relative_pitch else None)
        b, _, t, _ = out.shape
        return a.out_proj(out.transpose(1, 2).reshape(b, t, -1))

    def _attend(self, q: Tensor, k: Tensor, v: Tensor, rel: Tensor, visible: Tensor) -> Tensor:
        mask = torch.zeros(visible.shape, dtype=q.dtype, device=q.device).masked_fill_(~visible, float("-inf"))
        return attend(q, k, v, mask, self.attn.dropout if self.training else 0.0, rel=rel)

    def _global(self, q: Tensor, k: Tensor, v: Tensor, past: int, pitches: Tensor | None = None) -> Tensor:
        t, s = q.size(2), k.size(2)
        if self.block_len:  # a cached step of local attention: only the window the queries can see
            first = max(0, (past // self.block_len - 1) * self.block_len)
            k, v = k[:, :, first:], v[:, :, first:]
            qpos = torch.arange(past, s, device=q.device)[:, None]
            kpos = torch.arange(first, s, device=q.device)[None, :]
            visible = (kpos <= qpos) & (kpos >= (qpos // self.block_len - 1) * self.block_len)
            return self._attend(q, k, v, self.relative_logits(q, past - first), visible)
        c = self.query_chunk
        if t <= c:
            return self._attend(q, k, v, self.relative_logits(q, past, pitches), causal_mask(t, s, q.device))
        # long sequences: chunks of queries, each against the keys up to its end only, so the
        # scores above the causal diagonal are mostly never computed (about half the work)
        outs = []
        for a in range(0, t, c):
            qc, end = q[:, :, a : a + c], past + min(a + c, t)
            outs.append(self._attend(qc, k[:, :, :end], v[:, :, :end], self.relative_logits(qc, past + a, pitches),
                                     causal_mask(qc.size(2), end, q.device)))
        return torch.cat(outs, dim=2)

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


def naive_relative_attention(q: Tensor, k: Tensor, v: Tensor, rel_emb: Tensor, visible: Tensor,
                             pitch_emb: Tensor | None = None, pitches: Tensor | None = None) -> Tensor:
    """Shaw et al.'s formulation, for tests: builds the (T, S, D) tensor of distance embeddings.

    q (B, H, T, D), k and v (B, H, S, D), queries the last T of S positions; ``rel_emb``
    (H|1, M, D) with row M-1 = distance 0; ``visible`` (T, S) bool. With relative pitch,
    ``pitch_emb`` (H|1, 2P+2, D) and ``pitches`` (B, S), built as a (B, T, S, D) tensor too.
    """
    t, s, m = q.size(2), k.size(2), rel_emb.size(1)
    qpos = torch.arange(s - t, s)[:, None]
    dist = torch.arange(s)[None, :] - qpos  # (T, S), <= 0 where visible
    r = rel_emb[:, (dist + m - 1).clamp(0, m - 1)]  # (H|1, T, S, D)
    scores = (q @ k.transpose(-2, -1) + torch.einsum("bhtd,htsd->bhts", q, r.expand(q.size(1), -1, -1, -1)))
    if pitch_emb is not None and pitches is not None:
        p = (pitch_emb.size(1) - 2) // 2
        qp, kp = pitches[:, s - t :, None], pitches[:, None, :]  # (B, T, 1), (B, 1, S)
        row = torch.where((qp >= 0) & (kp >= 0), (kp - qp).clamp(-p, p) + p, 2 * p + 1)  # (B, T, S)
        e = pitch_emb.expand(q.size(1), -1, -1)[:, row]  # (H, B, T, S, D)
        scores = scores + torch.einsum("bhtd,hbtsd->bhts", q, e)
    scores = (scores / math.sqrt(q.size(-1))).masked_fill(~visible, float("-inf"))
    return scores.softmax(-1) @ v


# --- local self-attention (Parmar et al. 2018) ------------------------------------------
#
# Local self-attention of the Image Transformer (Parmar et al. 2018, section 3.2).
#
# Full self-attention over an image of T sub-pixels costs T^2; local attention cuts the
# sequence into *query blocks* and lets each block attend only to a fixed *memory* around
# it, so for fixed block sizes the cost is linear in T.
#
# * **1D local** (:class:`Local1DPattern`): the raster sequence is cut into query blocks of
#   ``block_len`` positions; block n attends to itself and to the ``memory_blocks``
#   preceding blocks, causally. Computed by reshaping into blocks and concatenating the
#   keys of each block with those of the blocks before it.
# * **2D local** (:class:`Local2DPattern`): the image (H x W pixels, C channels interleaved
#   per pixel, position ``p = (row * W + col) * C + channel``) is cut into query blocks of
#   ``query_height x query_width`` pixels; a block attends to the memory region made of its
#   own rows and ``mem_above`` rows above, from ``mem_side`` columns left of it to
#   ``mem_side`` columns right of it (the "memory flange"). Keys are gathered with index
#   tensors computed once; keys outside the image are masked.
#
# In both, the causal rule is raster order: a key is visible to a query iff its position is
# <= the query's. Every query sees at least itself, so no row of a mask is empty.
#
# The per-block products run through ``torch.nn.functional.scaled_dot_product_attention``
# with an additive mask per block (written out for bf16 on the CPU, where that is twice as
# fast: :func:`attend`). :meth:`LocalPattern.full_mask` gives the equivalent
# (T, T) mask of full attention, written from the definition above (not from the block
# tables), which the tests use to check the blocked computation, outputs and gradients.
#
# Incremental decoding: :class:`LocalKVCache` holds keys and values for all T positions,
# allocated once; each step writes one position and reads the keys of that position's
# memory (:meth:`LocalPattern.keys_of`).
#
# Shapes: B batch, T positions, H heads, D = C / H per head, NB blocks, Lq queries and
# Lk keys per block.


def attend(q: Tensor, k: Tensor, v: Tensor, mask: Tensor, dropout_p: float = 0.0, rel: Tensor | None = None) -> Tensor:
    """softmax((q k^T + rel) / sqrt(D) + mask) v: q (..., Lq, D), k and v (..., Lk, D), mask (..., Lq, Lk)
    additive (0 or -inf), ``rel`` optional extra logits before scaling (relative positions).

    Runs through ``scaled_dot_product_attention``, except for relative logits or bf16 / fp16 on
    the CPU: there the three operations written out were 2-3x faster forward and backward
    (SDPA's path for a general float mask; its fused kernels take no mask that needs a
    gradient), measured on MNIST's blocks (896 blocks of 56 queries x 224 keys: 0.18 s
    against 0.38 s a layer) and on relative attention at L = 1024. The scores exist either
    way; the sums are done in place, as autograd needs none of them again.
    """
    if rel is None and not (q.device.type == "cpu" and q.dtype in (torch.bfloat16, torch.float16)):
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask.to(q.dtype), dropout_p=dropout_p)
    scores = torch.matmul(q, k.transpose(-2, -1))
    if rel is not None:
        scores.add_(rel)
    scores.mul_(q.size(-1) ** -0.5).add_(mask.to(scores.dtype))
    return _dropout(torch.softmax(scores, dim=-1), dropout_p) @ v


def _divisors(n: int) -> str:
    return ", ".join(str(d) for d in range(1, n + 1) if n % d == 0)


def _check_count(name: str, value: int, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be a whole number of {minimum} or more, got {value!r}")


class LocalPattern(nn.Module):
    """Which keys each query block sees, as index tensors over a sequence of ``seq_len`` positions.

    Subclasses fill, in ``__init__``, the non-persistent buffers

    * ``q_index`` (NB, Lq): the positions of each query block (every position < T exactly
      once; a 1D pattern may pad the last block with positions >= T),
    * ``k_index`` (NB, Lk): the key positions of each block's memory (0 where invalid),
    * ``mask`` (NB, Lq, Lk): True where the query may attend to the key,

    and call :meth:`_finish`, which derives the per-position tables used when decoding.
    """

    seq_len: int
    q_index: Tensor
    k_index: Tensor
    mask: Tensor
    pos_block: Tensor  # (T,) the query block of each position
    pos_row: Tensor  # (T,) its row within the block's queries

    def _finish(self, q_index: Tensor, k_index: Tensor, mask: Tensor) -> None:
        t = self.seq_len
        self.register_buffer("q_index", q_index, persistent=False)
        self.register_buffer("k_index", k_index, persistent=False)
        self.register_buffer("mask", mask, persistent=False)
        nb, lq = q_index.shape
        flat = q_index.flatten()
        real = flat < t
        pos_block = torch.empty(t, dtype=torch.long)
        pos_row = torch.empty(t, dtype=torch.long)
        pos_block[flat[real]] = torch.arange(nb).repeat_interleave(lq)[real]
        pos_row[flat[real]] = torch.arange(lq).repeat(nb)[real]
        self.register_buffer("pos_block", pos_block, persistent=False)
        self.register_buffer("pos_row", pos_row, persistent=False)
        # inverse permutation: where each position's output lies in the flattened blocks
        inverse = torch.empty(t, dtype=torch.long)
        inverse[flat[real]] = torch.arange(flat.numel())[real]
        self.register_buffer("inverse", inverse, persistent=False)

    def additive_mask(self, dtype: torch.dtype) -> Tensor:
        """``mask`` as 0 / -inf in ``dtype``, made once per dtype and device.

        SDPA given a boolean mask converts it (and checks for empty rows) at every call;
        the training step calls it for every layer, forward and backward.
        """
        key = (dtype, self.mask.device)
        cached = getattr(self, "_additive", None)
        if cached is None or cached[0] != key:
            zero = torch.zeros((), dtype=dtype, device=self.mask.device)
            cached = (key, torch.where(self.mask, zero, torch.tensor(float("-inf"), dtype=dtype, device=self.mask.device)))
            self._additive = cached
        return cached[1]

    def keys_of(self, pos: int) -> tuple[Tensor, Tensor]:
        """The key positions (Lk,) a query at ``pos`` reads, and which of them it may attend to (Lk,)."""
        block = self.pos_block[pos]
        return self.k_index[block], self.mask[block, self.pos_row[pos]]

    @property
    def pos_keys(self) -> Tensor:
        """(T, Lk): :meth:`keys_of` for every position (keys)."""
        return self.k_index[self.pos_block]

    @property
    def pos_mask(self) -> Tensor:
        """(T, Lk): :meth:`keys_of` for every position (which keys are visible)."""
        return self.mask[self.pos_block, self.pos_row]

    @property
    def block_shape(self) -> tuple[int, int]:
        """(Lq, Lk): queries and keys per block."""
        return self.q_index.size(1), self.k_index.size(1)

    def full_mask(self) -> Tensor:
        """(T, T) bool: True where query i may attend to key j, by the pattern's definition."""
        raise NotImplementedError

    def blocked(self, q: Tensor, k: Tensor, v: Tensor, dropout_p: float = 0.0) -> Tensor:
        """Attention of q, k, v (B, H, T, D) restricted to the pattern -> (B, H, T, D).

        The generic path: gather each block's queries and keys with the index tensors.
        """
        b, h, t, d = q.shape
        if t != self.seq_len:
            raise ValueError(f"local attention was built for {self.seq_len} positions, got {t}")
        qf, kf, vf = (x.reshape(b * h, t, d) for x in (q, k, v))
        qb = qf[:, self.q_index]  # (BH, NB, Lq, D)
        kb, vb = kf[:, self.k_index], vf[:, self.k_index]  # (BH, NB, Lk, D)
        out = attend(qb, kb, vb, self.additive_mask(qb.dtype), dropout_p)
        out = out.flatten(1, 2)[:, self.inverse]  # back to raster order (BH, T, D)
        return out.view(b, h, t, d)


class Local1DPattern(LocalPattern):
    """1D local attention: blocks of ``block_len`` positions, each seeing ``memory_blocks`` blocks back.

    ``seq_len`` need not be a multiple of ``block_len``: the last block is padded, and the
    padding (positions >= T) is never a key of a real query, since it lies in the future.
    """

    def __init__(self, seq_len: int, block_len: int, memory_blocks: int = 1) -> None:
        super().__init__()
        _check_count("seq_len", seq_len, 1)
        _check_count("block_len", block_len, 1)
        _check_count("memory_blocks", memory_blocks, 0)
        self.seq_len, self.block_len, self.memory_blocks = seq_len, block_len, memory_blocks
        nb = math.ceil(seq_len / block_len)
        self.num_blocks = nb
        q_index = torch.arange(nb * block_len).view(nb, block_len)
        window = (memory_blocks + 1) * block_len
        k_abs = (torch.arange(nb)[:, None] - memory_blocks) * block_len + torch.arange(window)[None]  # (NB, Lk)
        valid = (k_abs >= 0) & (k_abs < seq_len)
        mask = valid[:, None, :] & (k_abs[:, None, :] <= q_index[:, :, None])
        self._finish(q_index, k_abs.clamp(0, seq_len - 1), mask)

    def full_mask(self) -> Tensor:
        i = torch.arange(self.seq_len)[:, None]
        j = torch.arange(self.seq_len)[None, :]
        first_key_block = i // self.block_len - self.memory_blocks
        return (j <= i) & (j // self.block_len >= first_key_block)

    def blocked(self, q: Tensor, k: Tensor, v: Tensor, dropout_p: float = 0.0) -> Tensor:
        """Reshape into blocks; each block's keys are its own and the ``memory_blocks`` before it."""
        b, h, t, d = q.shape
        if t != self.seq_len:
            raise ValueError(f"local attention was built for {self.seq_len} positions, got {t}")
        n, m, nb = self.block_len, self.memory_blocks, self.num_blocks
        tail = nb * n - t
        qb = F.pad(q.reshape(b * h, t, d), (0, 0, 0, tail)).view(b * h, nb, n, d)

        def windows(x: Tensor) -> Tensor:  # (BH, T, D) -> (BH, NB, (m + 1) n, D)
            xb = F.pad(x.reshape(b * h, t, d), (0, 0, m * n, tail)).view(b * h, nb + m, n, d)
            return torch.cat([xb[:, i : i + nb] for i in range(m + 1)], dim=2)

        out = attend(qb, windows(k), windows(v), self.additive_mask(qb.dtype), dropout_p)
        return out.reshape(b, h, nb * n, d)[:, :, :t]


class Local2DPattern(LocalPattern):
    """2D local attention over an H x W x C image in raster order, channels interleaved.

    Query blocks of ``query_height x query_width`` pixels (all their channels) tile the
    image; each attends to the rows of its block and ``mem_above`` rows above, over its
    columns widened by ``mem_side`` on each side, causally in raster order.
    """

    def __init__(
        self,
        height: int,
        width: int,
        channels: int = 1,
        query_height: int = 4,
        query_width: int = 4,
        mem_above: int = 4,
        mem_side: int = 4,
    ) -> None:
        super().__init__()
        for name, value, low in (("height", height, 1), ("width", width, 1), ("channels", channels, 1),
                                 ("query_height", query_height, 1), ("query_width", query_width, 1),
                                 ("mem_above", mem_above, 0), ("mem_side", mem_side, 0)):
            _check_count(name, value, low)
        if height % query_height or width % query_width:
            raise ValueError(
                f"query blocks of {query_height}x{query_width} pixels do not tile the {height}x{width} image; "
                f"pick query_height among {_divisors(height)} and query_width among {_divisors(width)}"
            )
        self.height, self.width, self.channels = height, width, channels
        self.query_height, self.query_width, self.mem_above, self.mem_side = query_height, query_width, mem_above, mem_side
        self.seq_len = height * width * channels
        qh, qw, c = query_height, query_width, channels
        top = torch.arange(0, height, qh).repeat_interleave(width // qw)  # (NB,) first row of each block
        left = torch.arange(0, width, qw).repeat(height // qh)  # (NB,) first column
        # queries: the block's pixels in raster order, channels innermost
        qr = top[:, None] + torch.arange(qh).repeat_interleave(qw * c)[None]
        qc = left[:, None] + torch.arange(qw).repeat_interleave(c).repeat(qh)[None]
        qch = torch.arange(c).repeat(qh * qw)[None]
        q_index = (qr * width + qc) * c + qch  # (NB, Lq)
        # memory: rows top - mem_above .. top + qh - 1, columns left - mem_side .. left + qw - 1 + mem_side
        mh, mw = mem_above + qh, qw + 2 * mem_side
        kr = top[:, None] - mem_above + torch.arange(mh).repeat_interleave(mw * c)[None]
        kc = left[:, None] - mem_side + torch.arange(mw).repeat_interleave(c).repeat(mh)[None]
        kch = torch.arange(c).repeat(mh * mw)[None].expand_as(kr)
        inside = (kr >= 0) & (kr < height) & (kc >= 0) & (kc < width)
        k_index = torch.where(inside, (kr * width + kc) * c + kch, torch.zeros_like(kr))  # (NB, Lk)
        mask = inside[:, None, :] & (k_index[:, None, :] <= q_index[:, :, None])
        self._finish(q_index, k_index, mask)

    def blocked(self, q: Tensor, k: Tensor, v: Tensor, dropout_p: float = 0.0) -> Tensor:
        """Query blocks by reshaping, memories by ``index_select`` with ``k_index``.

        The same blocks, in the same order, as the generic path; but advanced indexing's
        backward (an index_put with accumulation) took 15% of a training step, and neither
        the queries (a reshape) nor ``index_select`` (backward: ``index_add_``) need it.
        """
        b, h, t, d = q.shape
        if t != self.seq_len:
            raise ValueError(f"local attention was built for {self.seq_len} positions, got {t}")
        hh, ww, c = self.height, self.width, self.channels
        qh, qw, ma, ms = self.query_height, self.query_width, self.mem_above, self.mem_side
        nr, nc, mh, mw = hh // qh, ww // qw, ma + qh, qw + 2 * ms

        def queries(x: Tensor) -> Tensor:  # (B, H, T, D) -> (BH, NB, Lq, D)
            x = x.reshape(b * h, nr, qh, nc, qw, c, d).permute(0, 1, 3, 2, 4, 5, 6)
            return x.reshape(b * h, nr * nc, qh * qw * c, d)

        def memory(x: Tensor) -> Tensor:  # (B, H, T, D) -> (BH, NB, Lk, D)
            keys = self.k_index.flatten()
            return x.reshape(b * h, t, d).index_select(1, keys).view(b * h, nr * nc, mh * mw * c, d)

        out = attend(queries(q), memory(k), memory(v), self.additive_mask(q.dtype), dropout_p)  # (BH, NB, Lq, D)
        out = out.reshape(b * h, nr, nc, qh, qw, c, d).permute(0, 1, 3, 2, 4, 5, 6)
        return out.reshape(b, h, t, d)

    def full_mask(self) -> Tensor:
        w, c, qh, qw = self.width, self.channels, self.query_height, self.query_width
        p = torch.arange(self.seq_len)
        row, col = p // c // w, p // c % w
        top, left = row // qh * qh, col // qw * qw  # each query's block
        kr, kc = row[None, :], col[None, :]
        in_rows = (kr >= top[:, None] - self.mem_above) & (kr < top[:, None] + qh)
        in_cols = (kc >= left[:, None] - self.mem_side) & (kc < left[:, None] + qw + self.mem_side)
        return in_rows & in_cols & (p[None, :] <= p[:, None])


@dataclass
class LocalKVCache:
    """Keys and values (B, H, T, D) of every position, allocated once; ``length`` are filled."""

    k: Tensor
    v: Tensor
    length: int = 0


class LocalSelfAttention(MultiHeadAttention):
    """Multi-head self-attention restricted to a :class:`LocalPattern`: the projections of
    :class:`MultiHeadAttention` (same parameter names), attending only within the pattern.

    Args:
        d_model: model width C.
        n_heads: number of heads H; C must divide evenly.
        pattern: the blocks and memories (it fixes the sequence length T).
        dropout: dropout on the attention weights while training.
    """

    def __init__(self, d_model: int, n_heads: int, pattern: LocalPattern, dropout: float = 0.0, bias: bool = True) -> None:
        _check_count("n_heads", n_heads, 1)
        super().__init__(d_model, n_heads, dropout, bias)
        self.pattern = pattern

    def new_cache(self, batch_size: int, device: torch.device | None = None, dtype: torch.dtype | None = None) -> LocalKVCache:
        """An empty cache for ``batch_size`` sequences of the pattern's length."""
        shape = (batch_size, self.n_heads, self.pattern.seq_len, self.head_dim)
        dtype = dtype or self.q_proj.weight.dtype
        return LocalKVCache(torch.zeros(shape, device=device, dtype=dtype), torch.zeros(shape, device=device, dtype=dtype))

    def forward(self, x: Tensor, cache: LocalKVCache | None = None) -> Tensor:  # type: ignore[override]
        """x (B, T, C) -> (B, T, C).

        Without a cache, x is a prefix of the sequence (T <= the pattern's length; a
        shorter one is padded with positions that no query sees). With a cache, x holds the
        next positions after ``cache.length``, which are written into the cache and attend
        to the cached memory.
        """
        if cache is not None:
            return self._step(x, cache)
        b, t, _ = x.shape
        total = self.pattern.seq_len
        if t > total:
            raise ValueError(f"{t} positions are more than the {total} this local attention was built for")
        q, k, v = (self._split(proj(x)) for proj in (self.q_proj, self.k_proj, self.v_proj))
        if t < total:  # pad to the full length: the padding is in every real query's future
            q, k, v = (F.pad(z, (0, 0, 0, total - t)) for z in (q, k, v))
        out = self.pattern.blocked(q, k, v, self.dropout if self.training else 0.0)[:, :, :t]
        return self.out_proj(self._merge(out))

    def _step(self, x: Tensor, cache: LocalKVCache) -> Tensor:
        b, n, _ = x.shape
        start = cache.length
        if start + n > self.pattern.seq_len:
            raise ValueError(
                f"the cache holds {self.pattern.seq_len} positions; cannot add {n} after {start}"
            )
        q, k, v = (self._split(proj(x)) for proj in (self.q_proj, self.k_proj, self.v_proj))
        cache.k[:, :, start : start + n] = k.to(cache.k.dtype)
        cache.v[:, :, start : start + n] = v.to(cache.v.dtype)
        cache.length = start + n
        outs = []
        for i in range(n):
            pos = start + i
            keys, visible = self.pattern.keys_of(pos)  # (Lk,), (Lk,)
            kk, vv = cache.k[:, :, keys], cache.v[:, :, keys]  # (B, H, Lk, D)
            mask = visible[None]  # (1, Lk)
            outs.append(F.scaled_dot_product_attention(q[:, :, i : i + 1], kk.to(q.dtype), vv.to(q.dtype), attn_mask=mask))
        return self.out_proj(self._merge(torch.cat(outs, dim=2)))


def masked_attention(q: Tensor, k: Tensor, v: Tensor, mask: Tensor) -> Tensor:
    """Full attention of q, k, v (B, H, T, D) under a (T, T) bool mask: the reference for the local kinds."""
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)


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
