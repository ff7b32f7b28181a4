"""The Transformer encoder-decoder.

Vaswani, Shazeer, Parmar, Uszkoreit, Jones, Gomez, Kaiser, Polosukhin.
"Attention Is All You Need", NeurIPS 2017.

Sinusoidal positions, multi-head attention (``zoo.nn.MultiHeadAttention``), a
position-wise feed-forward network, residual connections with LayerNorm after each
sub-layer (post-norm, as in the paper) or before it (pre-norm, an option that trains
deeper stacks more easily), embeddings scaled by sqrt(C) and optionally shared between
source, target and output projection (section 3.4).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from zoo.nn.dropout import Dropout
from zoo.models.base import EncoderDecoder, check_at_least, check_dropout, check_vocab, make_config
from zoo.nn.attention import KVCache, MultiHeadAttention
from zoo.nn.positional import SinusoidalPositions
from zoo.registry import MULTI30K_DE_EN, ZOO_LICENSE, Pretrained, register_model, register_pretrained


@dataclass
class TransformerConfig:
    src_vocab_size: int = 8000
    tgt_vocab_size: int = 8000
    d_model: int = 512
    n_heads: int = 8
    encoder_layers: int = 6
    decoder_layers: int = 6
    d_ff: int = 2048
    dropout: float = 0.1
    attention_dropout: float = 0.0
    max_len: int = 256
    pre_norm: bool = False
    share_embeddings: bool = True  # one table for source and target (needs a joint vocabulary)
    tie_output: bool = True  # output projection = target embedding
    pad_id: int = 0


class FeedForward(nn.Sequential):
    """FFN(x) = max(0, x W1 + b1) W2 + b2, (B, T, C) -> (B, T, C)."""

    def __init__(self, d_model: int, d_ff: int, dropout: float) -> None:
        super().__init__(nn.Linear(d_model, d_ff), nn.ReLU(), Dropout(dropout), nn.Linear(d_ff, d_model))


class Residual(nn.Module):
    """x + Dropout(f(x)) with LayerNorm after (post-norm) or before f (pre-norm)."""

    def __init__(self, d_model: int, dropout: float, pre_norm: bool) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(d_model)
        self.drop = Dropout(dropout)
        self.pre_norm = pre_norm

    def forward(self, x: Tensor, f: Any) -> tuple[Tensor, Any]:
        y, extra = f(self.norm(x) if self.pre_norm else x)
        x = x + self.drop(y)
        return (x if self.pre_norm else self.norm(x)), extra


class EncoderLayer(nn.Module):
    def __init__(self, cfg: TransformerConfig) -> None:
        super().__init__()
        self.self_attn = MultiHeadAttention(cfg.d_model, cfg.n_heads, cfg.attention_dropout)
        self.ffn = FeedForward(cfg.d_model, cfg.d_ff, cfg.dropout)
        self.res1 = Residual(cfg.d_model, cfg.dropout, cfg.pre_norm)
        self.res2 = Residual(cfg.d_model, cfg.dropout, cfg.pre_norm)

    def forward(self, x: Tensor, pad_mask: Tensor) -> Tensor:  # (B, S, C), (B, S)
        x, _ = self.res1(x, lambda h: self.self_attn(h, key_padding_mask=pad_mask))
        x, _ = self.res2(x, lambda h: (self.ffn(h), None))
        return x


class DecoderLayer(nn.Module):
    def __init__(self, cfg: TransformerConfig) -> None:
        super().__init__()
        self.self_attn = MultiHeadAttention(cfg.d_model, cfg.n_heads, cfg.attention_dropout)
        self.cross_attn = MultiHeadAttention(cfg.d_model, cfg.n_heads, cfg.attention_dropout)
        self.ffn = FeedForward(cfg.d_model, cfg.d_ff, cfg.dropout)
        self.res1 = Residual(cfg.d_model, cfg.dropout, cfg.pre_norm)
        self.res2 = Residual(cfg.d_model, cfg.dropout, cfg.pre_norm)
        self.res3 = Residual(cfg.d_model, cfg.dropout, cfg.pre_norm)

    def forward(
        self,
        x: Tensor,  # (B, T, C)
        memory: Tensor,  # (B, S, C)
        src_pad_mask: Tensor,  # (B, S)
        cache: dict[str, KVCache] | None = None,
        need_weights: bool = False,
    ) -> tuple[Tensor, Tensor | None]:
        cache = cache or {}
        x, _ = self.res1(x, lambda h: self.self_attn(h, causal=True, cache=cache.get("self")))
        x, w = self.res2(
            x,
            lambda h: self.cross_attn(
                h, memory, key_padding_mask=src_pad_mask, cache=cache.get("cross"), need_weights=need_weights
            ),
        )
        x, _ = self.res3(x, lambda h: (self.ffn(h), None))
        return x, w  # w: (B, H, T, S) cross-attention weights when asked for


def _check(c: TransformerConfig) -> None:
    check_vocab(c, "src_vocab_size", "tgt_vocab_size")
    check_at_least(c, "d_model", "n_heads", "encoder_layers", "decoder_layers", "d_ff", "max_len")
    if c.d_model % c.n_heads:
        raise ValueError(
            f"d_model={c.d_model} is not divisible by n_heads={c.n_heads}; each head takes d_model / n_heads "
            "channels, so pick n_heads among the divisors of d_model"
        )
    check_dropout(c, "dropout", "attention_dropout")
    if c.share_embeddings and c.src_vocab_size != c.tgt_vocab_size:
        raise ValueError("share_embeddings needs src_vocab_size == tgt_vocab_size (a joint vocabulary)")


class Transformer(EncoderDecoder):
    has_attention = True

    def __init__(self, config: TransformerConfig) -> None:
        super().__init__()
        _check(config)
        self.config = c = config
        self.src_embed = nn.Embedding(c.src_vocab_size, c.d_model, padding_idx=c.pad_id)
        self.tgt_embed = self.src_embed if c.share_embeddings else nn.Embedding(c.tgt_vocab_size, c.d_model, padding_idx=c.pad_id)
        self.positions = SinusoidalPositions(c.d_model, c.max_len)
        self.drop = Dropout(c.dropout)
        self.encoder = nn.ModuleList(EncoderLayer(c) for _ in range(c.encoder_layers))
        self.decoder = nn.ModuleList(DecoderLayer(c) for _ in range(c.decoder_layers))
        # pre-norm leaves the last residual stream unnormalised: one LayerNorm closes each stack
        self.enc_norm = nn.LayerNorm(c.d_model) if c.pre_norm else nn.Identity()
        self.dec_norm = nn.LayerNorm(c.d_model) if c.pre_norm else nn.Identity()
        self.out_proj = nn.Linear(c.d_model, c.tgt_vocab_size, bias=False)
        self.reset_parameters()
        if c.tie_output:
            self.out_proj.weight = self.tgt_embed.weight

    def reset_parameters(self) -> None:
        for name, p in self.named_parameters():
            if p.dim() > 1 and "embed" not in name:
                nn.init.xavier_uniform_(p)
            elif name.endswith("bias"):
                nn.init.zeros_(p)
        for emb in {self.src_embed, self.tgt_embed}:
            nn.init.normal_(emb.weight, std=self.config.d_model**-0.5)
            with torch.no_grad():
                emb.weight[self.config.pad_id].zero_()

    def _embed(self, emb: nn.Embedding, tokens: Tensor, offset: int = 0) -> Tensor:
        x = emb(tokens) * math.sqrt(self.config.d_model) + self.positions(tokens.size(1), offset)
        return self.drop(x)  # (B, T, C)

    def encode(self, src: Tensor) -> dict[str, Tensor]:
        """src (B, S) -> memory (B, S, C) and its padding mask (B, S)."""
        pad_mask = src.eq(self.config.pad_id)
        x = self._embed(self.src_embed, src)
        for layer in self.encoder:
            x = layer(x, pad_mask)
        return {"memory": self.enc_norm(x), "src_pad_mask": pad_mask}

    def decode(
        self,
        tgt_in: Tensor,
        enc: dict[str, Tensor],
        state: dict[str, Any] | None = None,
        need_weights: bool = False,
    ) -> tuple[Tensor, list[Tensor | None]]:
        """tgt_in (B, T) -> logits (B, T, V) and each layer's cross-attention weights.

        With ``state`` (from :meth:`init_state`), ``tgt_in`` holds only the new tokens and
        earlier ones are read from the caches.
        """
        caches = state["layers"] if state is not None else [None] * len(self.decoder)
        offset = caches[0]["self"].length if state is not None else 0
        x = self._embed(self.tgt_embed, tgt_in, offset)
        weights = []
        for layer, cache in zip(self.decoder, caches):
            x, w = layer(x, enc["memory"], enc["src_pad_mask"], cache, need_weights)
            weights.append(w)
        return self.out_proj(self.dec_norm(x)), weights

    def forward(self, src: Tensor, tgt_in: Tensor) -> Tensor:
        """Teacher forcing: src (B, S), tgt_in (B, T) -> logits (B, T, V)."""
        return self.decode(tgt_in, self.encode(src))[0]

    def attention_maps(self, src: Tensor, tgt_in: Tensor) -> dict[str, Tensor]:
        """Cross-attention of every decoder layer, (B, H, T, S) each."""
        _, weights = self.decode(tgt_in, self.encode(src), need_weights=True)
        return {f"layer {i + 1}": w for i, w in enumerate(weights)}

    def init_state(self, enc: dict[str, Tensor]) -> dict[str, Any]:
        return {"layers": [{"self": KVCache(), "cross": KVCache(static=True)} for _ in self.decoder]}

    def decode_step(self, tokens: Tensor, enc: dict[str, Tensor], state: dict[str, Any]) -> Tensor:
        return self.decode(tokens, enc, state)[0][:, -1]  # (B, V)


# --- registered sizes --------------------------------------------------------------

_PAPER = "Vaswani et al. 2017, Attention Is All You Need"


@register_model(task="translation", config=TransformerConfig, paper=_PAPER)
def transformer_tiny(**kw: Any) -> Transformer:
    """2+2 layers, C=64: for tests and smoke runs."""
    defaults = dict(d_model=64, n_heads=4, encoder_layers=2, decoder_layers=2, d_ff=128, max_len=128)
    return Transformer(make_config(TransformerConfig, defaults, kw))


@register_model(task="translation", config=TransformerConfig, paper=_PAPER)
def transformer_small(**kw: Any) -> Transformer:
    """3+3 layers, C=256, 4 heads, FFN 1024: the size of the Multi30k checkpoint."""
    defaults = dict(d_model=256, n_heads=4, encoder_layers=3, decoder_layers=3, d_ff=1024, dropout=0.2)
    return Transformer(make_config(TransformerConfig, defaults, kw))


@register_model(task="translation", config=TransformerConfig, paper=_PAPER)
def transformer_base(**kw: Any) -> Transformer:
    """The paper's base model: 6+6 layers, C=512, 8 heads, FFN 2048."""
    return Transformer(make_config(TransformerConfig, {}, kw))


register_pretrained(
    Pretrained(
        name="transformer_small.multi30k",
        hub_id="zoo-models/transformer_small.multi30k",
        sha256="7506ea9b8e4c6a64c479d88618b22520658d7b73d4fd9cdf2da484673c9996c5",
        params=7_577_600,
        metrics={"sacrebleu/greedy": 39.18, "bleu_lc/greedy": 39.41, "sacrebleu/beam4": 39.43, "bleu_lc/beam4": 39.66,
                 "ppl": 5.94},
        recipe="configs/transformer_small.multi30k.yaml",
        data=MULTI30K_DE_EN,
        license=ZOO_LICENSE,
        description="3+3-layer Transformer, C=256; test_2016_flickr sacreBLEU 39.18 greedy / 39.43 beam 4",
    )
)
