"""The Music Transformer: a decoder-only Transformer over MIDI events with relative attention.

Huang, Vaswani, Uszkoreit, Shazeer, Simon, Hawthorne, Dai, Hoffman, Dinculescu, Eck.
"Music Transformer: Generating Music with Long-Term Structure", ICLR 2019 (arXiv 2018).

Each layer's self-attention adds learned relative-position logits (Shaw et al. 2018,
computed with the paper's memory-linear skewing: ``zoo.nn.relative.RelativeSelfAttention``),
globally over the whole sequence or locally in blocks. With ``attention="absolute"`` the
same network uses sinusoidal absolute positions and plain causal attention instead: the
paper's Transformer baseline, so the comparison is one switch in a config.

With ``relative_pitch`` (chorale ids), each score also depends on the interval between the
two positions' pitches, the paper's "relative pitch" for JSB Chorales (positions are
already time steps on that grid, so relative time is the relative position).

Pre-norm residual layers (LayerNorm before each sub-layer, one after the stack), tied
input and output embeddings. Relative attention has no position table, so it can
generate past the length it was trained on; the absolute baseline stops at ``max_len``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from zoo.models.base import CausalLM, check_at_least, check_dropout, check_vocab, make_config
from zoo.models.transformer import FeedForward
from zoo.nn.attention import KVCache, MultiHeadAttention
from zoo.nn.dropout import Dropout
from zoo.nn.positional import SinusoidalPositions
from zoo.nn.relative import RelativeSelfAttention
from zoo.registry import JSB_CHORALES, MUSIC_LICENSE, NOTTINGHAM, Pretrained, register_model, register_pretrained

ATTENTION = ("relative", "absolute")


@dataclass
class MusicTransformerConfig:
    vocab_size: int = 391
    pad_id: int = 0
    d_model: int = 256
    n_heads: int = 8
    layers: int = 6
    d_ff: int = 1024
    dropout: float = 0.1
    attention_dropout: float = 0.0
    attention: str = "relative"  # relative | absolute (the baseline: sinusoidal positions)
    max_relative_distance: int = 1024  # distances with an embedding of their own; farther ones share the last
    share_relative_heads: bool = False  # one table of distance embeddings for all heads
    block_len: int = 0  # 0: global attention; else relative local attention in blocks of this length
    relative_pitch: int = 0  # > 0: relative pitch as well, intervals up to this many semitones (chorale ids)
    pitch_offset: int = 4  # relative pitch: id pitch_offset + p is MIDI pitch p; lower ids are no pitch
    max_len: int = 4096  # absolute: the position table; relative: only bounds sampling


class MusicLayer(nn.Module):
    """x + Attn(LN(x)), then x + FFN(LN(x))."""

    def __init__(self, c: MusicTransformerConfig) -> None:
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(c.d_model), nn.LayerNorm(c.d_model)
        if c.attention == "relative":
            self.attn: nn.Module = RelativeSelfAttention(
                c.d_model, c.n_heads, c.max_relative_distance, c.attention_dropout,
                share_heads=c.share_relative_heads, block_len=c.block_len, relative_pitch=c.relative_pitch,
            )
        else:
            self.attn = MultiHeadAttention(c.d_model, c.n_heads, c.attention_dropout)
        self.relative = c.attention == "relative"
        self.ffn = FeedForward(c.d_model, c.d_ff, c.dropout)
        self.drop = Dropout(c.dropout)

    def forward(self, x: Tensor, cache: KVCache | None = None, pitches: Tensor | None = None) -> Tensor:
        h = self.norm1(x)
        if self.relative:
            h = self.attn(h, cache=cache, pitches=pitches)
        else:
            h = self.attn(h, causal=True, cache=cache)[0]
        x = x + self.drop(h)
        return x + self.drop(self.ffn(self.norm2(x)))


def _check(c: MusicTransformerConfig) -> None:
    check_vocab(c, "vocab_size")
    check_at_least(c, "d_model", "n_heads", "layers", "d_ff", "max_len")
    if c.attention not in ATTENTION:
        raise ValueError(f"attention must be one of {', '.join(ATTENTION)}, got {c.attention!r}")
    if c.max_relative_distance < 1:
        raise ValueError(
            f"max_relative_distance must be at least 1 (the farthest distance with an embedding of its own), "
            f"got {c.max_relative_distance}"
        )
    if c.block_len < 0:
        raise ValueError(f"block_len must be 0 (global attention) or a positive block length, got {c.block_len}")
    if c.block_len and c.attention != "relative":
        raise ValueError("block_len (local attention) needs attention='relative'; set block_len: 0 for the baseline")
    if c.relative_pitch < 0 or (c.relative_pitch and (c.attention != "relative" or c.block_len)):
        raise ValueError(
            f"relative_pitch must be 0 (none) or a positive interval in semitones, with global relative attention "
            f"(attention='relative', block_len 0); got relative_pitch={c.relative_pitch}"
        )
    if c.relative_pitch and c.vocab_size > c.pitch_offset + 128:
        raise ValueError(
            f"relative_pitch reads ids {c.pitch_offset}.. as MIDI pitches 0..127, but the vocabulary has {c.vocab_size} "
            f"ids; it is for the chorale vocabulary (132 ids), not performance events"
        )
    check_dropout(c, "dropout", "attention_dropout")


class MusicTransformer(CausalLM):
    def __init__(self, config: MusicTransformerConfig) -> None:
        super().__init__()
        _check(config)
        self.config = c = config
        self.embed = nn.Embedding(c.vocab_size, c.d_model, padding_idx=c.pad_id)
        self.positions = SinusoidalPositions(c.d_model, c.max_len) if c.attention == "absolute" else None
        self.drop = Dropout(c.dropout)
        self.layers = nn.ModuleList(MusicLayer(c) for _ in range(c.layers))
        self.norm = nn.LayerNorm(c.d_model)
        self.out = nn.Linear(c.d_model, c.vocab_size, bias=False)
        self.reset_parameters()
        self.out.weight = self.embed.weight

    def reset_parameters(self) -> None:
        for name, p in self.named_parameters():
            if p.dim() > 1 and "embed" not in name and "rel_emb" not in name and "pitch_emb" not in name:
                nn.init.xavier_uniform_(p)
            elif name.endswith("bias"):
                nn.init.zeros_(p)
        nn.init.normal_(self.embed.weight, std=self.config.d_model**-0.5)
        with torch.no_grad():
            self.embed.weight[self.config.pad_id].zero_()

    def _embed(self, tokens: Tensor, offset: int, positions: Tensor | None = None) -> Tensor:
        x = self.embed(tokens) * math.sqrt(self.config.d_model)
        if self.positions is not None and positions is not None:  # each row from its own first position
            x = x + self.positions.at(positions[:, None] + torch.arange(tokens.size(1), device=tokens.device))
        elif self.positions is not None:
            x = x + self.positions(tokens.size(1), offset)
        return self.drop(x)

    def pitches(self, tokens: Tensor) -> Tensor:
        """Token ids -> MIDI pitches for relative pitch (-1 for ids that are no pitch)."""
        p = tokens - self.config.pitch_offset
        return torch.where(p >= 0, p, -1)

    def forward(self, tokens: Tensor, state: dict[str, Any] | None = None, positions: Tensor | None = None) -> Tensor:
        """tokens (B, T) -> logits (B, T, V); with ``state`` (:meth:`init_state`) tokens are the new ones only.

        ``positions`` (B,): where each row starts in its piece (training crops), so that absolute
        positions are the piece's; relative attention depends on distances only and ignores it."""
        caches = state["layers"] if state is not None else [None] * len(self.layers)
        offset = caches[0].length if state is not None else 0
        pitches = None
        if self.config.relative_pitch:
            pitches = self.pitches(tokens)
            if state is not None:  # every position so far: the cached ones, then the new
                pitches = state["pitches"] = torch.cat([state["pitches"], pitches], dim=1)
        x = self._embed(tokens, offset, positions)
        for layer, cache in zip(self.layers, caches):
            x = layer(x, cache, pitches)
        return self.out(self.norm(x))

    def init_state(self, batch_size: int, device: Any = None) -> dict[str, Any]:
        state: dict[str, Any] = {"layers": [KVCache() for _ in self.layers]}
        if self.config.relative_pitch:
            state["pitches"] = torch.empty(batch_size, 0, dtype=torch.long, device=device)
        return state

    def step(self, tokens: Tensor, state: dict[str, Any]) -> Tensor:
        return self(tokens, state)[:, -1]


