"""The convolutional sequence-to-sequence model.

Gehring, Auli, Grangier, Yarats, Dauphin. "Convolutional Sequence to Sequence
Learning", ICML 2017.

Both sides embed tokens and learned positions (e = w + p, width f = ``emb_dim``), map them
to ``hidden_dim`` channels and run a stack of blocks

    h <- (GLU(conv(h)) + h) * sqrt(0.5)

with a width-k convolution producing 2d channels, padded on both sides in the encoder and
on the left only in the decoder (causal). Every decoder layer has its own attention
("multi-step attention", section 3.3): the decoder state summary d = W h + b + g (g the
target embedding) scores the encoder outputs z, the values are z + e (e the source
embedding), the context is scaled by m * sqrt(1/m) for a source of m tokens, projected back
to d channels and added to the block's output.

Section 3.4 is followed for the arithmetic that keeps activations well scaled: residual
sums times sqrt(0.5); the attention's context added to the layer output also times
sqrt(0.5), as in the authors' fairseq code (the paper only says it is "added"); weight
normalisation on every layer but the embeddings; embeddings drawn from N(0, 0.1), layers
feeding a GLU from N(0, sqrt(4p/n)) and the others from N(0, sqrt(p/n)), p the
probability of keeping a unit of the layer's (dropped-out) input and n its fan-in; the
gradients of the encoder's convolutions scaled by 1 / (2 * number of attention layers).

Decoding keeps, per decoder layer, the last k - 1 inputs of its convolution, so a step
costs the same at position 5 and at position 500 (:meth:`ConvS2S.decode_step`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.parametrizations import weight_norm

from zoo.nn.dropout import Dropout
from zoo.models.base import EncoderDecoder, check_at_least, check_vocab, make_config
from zoo.nn.source_attention import DotAttention
from zoo.registry import MULTI30K_DE_EN, ZOO_LICENSE, Pretrained, register_model, register_pretrained

SQRT_HALF = math.sqrt(0.5)


@dataclass
class ConvS2SConfig:
    src_vocab_size: int = 8000
    tgt_vocab_size: int = 8000
    pad_id: int = 0
    emb_dim: int = 512  # f: embeddings, attention and the layer before the softmax
    hidden_dim: int = 512  # d: channels of the convolutional blocks
    encoder_layers: int = 15
    decoder_layers: int = 15
    kernel_size: int = 3
    dropout: float = 0.1
    max_len: int = 256  # learned positions
    share_embeddings: bool = False  # one table for source and target (needs a joint vocabulary)
    tie_output: bool = False  # output layer = target embedding (then without weight normalisation)


def _check(c: ConvS2SConfig) -> None:
    if min(c.encoder_layers, c.decoder_layers) < 1:
        raise ValueError(f"encoder_layers and decoder_layers must be at least 1, got {c.encoder_layers} and {c.decoder_layers}")
    if c.kernel_size < 1 or c.hidden_dim < 1 or c.emb_dim < 1:
        raise ValueError("kernel_size, hidden_dim and emb_dim must be at least 1")
    if not 0.0 <= c.dropout < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {c.dropout}")
    check_vocab(c, "src_vocab_size", "tgt_vocab_size")
    check_at_least(c, "max_len")
    if c.share_embeddings and c.src_vocab_size != c.tgt_vocab_size:
        raise ValueError("share_embeddings needs src_vocab_size == tgt_vocab_size (a joint vocabulary)")


def _check_length(length: int, max_len: int) -> None:
    """Learned positions end at ``max_len``: say so instead of an index error from nn.Embedding."""
    if length > max_len:
        raise ValueError(
            f"sequence of {length} positions is longer than the model's maximum of "
            f"{max_len}; shorten the input or build the model with a larger max_len"
        )


def init_layer(layer: nn.Linear | nn.Conv1d, keep: float = 1.0, glu: bool = False) -> nn.Module:
    """Initialise as in section 3.5 (N(0, sqrt(gain * keep / fan_in)), zero bias), then weight-normalise."""
    fan_in = layer.weight[0].numel()
    nn.init.normal_(layer.weight, std=math.sqrt((4.0 if glu else 1.0) * keep / fan_in))
    nn.init.zeros_(layer.bias)
    return weight_norm(layer, dim=0)  # one gain per output unit


def embedding(num: int, dim: int, pad_id: int | None) -> nn.Embedding:
    emb = nn.Embedding(num, dim, padding_idx=pad_id)
    nn.init.normal_(emb.weight, std=0.1)
    if pad_id is not None:
        with torch.no_grad():
            emb.weight[pad_id].zero_()
    return emb


class _ScaleGrad(torch.autograd.Function):
    """Identity forward; gradient times ``scale`` backward."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, scale: float) -> Tensor:
        ctx.scale = scale
        return x.view_as(x)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:
        return grad * ctx.scale, None


