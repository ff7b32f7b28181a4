"""The n-gram (Markov) language model with interpolated Kneser-Ney smoothing.

Chen and Goodman, "An Empirical Study of Smoothing Techniques for Language Modeling",
1998 (interpolated Kneser-Ney, one absolute discount per order, D = n1 / (n1 + 2 n2)).

    P_N(w | h) = max(c(h w) - D, 0) / c(h .) + D * N1+(h .) / c(h .) * P_{N-1}(w | h')

The highest order counts tokens; lower orders count continuations, N1+(. h' w): how many
distinct tokens precede h' w. Unigrams are interpolated with the uniform distribution,
so no token ever gets zero probability. A context never seen backs off entirely.

Counts work over any token ids (subwords, MIDI events, pixel intensities). They are
gathered in the training loop (``observe``) and kept as buffers, so they are stored in
model.safetensors like any weights; n-grams are packed into one int64 key each.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from zoo.models.base import CausalLM, check_vocab, make_config
from zoo.registry import (
    JSB_CHORALES, MULTI30K_EN, MUSIC_LICENSE, NOTTINGHAM, ZOO_LICENSE, Pretrained, register_model, register_pretrained,
)


@dataclass
class NGramConfig:
    vocab_size: int = 8000
    order: int = 3
    pad_id: int = 0
    bos_id: int = 2
    max_len: int = 100_000  # an n-gram model has no length limit; this only bounds sampling


class NGramLM(CausalLM):
    counts_only = True  # trained by counting: no optimiser
    data_sized_buffers = ("grams", "counts")  # sized by the data, not the config

    def __init__(self, config: NGramConfig) -> None:
        super().__init__()
        if config.order < 1:
            raise ValueError(f"n-gram order must be 1 or more, got {config.order}")
        check_vocab(config, "vocab_size")
        if config.vocab_size ** config.order >= 2**63:
            raise ValueError(
                f"order {config.order} over {config.vocab_size} tokens does not fit a 64-bit key; lower the order or the vocabulary"
            )
        self.config = config
        # What is stored: the highest-order n-grams (sorted keys) and how often each was seen.
        # Everything else (lower orders, context totals, discounts) follows from them.
        self.register_buffer("grams", torch.zeros(0, dtype=torch.long))
        self.register_buffer("counts", torch.zeros(0, dtype=torch.long))
        self._pending: list[Tensor] = []
        self._tables: list[dict[str, Tensor]] | None = None

    # -- counting ---------------------------------------------------------------
    def _grams(self, tokens: Tensor, targets: Tensor) -> Tensor:
        """Keys of the highest-order n-grams ending at each real target: (B, T) -> (M,)."""
        k, v, t = self.config.order - 1, self.config.vocab_size, targets.size(1)
        padded = torch.cat([tokens.new_full((tokens.size(0), k), self.config.bos_id), tokens], 1)  # BOS fills the start
        key = torch.zeros_like(targets)
        for i in range(k):  # context tokens, oldest first
            key = key * v + padded[:, i + 1 : i + 1 + t]
        key = key * v + targets
        return key[targets.ne(self.config.pad_id)]

    @torch.no_grad()
    def observe(self, tokens: Tensor, targets: Tensor) -> None:
        """Count the n-grams of a batch: tokens (B, T) = <s> + sentence, targets (B, T) = sentence + </s>."""
        self._pending.append(self._grams(tokens, targets).cpu())
        self._tables = None

    @torch.no_grad()
    def _finalize(self) -> None:
        """Merge the pending observations into the stored counts."""
        if not self._pending:
            return
        fresh = torch.cat(self._pending)
        self._pending = []
        keys, inverse = torch.unique(torch.cat([self.grams, fresh]), return_inverse=True)
        counts = torch.zeros(keys.numel(), dtype=torch.long).index_add_(
            0, inverse, torch.cat([self.counts, torch.ones(fresh.numel(), dtype=torch.long)])
        )
        self.grams, self.counts = keys, counts
        self._tables = None

    @torch.no_grad()
    def tables(self) -> list[dict[str, Tensor]]:
        """Per order n = 1..N: sorted keys and (continuation) counts, context totals and types, discount."""
        self._finalize()
        if self._tables is not None:
            return self._tables
        v, tables = self.config.vocab_size, []
        keys, counts = self.grams, self.counts.float()
        for n in range(self.config.order, 0, -1):
            n1, n2 = (counts == 1).sum().item(), (counts == 2).sum().item()
            table = {"keys": keys, "counts": counts, "discount": torch.tensor(n1 / (n1 + 2 * n2) if n1 + n2 else 0.5)}
            if n > 1:
                ctx, ctx_inv = torch.unique(keys // v, return_inverse=True)
                table["ctx_keys"] = ctx
                table["ctx_total"] = torch.zeros(ctx.numel()).index_add_(0, ctx_inv, counts)
                table["ctx_types"] = torch.zeros(ctx.numel()).index_add_(0, ctx_inv, torch.ones(keys.numel()))
                # the next order down counts continuations: distinct left extensions of each suffix
                keys, suffix_inv = torch.unique(keys % v ** (n - 1), return_inverse=True)
                counts = torch.zeros(keys.numel()).index_add_(0, suffix_inv, torch.ones(suffix_inv.numel()))
            tables.append(table)
        self._tables = tables[::-1]
        return self._tables

    def _save_to_state_dict(self, destination: Any, prefix: str, keep_vars: bool) -> None:
        self._finalize()  # counts still pending from the training loop go into the tables first
        super()._save_to_state_dict(destination, prefix, keep_vars)

    def _load_from_state_dict(self, state_dict: Any, prefix: str, *args: Any) -> None:
        for name in ("grams", "counts"):  # the tables are as large as the data made them
            if prefix + name in state_dict:
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
        v = self.config.vocab_size
        context, target = context.cpu(), target.cpu()
        uni = tables[0]
        d1, total, seen = uni["discount"], uni["counts"].sum().clamp(min=1.0), float(uni["keys"].numel())
        cont = self._lookup(uni["keys"], uni["counts"], target)
        # unigrams interpolate with the uniform distribution (all of it when nothing was seen)
        p = (cont - d1).clamp(min=0) / total + (d1 * seen / total if seen else 1.0) / v
        for n in range(2, self.config.order + 1):
            t = tables[n - 1]
            h = torch.zeros_like(target)
            for i in range(n - 1):  # the last n-1 context tokens
                h = h * v + context[:, context.size(1) - (n - 1) + i]
            ctx_total = self._lookup(t["ctx_keys"], t["ctx_total"], h)
            ctx_types = self._lookup(t["ctx_keys"], t["ctx_types"], h)
            c = self._lookup(t["keys"], t["counts"], h * v + target)
            safe = ctx_total.clamp(min=1.0)
            interpolated = (c - t["discount"]).clamp(min=0) / safe + t["discount"] * ctx_types / safe * p
            p = torch.where(ctx_total > 0, interpolated, p)  # a context never seen backs off entirely
        return p.log()

    def _contexts(self, tokens: Tensor) -> Tensor:
        """(B, T) -> (B, T, order-1): the BOS-padded context before each position's target."""
        k = self.config.order - 1
        padded = torch.cat([torch.full((tokens.size(0), k), self.config.bos_id, dtype=torch.long), tokens.cpu()], 1)
        return padded.unfold(1, k, 1)[:, 1 : tokens.size(1) + 1] if k > 0 else tokens.new_zeros(*tokens.shape, 0).cpu()

    def score(self, tokens: Tensor, targets: Tensor) -> Tensor:
        """log P of each target (B, T) given the tokens before it."""
        ctx = self._contexts(tokens)
        out = self.log_prob(ctx.reshape(targets.numel(), ctx.size(-1)), targets.reshape(-1).cpu()).view(targets.shape)
        return out.to(targets.device)

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
    """Interpolated Kneser-Ney n-gram language model (order 3 by default)."""
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