# --- registered sizes --------------------------------------------------------------

_PAPER = "Huang et al. 2018, Music Transformer"


@register_model(task="lm", config=MusicTransformerConfig, paper=_PAPER)
def music_transformer_tiny(**kw: Any) -> MusicTransformer:
    """2 layers, C=64, 4 heads: for tests and smoke runs."""
    defaults = dict(d_model=64, n_heads=4, layers=2, d_ff=128, max_relative_distance=64, max_len=1024)
    return MusicTransformer(make_config(MusicTransformerConfig, defaults, kw))


@register_model(task="lm", config=MusicTransformerConfig, paper=_PAPER)
def music_transformer_small(**kw: Any) -> MusicTransformer:
    """4 layers, C=256, 8 heads, FFN 1024, relative attention over 1024 distances."""
    defaults = dict(layers=4)
    return MusicTransformer(make_config(MusicTransformerConfig, defaults, kw))


@register_model(task="lm", config=MusicTransformerConfig, paper=_PAPER)
def music_transformer_base(**kw: Any) -> MusicTransformer:
    """The paper's Piano-e-Competition size: 6 layers, C=512, 8 heads, FFN 2048 (relative, 2048 distances)."""
    defaults = dict(d_model=512, d_ff=2048, max_relative_distance=2048)
    return MusicTransformer(make_config(MusicTransformerConfig, defaults, kw))


