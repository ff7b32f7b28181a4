"""Plain reference implementations that the attention tests (and the relative-attention
benchmark) check the package's attention against: each computes from the definition, with
none of the package's memory savings.

Shapes: B batch, H heads, T queries, S keys, D per head.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor


def masked_attention(q: Tensor, k: Tensor, v: Tensor, mask: Tensor) -> Tensor:
    """Full attention of q, k, v (B, H, T, D) under a (T, T) bool mask: the reference for the local kinds."""
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)


def naive_relative_attention(q: Tensor, k: Tensor, v: Tensor, rel_emb: Tensor, visible: Tensor,
                             pitch_emb: Tensor | None = None, pitches: Tensor | None = None) -> Tensor:
    """Shaw et al.'s formulation: builds the (T, S, D) tensor of distance embeddings.

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
