"""Local self-attention of the Image Transformer (Parmar et al. 2018, "Image Transformer", section 3.2).

Full self-attention over an image of T sub-pixels costs T^2; local attention cuts the
sequence into *query blocks* and lets each block attend only to a fixed *memory* around it,
so for fixed block sizes the cost is linear in T.

* **1D local** (:class:`Local1DPattern`): the raster sequence is cut into query blocks of
  ``block_len`` positions; block n attends to itself and to the ``memory_blocks`` preceding
  blocks, causally. Computed by reshaping into blocks and concatenating the keys of each
  block with those of the blocks before it.
* **2D local** (:class:`Local2DPattern`): the image (H x W pixels, C channels interleaved
  per pixel, position ``p = (row * W + col) * C + channel``) is cut into query blocks of
  ``query_height x query_width`` pixels; a block attends to the memory region made of its
  own rows and ``mem_above`` rows above, from ``mem_side`` columns left of it to
  ``mem_side`` columns right of it (the "memory flange"). Keys are gathered with index
  tensors computed once; keys outside the image are masked.

In both, the causal rule is raster order: a key is visible to a query iff its position is
<= the query's. Every query sees at least itself, so no row of a mask is empty.

The blocks go to :func:`zoo.nn.attention.attend` as (B H, NB, Lq, D) queries and
(B H, NB, Lk, D) keys with an additive (NB, Lq, Lk) mask. :meth:`LocalPattern.full_mask`
gives the equivalent (T, T) mask of full attention, written from the definition above (not
from the block tables), which the tests use to check the blocked computation, outputs and
gradients.

Incremental decoding: :class:`LocalKVCache` holds keys and values for all T positions,
allocated once; each step writes one position and reads the keys of that position's memory
(:meth:`LocalPattern.keys_of`).

Shapes: B batch, T positions, H heads, C model width, D = C / H per head, NB blocks, Lq
queries and Lk keys per block.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from zoo.nn.attention import MultiHeadAttention, attend


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

    def _check_length(self, t: int) -> None:
        if t != self.seq_len:
            raise ValueError(f"local attention was built for {self.seq_len} positions, got {t}")

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
        self._check_length(t)
        qf, kf, vf = (x.reshape(b * h, t, d) for x in (q, k, v))
        qb = qf[:, self.q_index]  # (BH, NB, Lq, D)
        kb, vb = kf[:, self.k_index], vf[:, self.k_index]  # (BH, NB, Lk, D)
        out, _ = attend(qb, kb, vb, self.additive_mask(qb.dtype), dropout_p=dropout_p)
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
        self._check_length(t)
        n, m, nb = self.block_len, self.memory_blocks, self.num_blocks
        tail = nb * n - t
        qb = F.pad(q.reshape(b * h, t, d), (0, 0, 0, tail)).view(b * h, nb, n, d)

        def windows(x: Tensor) -> Tensor:  # (BH, T, D) -> (BH, NB, (m + 1) n, D)
            xb = F.pad(x.reshape(b * h, t, d), (0, 0, m * n, tail)).view(b * h, nb + m, n, d)
            return torch.cat([xb[:, i : i + nb] for i in range(m + 1)], dim=2)

        out, _ = attend(qb, windows(k), windows(v), self.additive_mask(qb.dtype), dropout_p=dropout_p)
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
        self._check_length(t)
        hh, ww, c = self.height, self.width, self.channels
        qh, qw, ma, ms = self.query_height, self.query_width, self.mem_above, self.mem_side
        nr, nc, mh, mw = hh // qh, ww // qw, ma + qh, qw + 2 * ms

        def queries(x: Tensor) -> Tensor:  # (B, H, T, D) -> (BH, NB, Lq, D)
            x = x.reshape(b * h, nr, qh, nc, qw, c, d).permute(0, 1, 3, 2, 4, 5, 6)
            return x.reshape(b * h, nr * nc, qh * qw * c, d)

        def memory(x: Tensor) -> Tensor:  # (B, H, T, D) -> (BH, NB, Lk, D)
            keys = self.k_index.flatten()
            return x.reshape(b * h, t, d).index_select(1, keys).view(b * h, nr * nc, mh * mw * c, d)

        out, _ = attend(queries(q), memory(k), memory(v), self.additive_mask(q.dtype), dropout_p=dropout_p)  # (BH, NB, Lq, D)
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
            outs.append(attend(q[:, :, i : i + 1], kk.to(q.dtype), vv.to(q.dtype), visible[None])[0])  # mask (1, Lk)
        return self.out_proj(self._merge(torch.cat(outs, dim=2)))