register_pretrained(
    Pretrained(
        name="music_transformer_small.jsb_absolute",
        hub_id="zoo-models/music_transformer_small.jsb_absolute",
        sha256="1d534447fd14e6f0f7a0674257bbb3485c69912f54b38f16a3e39e589313647a",
        params=3_193_344,
        metrics={"val_nll": 0.508, "test_nll": 0.5144},
        recipe="configs/music_transformer_small.jsb_absolute.stage2.yaml",
        data=JSB_CHORALES,
        license=MUSIC_LICENSE,
        description="the paper's absolute-position Transformer baseline on JSB Chorales, trained with the "
                    "relative model's two stages and budget; validation NLL 0.5080 per token (0.4605 within "
                    "its 1,024-token training windows)",
    )
)

register_pretrained(
    Pretrained(
        name="music_transformer_small.jsb",
        hub_id="zoo-models/music_transformer_small.jsb",
        sha256="1f51bb44c49f410b68bfbf010172ebf81bab8db4d038bec15f4054d8cc2c1670",
        params=4_241_920,
        metrics={"val_nll": 0.3878, "test_nll": 0.399},
        recipe="configs/music_transformer_small.jsb.stage2.yaml",
        data=JSB_CHORALES,
        license=MUSIC_LICENSE,
        description="Music Transformer (global relative attention) on JSB Chorales in the paper's S/A/T/B "
                    "serialisation; validation NLL 0.3878 per token (absolute baseline 0.5080, 5-gram 1.0123)",
    )
)

register_pretrained(
    Pretrained(
        name="music_transformer_small.nottingham",
        hub_id="zoo-models/music_transformer_small.nottingham",
        sha256="e58a1013cd394bbfe9741904862eab73103c28c80b91ea07ab7dc50f2a105ac1",
        params=4_308_224,
        metrics={"val_nll": 0.8019, "test_nll": 0.8522},
        recipe="configs/music_transformer_small.nottingham.yaml",
        data=NOTTINGHAM,
        license=MUSIC_LICENSE,
        description="Music Transformer (global relative attention) on Nottingham performance events; "
                    "validation NLL 0.8019 per event (5-gram 1.0356)",
    )
)