def scale_grad(x: Tensor, scale: float) -> Tensor:
    return _ScaleGrad.apply(x, scale)


class ConvGLU(nn.Module):
    """One block: x (B, d, T) -> (GLU(conv(dropout(x))) + x) * sqrt(0.5), (B, d, T).

    ``causal`` pads k - 1 zeros on the left (the decoder); otherwise the padding is split
    between both sides so position t sees t - (k-1)/2 .. t + k/2 (the encoder).
    """

    def __init__(self, channels: int, kernel_size: int, dropout: float, causal: bool) -> None:
        super().__init__()
        self.kernel_size, self.causal = kernel_size, causal
        self.drop = Dropout(dropout)
        self.conv = init_layer(nn.Conv1d(channels, 2 * channels, kernel_size), keep=1.0 - dropout, glu=True)

    @property
    def padding(self) -> tuple[int, int]:
        k = self.kernel_size
        return (k - 1, 0) if self.causal else ((k - 1) // 2, k // 2)

    def glu(self, x: Tensor) -> Tensor:
        """GLU(conv(x)) of an already padded x (B, d, T + k - 1) -> (B, d, T)."""
        return F.glu(self.conv(self.drop(x)), dim=1)

    def forward(self, x: Tensor) -> Tensor:
        return (self.glu(F.pad(x, self.padding)) + x) * SQRT_HALF


class ConvEncoder(nn.Module):
    """src (B, S) -> keys z (B, S, f), values z + e (B, S, f)."""

    def __init__(self, c: ConvS2SConfig, embed: nn.Embedding) -> None:
        super().__init__()
        self.pad_id = c.pad_id
        self.embed = embed
        self.positions = embedding(c.max_len, c.emb_dim, None)
        self.drop = Dropout(c.dropout)
        self.proj_in = init_layer(nn.Linear(c.emb_dim, c.hidden_dim), keep=1.0 - c.dropout)
        self.blocks = nn.ModuleList(ConvGLU(c.hidden_dim, c.kernel_size, c.dropout, causal=False) for _ in range(c.encoder_layers))
        self.proj_out = init_layer(nn.Linear(c.hidden_dim, c.emb_dim))
        self.grad_scale = 1.0 / (2.0 * c.decoder_layers)  # every decoder layer attends: keys and values

    def forward(self, src: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        _check_length(src.size(1), self.positions.num_embeddings)
        pad_mask = src.eq(self.pad_id)  # (B, S)
        keep = (~pad_mask)[:, None, :]  # (B, 1, S)
        pos = torch.arange(src.size(1), device=src.device)
        e = self.drop(self.embed(src) + self.positions(pos))  # (B, S, f)
        h = self.proj_in(e).transpose(1, 2)  # (B, d, S)
        for block in self.blocks:
            # padding stays zero, so a sentence encodes the same alone or in any batch
            h = block(h * keep)
        z = self.proj_out(h.transpose(1, 2)).masked_fill(pad_mask[..., None], 0.0)  # (B, S, f)
        z = scale_grad(z, self.grad_scale)
        return z, z + e, pad_mask


class DecoderLayer(nn.Module):
    """A causal block followed by its own attention over the encoder output."""

    def __init__(self, c: ConvS2SConfig) -> None:
        super().__init__()
        self.block = ConvGLU(c.hidden_dim, c.kernel_size, c.dropout, causal=True)
        self.attn_in = init_layer(nn.Linear(c.hidden_dim, c.emb_dim))  # d = W h + b + g
        self.attention = DotAttention(c.emb_dim, c.emb_dim)  # score d . z, values z + e
        self.attn_out = init_layer(nn.Linear(c.emb_dim, c.hidden_dim))

    def forward(
        self, x: Tensor, g: Tensor, enc: dict[str, Tensor], window: Tensor | None = None
    ) -> tuple[Tensor, Tensor, Tensor | None]:
        """x (B, d, T), target embeddings g (B, T, f) -> (B, d, T), weights (B, T, S), new window.

        ``window`` (B, d, k-1) holds the layer's last k - 1 inputs when decoding step by
        step; it replaces the left zero padding and is returned updated.
        """
        k = self.block.kernel_size
        padded = F.pad(x, (k - 1, 0)) if window is None else torch.cat([window, x], dim=2)
        new_window = padded[:, :, padded.size(2) - (k - 1) :] if window is not None else None
        h = self.block.glu(padded).transpose(1, 2)  # (B, T, d)
        d = self.attn_in(h) + g  # (B, T, f)
        context, weights = self.attention(d, enc["keys"], enc["values"], enc["src_pad_mask"])
        context = context * enc["length_scale"]  # m * sqrt(1/m)
        h = (h + self.attn_out(context)) * SQRT_HALF
        return (h.transpose(1, 2) + x) * SQRT_HALF, weights, new_window


class ConvS2S(EncoderDecoder):
    has_attention = True

    def __init__(self, config: ConvS2SConfig) -> None:
        super().__init__()
        _check(config)
        self.config = c = config
        src_embed = embedding(c.src_vocab_size, c.emb_dim, c.pad_id)
        self.encoder = ConvEncoder(c, src_embed)
        self.tgt_embed = src_embed if c.share_embeddings else embedding(c.tgt_vocab_size, c.emb_dim, c.pad_id)
        self.tgt_positions = embedding(c.max_len, c.emb_dim, None)
        self.drop = Dropout(c.dropout)
        self.proj_in = init_layer(nn.Linear(c.emb_dim, c.hidden_dim), keep=1.0 - c.dropout)
        self.layers = nn.ModuleList(DecoderLayer(c) for _ in range(c.decoder_layers))
        self.proj_out = init_layer(nn.Linear(c.hidden_dim, c.emb_dim))
        if c.tie_output:
            self.out_proj = nn.Linear(c.emb_dim, c.tgt_vocab_size)
            nn.init.zeros_(self.out_proj.bias)
            self.out_proj.weight = self.tgt_embed.weight
        else:
            self.out_proj = init_layer(nn.Linear(c.emb_dim, c.tgt_vocab_size), keep=1.0 - c.dropout)

    def encode(self, src: Tensor) -> dict[str, Tensor]:
        keys, values, pad_mask = self.encoder(src)
        m = (~pad_mask).sum(1).clamp(min=1).to(values.dtype)  # source lengths
        return {"keys": keys, "values": values, "src_pad_mask": pad_mask, "length_scale": m.sqrt()[:, None, None]}

    def decode(
        self, tgt_in: Tensor, enc: dict[str, Tensor], state: dict[str, Any] | None = None
    ) -> tuple[Tensor, list[Tensor]]:
        """tgt_in (B, T) -> logits (B, T, V) and each layer's attention (B, T, S).

        With ``state`` (from :meth:`init_state`), ``tgt_in`` holds only the new tokens and
        each layer's earlier inputs come from its window.
        """
        offset = state["length"] if state is not None else 0
        _check_length(offset + tgt_in.size(1), self.config.max_len)
        pos = torch.arange(offset, offset + tgt_in.size(1), device=tgt_in.device)
        g = self.drop(self.tgt_embed(tgt_in) + self.tgt_positions(pos))  # (B, T, f)
        x = self.proj_in(g).transpose(1, 2)  # (B, d, T)
        weights = []
        for i, layer in enumerate(self.layers):
            window = state["windows"][i] if state is not None else None
            x, w, window = layer(x, g, enc, window)
            weights.append(w)
            if state is not None:
                state["windows"][i] = window
        if state is not None:
            state["length"] = offset + tgt_in.size(1)
        out = self.drop(self.proj_out(x.transpose(1, 2)))
        return self.out_proj(out), weights

    def forward(self, src: Tensor, tgt_in: Tensor) -> Tensor:
        """Teacher forcing: src (B, S), tgt_in (B, T) -> logits (B, T, V)."""
        return self.decode(tgt_in, self.encode(src))[0]

    def init_state(self, enc: dict[str, Tensor]) -> dict[str, Any]:
        """Zero windows: the causal left padding of every decoder layer."""
        b, c = enc["keys"].size(0), self.config
        window = enc["keys"].new_zeros(b, c.hidden_dim, c.kernel_size - 1)
        return {"windows": [window] * len(self.layers), "length": 0}

    def decode_step(self, tokens: Tensor, enc: dict[str, Tensor], state: dict[str, Any]) -> Tensor:
        return self.decode(tokens, enc, state)[0][:, -1]  # (B, V)

    def attention_maps(self, src: Tensor, tgt_in: Tensor) -> dict[str, Tensor]:
        """Every decoder layer's attention, (B, 1, T, S) each."""
        _, weights = self.decode(tgt_in, self.encode(src))
        return {f"layer {i + 1}": w[:, None] for i, w in enumerate(weights)}


# --- registered sizes --------------------------------------------------------------

_PAPER = "Gehring et al. 2017, Convolutional Sequence to Sequence Learning"


@register_model(task="translation", config=ConvS2SConfig, paper=_PAPER)
def convs2s_tiny(**kw: Any) -> ConvS2S:
    """2+2 layers, f=d=64: for tests and smoke runs."""
    defaults = dict(emb_dim=64, hidden_dim=64, encoder_layers=2, decoder_layers=2, max_len=128)
    return ConvS2S(make_config(ConvS2SConfig, defaults, kw))


@register_model(task="translation", config=ConvS2SConfig, paper=_PAPER)
def convs2s_small(**kw: Any) -> ConvS2S:
    """8+6 layers, f=d=256, kernel 3, dropout 0.25: the size of the Multi30k checkpoint.

    Eight encoder layers see 17 source tokens around each position (a Multi30k sentence is
    about 16 subwords); the decoder attends to the whole source in each of its six layers.
    """
    defaults = dict(emb_dim=256, hidden_dim=256, encoder_layers=8, decoder_layers=6, dropout=0.25)
    return ConvS2S(make_config(ConvS2SConfig, defaults, kw))


@register_model(task="translation", config=ConvS2SConfig, paper=_PAPER)
def convs2s_large(**kw: Any) -> ConvS2S:
    """15+15 layers of 512 channels, f=512: the depth of the paper's WMT'14 models at one width
    (the paper widens its upper layers to 1024 and 2048 channels)."""
    defaults = dict(emb_dim=512, hidden_dim=512, encoder_layers=15, decoder_layers=15, dropout=0.1)
    return ConvS2S(make_config(ConvS2SConfig, defaults, kw))


register_pretrained(
    Pretrained(
        name="convs2s_small.multi30k",
        hub_id="zoo-models/convs2s_small.multi30k",
        sha256="2ce5d13c2a409f74e69802379aa6de250fae902cbe53d64c3933e4099ddeb55a",
        params=8_763_200,
        metrics={"sacrebleu/greedy": 37.46, "bleu_lc/greedy": 37.69, "sacrebleu/beam4": 38.67, "bleu_lc/beam4": 38.92,
                 "ppl": 7.47},
        recipe="configs/convs2s_small.multi30k.yaml",
        data=MULTI30K_DE_EN,
        license=ZOO_LICENSE,
        description="ConvS2S, 8+6 GLU blocks of 256 channels; test sacreBLEU 37.46 greedy / 38.67 beam 4",
    )
)
