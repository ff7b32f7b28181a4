"""Relative self-attention of the Music Transformer (Huang et al. 2018, "Music Transformer").

A query at position i scores key j by q_i . (k_j + r_{j-i}), r a learned embedding of the
distance j - i, clipped at ``max_relative_distance - 1`` (Shaw et al. 2018,
"Self-Attention with Relative Position Representations"). Shaw et al. built the (T, S, D)
tensor of r_{j-i}; the Music Transformer's "skewing" (:func:`skew`) gets the same scores
from the (T, S) product Q Er^T, Er holding one embedding per distance, by padding a column,
reshaping and slicing so that row i is shifted left by its position. Memory is
O(S D + T S) instead of O(T S D).

:class:`RelativeSelfAttention` attends globally (every earlier position, long sequences in
chunks of queries) or locally (the paper's relative local attention: blocks that see
themselves and the previous block), optionally with the paper's relative pitch. The relative
logits (B, H, T, S) go to :func:`zoo.nn.attention.attend` as its ``bias``.

Shapes: B batch, H heads, T queries, S keys (the last T of S positions are the queries),
C model width, D = C / H per head.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from zoo.nn.attention import KVCache, MultiHeadAttention, attend, causal_mask


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
        return a.out_proj(a._merge(out))

    def _attend(self, q: Tensor, k: Tensor, v: Tensor, rel: Tensor, visible: Tensor) -> Tensor:
        """softmax((q k^T + rel) / sqrt(D)) v over the ``visible`` (bool) keys."""
        return attend(q, k, v, visible, bias=rel, dropout_p=self.attn.dropout if self.training else 0.0)[0]

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
