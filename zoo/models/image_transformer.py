"""The Image Transformer.

Parmar, Vaswani, Uszkoreit, Kaiser, Shazeer, Ku, Tran. "Image Transformer", ICML 2018.

An image is a sequence of sub-pixel intensities in raster order, channels interleaved
(``zoo.data.pixels``); the network predicts each intensity from the earlier ones with a
stack of self-attention layers whose attention is *local* (``zoo.nn.local``):

* ``attention="local_1d"``: blocks of ``block_len`` positions, each seeing itself and
  ``memory_blocks`` blocks before it;
* ``attention="local_2d"``: query blocks of ``query_height x query_width`` pixels, each
  seeing the memory region ``mem_above`` rows above and ``mem_side`` columns either side;
* ``attention="full"``: causal attention over the whole image (``MultiHeadAttention``),
  the quadratic reference.

Inputs. Token ``t`` of the input is the intensity of position ``t - 1`` (the start token
``bos_id`` at ``t = 0``); it is embedded as the intensity's vector, scaled by sqrt(C),
plus the position's *row*, *column* and *channel* encodings of the position ``t`` being
predicted, so the network always knows which sub-pixel it is asked for. The paper keeps
separate row and column encodings; here they are either ``positions="learned"`` (three
tables, summed: the default, and what the checkpoints use) or ``"sinusoidal"`` (the
paper's choice: sines of the row in the first half of the channels and of the column in
the second half, concatenated; a learned channel table is added for colour images, as
sines over three values say little). With ``num_classes > 0`` a learned class vector is
added at every position (class-conditional generation, section 5.1).

Super-resolution (``src_height, src_width > 0``): a small encoder of full self-attention
(``zoo.models.transformer.EncoderLayer``) reads the low-resolution image's tokens, with
their own row/column/channel encodings; every decoder layer adds cross-attention to it.

Layers are pre-norm by default (LayerNorm before each sub-layer, one at the end), which
trains stably without a long warm-up; ``pre_norm=False`` gives the paper's post-norm.

Outputs. The distribution is over the ``levels`` intensities only (the start and padding
tokens are inputs, never predicted), so the log-likelihood, and bits per dimension
(``nll / ln 2`` per sub-pixel), are those of a distribution over intensities. It is either
``output="softmax"``, one logit per intensity (the paper's categorical output, and the
default), or ``output="dmol"``, a discretized mixture of ``mixtures`` logistics
(``zoo.nn.logistic``; the paper's other output, from PixelCNN++), which shares probability
between neighbouring intensities. Both give the network's ``forward`` and ``step`` as
(log-)scores over the intensities, so sampling and scoring read them the same way.

Incremental generation: ``init_state(batch_size, labels=..., src=...)`` then
``step(tokens (B, 1), state) -> logits (B, levels)``, one position at a time, with each
layer's keys and values cached (a preallocated ``LocalKVCache`` for local attention,
a growing ``KVCache`` for full attention).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from zoo.models.base import check_at_least, check_dropout, check_vocab, make_config
from zoo.models.transformer import EncoderLayer, FeedForward, Residual
from zoo.nn import logistic
from zoo.nn.attention import KVCache, MultiHeadAttention
from zoo.nn.dropout import Dropout
from zoo.nn.local import Local1DPattern, Local2DPattern, LocalPattern, LocalSelfAttention
from zoo.nn.positional import SinusoidalPositions
from zoo.registry import Pretrained, register_model, register_pretrained

ATTENTION = ("local_1d", "local_2d", "full")
POSITIONS = ("learned", "sinusoidal")
OUTPUTS = ("softmax", "dmol")


@dataclass
class ImageTransformerConfig:
    levels: int = 256  # intensities per sub-pixel: the classes of the output softmax
    vocab_size: int = 258  # input tokens: levels + start + padding
    pad_id: int = 257
    bos_id: int = 256
    height: int = 28
    width: int = 28
    channels: int = 1
    num_classes: int = 0  # > 0: class-conditional (a class vector added at every position)
    src_height: int = 0  # > 0 (with src_width): super-resolution from a src_height x src_width image
    src_width: int = 0
    d_model: int = 256
    n_heads: int = 4
    layers: int = 4
    encoder_layers: int = 2  # super-resolution only
    d_ff: int = 1024
    dropout: float = 0.1
    attention_dropout: float = 0.0
    attention: str = "local_2d"  # local_1d | local_2d | full
    block_len: int = 64  # local_1d: positions per query block
    memory_blocks: int = 1  # local_1d: blocks of memory before each query block
    query_height: int = 4  # local_2d: query block, in pixels
    query_width: int = 4
    mem_above: int = 4  # local_2d: memory rows above the query block
    mem_side: int = 4  # local_2d: memory columns left and right of it
    positions: str = "learned"  # learned | sinusoidal
    pre_norm: bool = True
    output: str = "softmax"  # softmax (one logit per level) | dmol (discretized mixture of logistics)
    mixtures: int = 10  # dmol: logistic components


def _check(c: ImageTransformerConfig) -> None:
    if c.attention not in ATTENTION:
        raise ValueError(f"unknown attention {c.attention!r}; choose one of {', '.join(ATTENTION)}")
    if c.positions not in POSITIONS:
        raise ValueError(f"unknown positions {c.positions!r}; choose one of {', '.join(POSITIONS)}")
    if c.output not in OUTPUTS:
        raise ValueError(f"unknown output {c.output!r}; choose one of {', '.join(OUTPUTS)}")
    check_at_least(c, "mixtures")
    check_at_least(c, "levels", minimum=2)
    check_vocab(c, "vocab_size")
    if c.vocab_size < c.levels + 1 or not (c.levels <= c.bos_id < c.vocab_size) or c.bos_id == c.pad_id:
        raise ValueError(
            f"the vocabulary must hold the {c.levels} intensities 0..{c.levels - 1} and then the start token: "
            f"got vocab_size={c.vocab_size}, bos_id={c.bos_id}, pad_id={c.pad_id}; use the PixelTokenizer's "
            f"(vocab_size={c.levels + 2}, bos_id={c.levels}, pad_id={c.levels + 1})"
        )
    check_at_least(c, "height", "width", "channels", "d_model", "n_heads", "layers", "d_ff")
    check_at_least(c, "num_classes", "src_height", "src_width", "encoder_layers", minimum=0)
    if (c.src_height > 0) != (c.src_width > 0):
        raise ValueError(
            f"super-resolution needs both src_height and src_width (got {c.src_height} and {c.src_width}); "
            "give both, or neither for a model without a low-resolution input"
        )
    if c.src_height > 0 and c.encoder_layers < 1:
        raise ValueError("super-resolution needs encoder_layers >= 1 to read the low-resolution image")
    if c.d_model % c.n_heads:
        raise ValueError(
            f"d_model={c.d_model} is not divisible by n_heads={c.n_heads}; each head takes d_model / n_heads "
            "channels, so pick n_heads among the divisors of d_model"
        )
    check_dropout(c, "dropout", "attention_dropout")


class ImagePositions(nn.Module):
    """Row, column and channel encodings of every position of an H x W x C raster sequence -> (T, C_model)."""

    def __init__(self, height: int, width: int, channels: int, d_model: int, kind: str) -> None:
        super().__init__()
        t = torch.arange(height * width * channels)
        coords = torch.stack([t // channels // width, t // channels % width, t % channels], dim=1)  # (T, 3)
        self.register_buffer("coords", coords, persistent=False)
        self.kind = kind
        if kind == "learned":
            self.row = nn.Embedding(height, d_model)
            self.col = nn.Embedding(width, d_model)
            self.chan = nn.Embedding(channels, d_model)
            for emb in (self.row, self.col, self.chan):
                nn.init.normal_(emb.weight, std=0.5)
        else:
            half = d_model // 2
            self.row_sin = SinusoidalPositions(half, height)
            self.col_sin = SinusoidalPositions(d_model - half, width)
            self.chan = nn.Embedding(channels, d_model) if channels > 1 else None
            if self.chan is not None:
                nn.init.normal_(self.chan.weight, std=0.5)

    def forward(self, length: int, offset: int = 0) -> Tensor:
        """Encodings of positions ``offset .. offset+length-1``, (length, C)."""
        r, c, ch = self.coords[offset : offset + length].unbind(1)
        if self.kind == "learned":
            return self.row(r) + self.col(c) + self.chan(ch)
        out = torch.cat([self.row_sin.pe[r], self.col_sin.pe[c]], dim=-1)
        return out + self.chan(ch) if self.chan is not None else out


class ImageDecoderLayer(nn.Module):
    """Masked (local or full) self-attention, cross-attention to the low-resolution image if any, FFN."""

    def __init__(self, c: ImageTransformerConfig, pattern: LocalPattern | None) -> None:
        super().__init__()
        if pattern is None:
            self.self_attn: nn.Module = MultiHeadAttention(c.d_model, c.n_heads, c.attention_dropout)
        else:
            self.self_attn = LocalSelfAttention(c.d_model, c.n_heads, pattern, c.attention_dropout)
        self.local = pattern is not None
        self.cross_attn = MultiHeadAttention(c.d_model, c.n_heads, c.attention_dropout) if c.src_height else None
        self.ffn = FeedForward(c.d_model, c.d_ff, c.dropout)
        self.res1 = Residual(c.d_model, c.dropout, c.pre_norm)
        self.res2 = Residual(c.d_model, c.dropout, c.pre_norm) if c.src_height else None
        self.res3 = Residual(c.d_model, c.dropout, c.pre_norm)

    def _self(self, h: Tensor, cache: Any) -> tuple[Tensor, None]:
        if self.local:
            return self.self_attn(h, cache=cache), None
        return self.self_attn(h, causal=True, cache=cache)[0], None

    def forward(self, x: Tensor, memory: Tensor | None, cache: dict[str, Any] | None = None) -> Tensor:
        cache = cache or {}
        x, _ = self.res1(x, lambda h: self._self(h, cache.get("self")))
        if self.cross_attn is not None:
            x, _ = self.res2(x, lambda h: self.cross_attn(h, memory, cache=cache.get("cross")))
        x, _ = self.res3(x, lambda h: (self.ffn(h), None))
        return x


class ImageTransformer(nn.Module):
    """Decoder-only (unconditional, class-conditional) or encoder-decoder (super-resolution) Image Transformer."""

    def __init__(self, config: ImageTransformerConfig) -> None:
        super().__init__()
        _check(config)
        self.config = c = config
        self.seq_len = c.height * c.width * c.channels
        pattern: LocalPattern | None = None
        if c.attention == "local_1d":
            pattern = Local1DPattern(self.seq_len, c.block_len, c.memory_blocks)
        elif c.attention == "local_2d":
            pattern = Local2DPattern(c.height, c.width, c.channels, c.query_height, c.query_width, c.mem_above, c.mem_side)
        self.embed = nn.Embedding(c.vocab_size, c.d_model, padding_idx=c.pad_id)
        self.positions = ImagePositions(c.height, c.width, c.channels, c.d_model, c.positions)
        self.class_embed = nn.Embedding(c.num_classes, c.d_model) if c.num_classes else None
        self.drop = Dropout(c.dropout)
        self.decoder = nn.ModuleList(ImageDecoderLayer(c, pattern) for _ in range(c.layers))
        self.dec_norm = nn.LayerNorm(c.d_model) if c.pre_norm else nn.Identity()
        self.out_proj = nn.Linear(c.d_model, c.levels if c.output == "softmax" else logistic.num_params(c.mixtures))
        if c.src_height:
            self.src_positions = ImagePositions(c.src_height, c.src_width, c.channels, c.d_model, c.positions)
            self.encoder = nn.ModuleList(EncoderLayer(c) for _ in range(c.encoder_layers))  # type: ignore[arg-type]
            self.enc_norm = nn.LayerNorm(c.d_model) if c.pre_norm else nn.Identity()
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for name, p in self.named_parameters():
            if "embed" in name or "positions" in name:
                continue
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)
            elif name.endswith("bias"):
                nn.init.zeros_(p)
        nn.init.normal_(self.embed.weight, std=self.config.d_model**-0.5)
        if self.class_embed is not None:
            nn.init.normal_(self.class_embed.weight, std=0.5)
        with torch.no_grad():
            self.embed.weight[self.config.pad_id].zero_()

    def config_dict(self) -> dict[str, Any]:
        import dataclasses

        return dataclasses.asdict(self.config)

    @property
    def max_positions(self) -> int:
        return self.seq_len

    @property
    def conditioning(self) -> str:
        """``"class"``, ``"low_res"`` or ``"none"``: what the network reads beside the pixels."""
        return "low_res" if self.config.src_height else "class" if self.config.num_classes else "none"

    # -- checks for the public entry points (the training loop skips them) ----------------
    def check_inputs(self, tokens: Tensor | None, labels: Tensor | None, src: Tensor | None) -> None:
        """One-line errors for token ids, labels or low-resolution tokens this network cannot read."""
        from zoo.models.base import check_token_ids

        c = self.config
        if tokens is not None:
            check_token_ids(tokens, c.vocab_size, "pixel tokens")
            if tokens.size(1) > self.seq_len:
                raise ValueError(
                    f"{tokens.size(1)} pixel tokens are more than the {self.seq_len} of a "
                    f"{c.height}x{c.width}x{c.channels} image this model was built for"
                )
        batch = tokens.size(0) if tokens is not None else None
        if c.num_classes:
            if labels is None:
                raise ValueError(
                    f"this model is class-conditional: give labels, one class index 0..{c.num_classes - 1} per image"
                )
            labels = torch.as_tensor(labels)
            if labels.dim() != 1 or labels.dtype.is_floating_point or labels.dtype == torch.bool:
                raise TypeError(f"labels must be a 1-D sequence of class indices, got {labels.dtype} of shape {tuple(labels.shape)}")
            if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= c.num_classes):
                bad = int(labels.min()) if int(labels.min()) < 0 else int(labels.max())
                raise ValueError(
                    f"label {bad} is outside the model's {c.num_classes} classes 0..{c.num_classes - 1}; give class indices"
                )
            if batch is not None and labels.numel() != batch:
                raise ValueError(f"{labels.numel()} labels for {batch} images; give one label per image")
        elif labels is not None:
            raise ValueError("this model is not class-conditional and takes no labels; leave labels=None")
        if c.src_height:
            if src is None:
                raise ValueError(
                    f"this is a super-resolution model: give src, the {c.src_height}x{c.src_width} low-resolution images"
                )
            check_token_ids(src, c.levels, "low-resolution tokens")
            if src.size(1) != c.src_height * c.src_width * c.channels:
                raise ValueError(
                    f"low-resolution tokens must be {c.src_height * c.src_width * c.channels} per image "
                    f"({c.src_height}x{c.src_width}x{c.channels}), got {src.size(1)}"
                )
            if batch is not None and src.size(0) != batch:
                raise ValueError(f"{src.size(0)} low-resolution images for {batch} images; give one per image")
        elif src is not None:
            raise ValueError("this model is not a super-resolution model and takes no src; leave src=None")

    # -- network ---------------------------------------------------------------------
    def encode(self, src: Tensor | None) -> Tensor | None:
        """Low-resolution tokens (B, S) -> memory (B, S, C), or None without an encoder."""
        if not self.config.src_height or src is None:
            return None
        x = self.embed(src) * math.sqrt(self.config.d_model) + self.src_positions(src.size(1))
        x = self.drop(x)
        for layer in self.encoder:
            x = layer(x, None)
        return self.enc_norm(x)

    def _embed(self, tokens: Tensor, offset: int, labels: Tensor | None) -> Tensor:
        x = self.embed(tokens) * math.sqrt(self.config.d_model) + self.positions(tokens.size(1), offset)
        if self.class_embed is not None and labels is not None:
            x = x + self.class_embed(labels)[:, None, :]
        return self.drop(x)

    def _head(self, h: Tensor) -> Tensor:
        """Final states (..., C) -> scores over the intensities (..., levels): logits, or dmol log-probabilities."""
        out = self.out_proj(h)
        return out if self.config.output == "softmax" else logistic.log_probs(out, self.config.levels)

    def hidden(self, tokens: Tensor, labels: Tensor | None = None, src: Tensor | None = None) -> Tensor:
        """Teacher forcing: tokens (B, T) = <s> + pixels[:-1] -> final states (B, T, C)."""
        memory = self.encode(src)
        x = self._embed(tokens, 0, labels)
        for layer in self.decoder:
            x = layer(x, memory)
        return self.dec_norm(x)

    def forward(self, tokens: Tensor, labels: Tensor | None = None, src: Tensor | None = None) -> Tensor:
        """Teacher forcing: tokens (B, T) = <s> + pixels[:-1] -> scores (B, T, levels)."""
        return self._head(self.hidden(tokens, labels, src))

    def score(self, tokens: Tensor, targets: Tensor, labels: Tensor | None = None, src: Tensor | None = None) -> Tensor:
        """log P(targets[b, t] | earlier pixels) as (B, T), in nats (dmol: the targets' bins only)."""
        out = self.out_proj(self.hidden(tokens, labels, src))
        if self.config.output == "dmol":
            return logistic.log_probs(out, self.config.levels, targets)
        return out.float().log_softmax(-1).gather(-1, targets[..., None]).squeeze(-1)

    # -- incremental generation -------------------------------------------------------
    def init_state(
        self, batch_size: int, labels: Tensor | None = None, src: Tensor | None = None, device: Any = None
    ) -> dict[str, Any]:
        """Empty caches for ``batch_size`` images, with their labels or low-resolution memory."""
        dtype = self.out_proj.weight.dtype
        caches = []
        for layer in self.decoder:
            attn = layer.self_attn
            self_cache = attn.new_cache(batch_size, device, dtype) if layer.local else KVCache()
            caches.append({"self": self_cache, "cross": KVCache(static=True)})
        return {"layers": caches, "memory": self.encode(src), "labels": labels, "length": 0}

    def step(self, tokens: Tensor, state: dict[str, Any]) -> Tensor:
        """The next token(s) (B, n) after ``state["length"]`` -> scores (B, levels) for the position after them."""
        offset = state["length"]
        x = self._embed(tokens, offset, state["labels"])
        for layer, cache in zip(self.decoder, state["layers"]):
            x = layer(x, state["memory"], cache)
        state["length"] = offset + tokens.size(1)
        return self._head(self.dec_norm(x[:, -1]))


# --- registered sizes --------------------------------------------------------------

_PAPER = "Parmar et al. 2018, Image Transformer"


@register_model(task="image", config=ImageTransformerConfig, paper=_PAPER)
def image_transformer_tiny(**kw: Any) -> ImageTransformer:
    """2 layers, C=32, 8x8 digits with 2x4 query blocks: for tests and smoke runs."""
    defaults = dict(levels=17, vocab_size=19, bos_id=17, pad_id=18, height=8, width=8, d_model=32, n_heads=2,
                    layers=2, encoder_layers=1, d_ff=64, dropout=0.0, block_len=16, query_height=2, query_width=4,
                    mem_above=2, mem_side=2)
    return ImageTransformer(make_config(ImageTransformerConfig, defaults, kw))


@register_model(task="image", config=ImageTransformerConfig, paper=_PAPER)
def image_transformer_small(**kw: Any) -> ImageTransformer:
    """4 layers, C=128, 4 heads, FFN 512, local 2D attention: the size of the digits and MNIST checkpoints."""
    defaults = dict(d_model=128, n_heads=4, layers=4, encoder_layers=2, d_ff=512, dropout=0.1)
    return ImageTransformer(make_config(ImageTransformerConfig, defaults, kw))


@register_model(task="image", config=ImageTransformerConfig, paper=_PAPER)
def image_transformer_base(**kw: Any) -> ImageTransformer:
    """The paper's CIFAR-10 size: 12 layers, C=512, 8 heads, FFN 2048, local 2D attention."""
    defaults = dict(d_model=512, n_heads=8, layers=12, d_ff=2048, dropout=0.1, height=32, width=32, channels=3,
                    query_height=8, query_width=16, mem_above=8, mem_side=8)
    return ImageTransformer(make_config(ImageTransformerConfig, defaults, kw))


# --- published weights ----------------------------------------------------------------

DIGITS = "scikit-learn 8x8 handwritten digits (UCI), 17 grey levels: 1,497 train / 150 val / 150 test"
DIGITS_LICENSE = "MIT (weights); digits: CC BY 4.0 (UCI)"

register_pretrained(
    Pretrained(
        name="image_transformer_small.digits",
        hub_id="zoo-models/image_transformer_small.digits",
        sha256="6cb349846f88e2236040e0617eb2033d4d30dab52826d58d747cebe484f8f2e3",
        params=801_425,
        metrics={"bpd": 1.6777},
        recipe="configs/image_transformer_small.digits.yaml",
        data=DIGITS,
        license=DIGITS_LICENSE,
        description="class-conditional, local 2D attention; test 1.678 bits/dim (per-pixel independent: 2.204 per class)",
    )
)

register_pretrained(
    Pretrained(
        name="image_transformer_small.digits_1d",
        hub_id="zoo-models/image_transformer_small.digits_1d",
        sha256="f033ca8d90c4646e80ee908d0c0643bb3d8772f7d45c595d5c803206fd33f6a4",
        params=801_425,
        metrics={"bpd": 1.692},
        recipe="configs/image_transformer_small.digits_1d.yaml",
        data=DIGITS,
        license=DIGITS_LICENSE,
        description="class-conditional, local 1D attention (blocks of 16, one block of memory); test 1.692 bits/dim",
    )
)

register_pretrained(
    Pretrained(
        name="image_transformer_small.digits_sr",
        hub_id="zoo-models/image_transformer_small.digits_sr",
        sha256="7c98ce4bc564678daa63fe614d09b500c7ad3d45b08bb82061787826939ba952",
        params=1_463_313,
        metrics={"bpd": 1.3515},
        recipe="configs/image_transformer_small.digits_sr.yaml",
        data=DIGITS,
        license=DIGITS_LICENSE,
        description="super-resolution 4x4 -> 8x8 (2-layer encoder, local 2D decoder); test 1.352 bits/dim of the 8x8 image",
    )
)

register_pretrained(
    Pretrained(
        name="image_transformer_small.mnist",
        hub_id="zoo-models/image_transformer_small.mnist",
        sha256="0cbdfc68a4a794d3c7b946816e46c60026c5dbf251e32b795beb74e26e06d16a",
        params=5_625_216,
        metrics={"bpd": 0.7492},
        recipe="configs/image_transformer_small.mnist.stage18.yaml",
        data="MNIST t10k, 256 grey levels: 8,500 train / 500 val (in training for the last epoch) / 1,000 held-out test images",
        license="MIT (weights); MNIST: CC BY-SA 3.0 (LeCun, Cortes, Burges)",
        description="unconditional, local 2D attention, 28 layers (grown from 4, 8, 12, 16, 20 and 24), its last three epochs "
                    "without shift augmentation, the last on all 9,000 training and validation images, "
                    "temperature-calibrated; held-out test 0.7492 bits/dim (per-pixel independent: 1.70)",
    )
)
