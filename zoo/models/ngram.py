"""The n-gram (Markov) language model with interpolated Kneser-Ney smoothing.

Chen and Goodman, "An Empirical Study of Smoothing Techniques for Language Modeling",
1998: interpolated Kneser-Ney with one absolute discount per order, D = n1 / (n1 + 2 n2),

    P_N(w | h) = max(c(h w) - D, 0) / c(h .) + D * N1+(h .) / c(h .) * P_{N-1}(w | h')

or (``modified=True``) their interpolated *modified* Kneser-Ney, with three discounts per
order chosen by the count, D(1) = D1, D(2) = D2, D(c >= 3) = D3+, from the order's counts
of counts n1..n4 (Y = n1 / (n1 + 2 n2), D1 = 1 - 2Y n2/n1, D2 = 2 - 3Y n3/n2,
D3+ = 3 - 4Y n4/n3):

    P_N(w | h) = max(c(h w) - D(c(h w)), 0) / c(h .)
                 + (D1 N1(h .) + D2 N2(h .) + D3+ N3+(h .)) / c(h .) * P_{N-1}(w | h')

The highest order counts tokens; lower orders count continuations, N1+(. h' w): how many
distinct tokens precede h' w. Unigrams are interpolated with the uniform distribution,
so no token ever gets zero probability. A context never seen backs off entirely.

Counts work over any token ids (words, subwords, MIDI events, pixel intensities). They are
gathered in the training loop (``observe``) and kept as buffers, so they are stored in
model.safetensors like any weights. An n-gram is packed into one int64 key, with int64
counts, while V^N fits in 63 bits (the layout of the first published n-grams); beyond
that (a 5-gram of PTB's 10,002 words) into its context's int64 key and its last token
(int32), with int32 counts, which asks only V^(N-1) to fit. A stream read in chunks
carries the last N-1 tokens from one chunk to the next (``observe`` and
``score_stream`` take and return them), so a chunk boundary changes no count or score.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from zoo.models.base import CausalLM, check_vocab, make_config
from zoo.registry import (
    JSB_CHORALES, MULTI30K_EN, MUSIC_LICENSE, NOTTINGHAM, PTB, PTB_LICENSE, ZOO_LICENSE, Pretrained, register_model,
    register_pretrained,
)

KEY_LIMIT = 2**63


@dataclass
class NGramConfig:
    vocab_size: int = 8000
    order: int = 3
    pad_id: int = 0
    bos_id: int = 2
    max_len: int = 100_000  # an n-gram model has no length limit; this only bounds sampling
    modified: bool = False  # modified Kneser-Ney: three discounts per order (D1, D2, D3+) instead of one


def modified_discounts(counts: Tensor) -> Tensor:
    """[0, D1, D2, D3+] of Chen & Goodman's modified Kneser-Ney from the counts of one order.

    A count of counts that is zero (tiny data) leaves the discount of the count below it;
    each discount stays in [0, its count]."""
    n1, n2, n3, n4 = ((counts == k).sum().item() for k in (1, 2, 3, 4))
    y = n1 / (n1 + 2 * n2) if n1 + n2 else 0.5
    d1 = min(max(1 - 2 * y * n2 / n1, 0.0), 1.0) if n1 else y
    d2 = min(max(2 - 3 * y * n3 / n2, 0.0), 2.0) if n2 else d1
    d3 = min(max(3 - 4 * y * n4 / n3, 0.0), 3.0) if n3 else d2
    return torch.tensor([0.0, d1, d2, d3])


class NGramLM(CausalLM):
    counts_only = True  # trained by counting: no optimiser
    data_sized_buffers = ("grams", "last", "counts")  # sized by the data, not the config

    def __init__(self, config: NGramConfig) -> None:
        super().__init__()
        if config.order < 1:
            raise ValueError(f"n-gram order must be 1 or more, got {config.order}")
        check_vocab(config, "vocab_size")
        if config.vocab_size ** (config.order - 1) >= KEY_LIMIT:
            raise ValueError(
                f"order {config.order} over {config.vocab_size} tokens does not fit a 64-bit key; lower the order or the vocabulary"
            )
        self.config = config
        # one key an n-gram while V^N fits in 63 bits; else the key of its context and its last token
        self.split_keys = config.vocab_size ** config.order >= KEY_LIMIT
        # What is stored: the highest-order n-grams (sorted) and how often each was seen.
        # Everything else (lower orders, context totals, discounts) follows from them.
        self.register_buffer("grams", torch.zeros(0, dtype=torch.long))
        if self.split_keys:
            self.register_buffer("last", torch.zeros(0, dtype=torch.int32))
        self.register_buffer("counts", torch.zeros(0, dtype=torch.int32 if self.split_keys else torch.long))
        self._pending: list[tuple[Tensor, Tensor]] = []
        self._tables: list[dict[str, Tensor]] | None = None

    # -- counting ---------------------------------------------------------------
    def _contexts(self, tokens: Tensor, history: Tensor | None = None) -> Tensor:
        """(B, T) -> (B, T, order-1): the context before each position's target, the tokens
        before the chunk taken from ``history`` (B, <= order-1), BOS where there are none."""
        k = self.config.order - 1
        if k == 0:
            return tokens.new_zeros(*tokens.shape, 0).cpu()
        start = torch.full((tokens.size(0), k), self.config.bos_id, dtype=torch.long)
        if history is not None and history.size(1):
            start = torch.cat([start, history.cpu().long()], 1)[:, -k:]
        padded = torch.cat([start, tokens.cpu()], 1)
        return padded.unfold(1, k, 1)[:, 1 : tokens.size(1) + 1]

    def _history(self, tokens: Tensor, history: Tensor | None) -> Tensor:
        """The last order-1 tokens read, for the next chunk of a stream: (B, <= order-1)."""
        k = self.config.order - 1
        seen = tokens.cpu() if history is None else torch.cat([history.cpu(), tokens.cpu()], 1)
        return seen[:, seen.size(1) - min(k, seen.size(1)) :]

    def _key(self, ctx: Tensor) -> Tensor:
        """(..., n) context tokens, oldest first -> their int64 key (..., )."""
        key = torch.zeros(ctx.shape[:-1], dtype=torch.long)
        for i in range(ctx.size(-1)):
            key = key * self.config.vocab_size + ctx[..., i]
        return key

    @torch.no_grad()
    def observe(self, tokens: Tensor, targets: Tensor, history: Tensor | None = None) -> Tensor:
        """Count the n-grams of a batch: tokens (B, T) = <s> + sentence, targets (B, T) = sentence + </s>,
        or a chunk of a stream after the tokens ``history`` returned for the chunk before it.
        Returns the history for the next chunk."""
        real = targets.cpu().ne(self.config.pad_id)
        self._pending.append((self._key(self._contexts(tokens, history))[real], targets.cpu()[real]))
        self._tables = None
        return self._history(tokens, history)

    @torch.no_grad()
    def _finalize(self) -> None:
        """Merge the pending observations into the stored counts."""
        if not self._pending:
            return
        ctx, last = (torch.cat(x) for x in zip(*self._pending))
        self._pending = []
        v = self.config.vocab_size
        if not self.split_keys:
            fresh = ctx * v + last
            keys, inverse = torch.unique(torch.cat([self.grams, fresh]), return_inverse=True)
            counts = torch.zeros(keys.numel(), dtype=torch.long).index_add_(
                0, inverse, torch.cat([self.counts, torch.ones(fresh.numel(), dtype=torch.long)])
            )
            self.grams, self.counts = keys, counts
        else:  # (context, last token) pairs, sorted by both: rank the contexts, then one key per pair
            ctx = torch.cat([self.grams, ctx])
            last = torch.cat([self.last.long(), last])
            contexts, rank = torch.unique(ctx, return_inverse=True)
            keys, inverse = torch.unique(rank * v + last, return_inverse=True)
            counts = torch.zeros(keys.numel(), dtype=torch.int32).index_add_(
                0, inverse, torch.cat([self.counts, torch.ones(ctx.numel() - self.counts.numel(), dtype=torch.int32)])
            )
            self.grams, self.last, self.counts = contexts[keys // v], (keys % v).to(torch.int32), counts
        self._tables = None

    def _discounts(self, table: dict[str, Tensor], counts: Tensor) -> None:
        if self.config.modified:
            table["discounts"] = modified_discounts(counts)
        else:
            n1, n2 = (counts == 1).sum().item(), (counts == 2).sum().item()
            table["discount"] = torch.tensor(n1 / (n1 + 2 * n2) if n1 + n2 else 0.5)

    def _context_tables(self, table: dict[str, Tensor], ctx: Tensor, counts: Tensor) -> Tensor:
        """Context keys, totals, types (modified: discounted mass) of an order; returns each n-gram's context index."""
        contexts, ctx_inv = torch.unique(ctx, return_inverse=True)
        table["ctx_keys"] = contexts
        table["ctx_total"] = torch.zeros(contexts.numel()).index_add_(0, ctx_inv, counts)
        if self.config.modified:
            table["ctx_mass"] = torch.zeros(contexts.numel()).index_add_(0, ctx_inv, self._discount(table, counts))
        else:
            table["ctx_types"] = torch.zeros(contexts.numel()).index_add_(0, ctx_inv, torch.ones(counts.numel()))
        return ctx_inv

    @staticmethod
    def _discount(table: dict[str, Tensor], counts: Tensor) -> Tensor:
        """Modified KN: the discount of each count (0 for 0, D1, D2, D3+ for 3 and more)."""
        return table["discounts"][counts.clamp(max=3).long()]

    @torch.no_grad()
    def tables(self) -> list[dict[str, Tensor]]:
        """Per order n = 1..N: sorted keys and (continuation) counts, context totals and types, discount(s)."""
        self._finalize()
        if self._tables is not None:
            return self._tables
        v, tables = self.config.vocab_size, []
        keys, counts = self.grams, self.counts.float()
        for n in range(self.config.order, 0, -1):
            table: dict[str, Tensor] = {"counts": counts}
            self._discounts(table, counts)
            if n == self.config.order and self.split_keys:
                # keys: the context's index among the sorted contexts, then the last token
                ctx_inv = self._context_tables(table, keys, counts)
                table["keys"], table["ranked"] = ctx_inv * v + self.last.long(), torch.tensor(True)
                suffix = (keys % v ** (n - 2)) * v + self.last.long()
            else:
                table["keys"] = keys
                if n > 1:
                    self._context_tables(table, keys // v, counts)
                    suffix = keys % v ** (n - 1)
            if n > 1:
                # the next order down counts continuations: distinct left extensions of each suffix
                keys, suffix_inv = torch.unique(suffix, return_inverse=True)
                counts = torch.zeros(keys.numel()).index_add_(0, suffix_inv, torch.ones(suffix_inv.numel()))
            tables.append(table)
        self._tables = tables[::-1]
        return self._tables

    def _save_to_state_dict(self, destination: Any, prefix: str, keep_vars: bool) -> None:
        self._finalize()  # counts still pending from the training loop go into the tables first
        super()._save_to_state_dict(destination, prefix, keep_vars)

    def _load_from_state_dict(self, state_dict: Any, prefix: str, *args: Any) -> None:
        for name in self.data_sized_buffers:  # the tables are as large as the data made them
            if prefix + name in state_dict and hasattr(self, name):
                setattr(self, name, torch.empty_like(state_dict[prefix + name]))
        self._pending, self._tables = [], None
        super()._load_from_state_dict(state_dict, prefix, *args)

    @staticmethod
    def _lookup(sorted_keys: Tensor, values: Tensor, query: Tensor) -> Tensor:
        """values[i] where sorted_keys[i] == query, else 0."""
        if sorted_keys.numel() == 0:
            return torch.zeros(query.shape, dtype=values.dtype)
        pos = torch.searchsorted(sorted_keys, query).clamp(max=sorted_keys.numel() - 1)
        return torch.where(sorted_keys[pos] == query, values[pos], torch.zeros((), dtype=values.dtype))

    # -- probabilities ----------------------------------------------------------
    @torch.no_grad()
    def log_prob(self, context: Tensor, target: Tensor) -> Tensor:
        """log P(target | context): context (M, order-1) token ids (BOS-padded), target (M,) -> (M,)."""
        tables = self.tables()
        v, modified = self.config.vocab_size, self.config.modified
        context, target = context.cpu(), target.cpu()
        uni = tables[0]
        total, seen = uni["counts"].sum().clamp(min=1.0), float(uni["keys"].numel())
        cont = self._lookup(uni["keys"], uni["counts"], target)
        # unigrams interpolate with the uniform distribution (all of it when nothing was seen)
        if modified:
            mass = self._discount(uni, uni["counts"]).sum()
            p = (cont - self._discount(uni, cont)).clamp(min=0) / total + (mass / total if seen else 1.0) / v
        else:
            d1 = uni["discount"]
            p = (cont - d1).clamp(min=0) / total + (d1 * seen / total if seen else 1.0) / v
        for n in range(2, self.config.order + 1):
            t = tables[n - 1]
            h = torch.zeros_like(target)
            for i in range(n - 1):  # the last n-1 context tokens
                h = h * v + context[:, context.size(1) - (n - 1) + i]
            ctx_total = self._lookup(t["ctx_keys"], t["ctx_total"], h)
            if "ranked" in t:  # the n-gram's key: its context's index, then the token
                query = torch.searchsorted(t["ctx_keys"], h) * v + target
            else:
                query = h * v + target
            c = self._lookup(t["keys"], t["counts"], query)
            safe = ctx_total.clamp(min=1.0)
            if modified:
                ctx_mass = self._lookup(t["ctx_keys"], t["ctx_mass"], h)
                interpolated = (c - self._discount(t, c)).clamp(min=0) / safe + ctx_mass / safe * p
            else:
                ctx_types = self._lookup(t["ctx_keys"], t["ctx_types"], h)
                interpolated = (c - t["discount"]).clamp(min=0) / safe + t["discount"] * ctx_types / safe * p
            p = torch.where(ctx_total > 0, interpolated, p)  # a context never seen backs off entirely
        return p.log()

    def score(self, tokens: Tensor, targets: Tensor) -> Tensor:
        """log P of each target (B, T) given the tokens before it."""
        return self.score_stream(tokens, targets)[0]

    def score_stream(self, tokens: Tensor, targets: Tensor, state: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """log P of each target (B, T) given the tokens before it, after the tokens ``state``
        (B, <= order-1) that the previous chunk of a stream returned; and the state for the next."""
        ctx = self._contexts(tokens, state)
        out = self.log_prob(ctx.reshape(targets.numel(), ctx.size(-1)), targets.reshape(-1).cpu()).view(targets.shape)
        return out.to(targets.device), self._history(tokens, state)

    def forward(self, tokens: Tensor) -> Tensor:
        """Log-probabilities over the vocabulary (B, T, V), for sampling and small checks."""
        ctx = self._contexts(tokens)  # (B, T, k)
        b, t, k = ctx.shape
        v = self.config.vocab_size
        flat = ctx.reshape(b * t, 1, k).expand(b * t, v, k).reshape(b * t * v, k)
        return self.log_prob(flat, torch.arange(v).repeat(b * t)).view(b, t, v).to(tokens.device)

    def init_state(self, batch_size: int, device: Any = None) -> dict[str, Any]:
        return {"history": torch.zeros(batch_size, 0, dtype=torch.long, device=device)}

    def step(self, tokens: Tensor, state: dict[str, Any]) -> Tensor:
        state["history"] = torch.cat([state["history"], tokens], 1)[:, -max(self.config.order, 1) :]
        return self(state["history"])[:, -1]  # (B, V)


@register_model(task="lm", config=NGramConfig, paper="Chen & Goodman 1998, interpolated Kneser-Ney")
def ngram(**kw: Any) -> NGramLM:
    """Interpolated Kneser-Ney n-gram language model (order 3 by default; ``modified``: three discounts an order)."""
    return NGramLM(make_config(NGramConfig, {}, kw))


register_pretrained(
    Pretrained(
        name="ngram.multi30k_en",
        hub_id="zoo-models/ngram.multi30k_en",
        sha256="45cd59ee32f9b4df819f496c9dd5b549d1b9b75dc20e9e3e35e068c283adb34f",
        params=0,  # counts, not parameters: 258,326 stored 4-grams
        metrics={"ppl": 49.08},
        recipe="configs/ngram.multi30k_en.yaml",
        data=MULTI30K_EN,
        license=ZOO_LICENSE,
        description="Order-4 interpolated Kneser-Ney LM of Multi30k English; test_2016_flickr perplexity 49.08",
    )
)

register_pretrained(
    Pretrained(
        name="ngram.jsb",
        hub_id="zoo-models/ngram.jsb",
        sha256="e0ffbe84c0ee35003e5b28a61a25e9919ae46c68cb13d3a685b5d4c12e174e4f",
        params=0,
        metrics={"val_nll": 1.0123, "test_nll": 1.0275},
        recipe="configs/ngram.jsb.yaml",
        data=JSB_CHORALES,
        license=MUSIC_LICENSE,
        description="order-5 Kneser-Ney model of JSB Chorales (S/A/T/B grid); the Music Transformer's reference, "
                    "validation NLL 1.0123 per token",
    )
)

register_pretrained(
    Pretrained(
        name="ngram.nottingham",
        hub_id="zoo-models/ngram.nottingham",
        sha256="b119494dcd7eacb23733fb649c17dea5335b16ef7fb7466a23ad5c76f611b54c",
        params=0,
        metrics={"val_nll": 1.0356, "test_nll": 1.102},
        recipe="configs/ngram.nottingham.yaml",
        data=NOTTINGHAM,
        license=MUSIC_LICENSE,
        description="order-5 Kneser-Ney model of Nottingham performance events; validation NLL 1.0356 per event",
    )
)

register_pretrained(
    Pretrained(
        name="ngram.ptb",
        hub_id="zoo-models/ngram.ptb",
        sha256="8305b83c4929cf97320f658e26f0ec8a69ec96c7e90cd3d7292d4eab891a071f",
        params=0,  # counts, not parameters: 857,998 stored 5-grams
        metrics={"val_ppl": 147.71, "ppl": 141.06},
        recipe="configs/ngram.ptb.yaml",
        data=PTB,
        license=PTB_LICENSE,
        description="Order-5 interpolated modified Kneser-Ney LM of Penn Treebank (words); test perplexity 141.06 "
                    "over 82,430 tokens (KN5, Mikolov et al. 2011: 141.2)",
    )
)
