"""Recurrent encoder-decoders: Seq2Seq and its attention successors.

* Sutskever, Vinyals, Le. "Sequence to Sequence Learning with Neural Networks", NeurIPS 2014.
  A deep LSTM reads the (reversed) source; its final states start a deep LSTM decoder.
* Bahdanau, Cho, Bengio. "Neural Machine Translation by Jointly Learning to Align and
  Translate", ICLR 2015. A bidirectional encoder; before each step the previous decoder
  state attends over the source (additive score) and the context enters the RNN.
* Luong, Pham, Manning. "Effective Approaches to Attention-based Neural Machine
  Translation", EMNLP 2015. After each step the new state attends (dot / general /
  concat score); the attentional vector h~ = tanh(Wc [c; h]) predicts the word and is fed
  to the next step (input feeding).

The three differ only in their decoder step; the encoder, embeddings, output layer and
the interface to the shared greedy / beam search are common. Every tensor in the
decoding state is batch first: the RNN state is kept as (B, L, H).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from zoo.nn.dropout import Dropout
from zoo.models.base import EncoderDecoder, check_vocab, make_config
from zoo.nn.source_attention import source_attention
from zoo.registry import MULTI30K_DE_EN, ZOO_LICENSE, Pretrained, register_model, register_pretrained

RNN_CELLS = {"lstm": nn.LSTM, "gru": nn.GRU, "rnn": nn.RNN}


@dataclass
class RNNSeq2SeqConfig:
    src_vocab_size: int = 8000
    tgt_vocab_size: int = 8000
    pad_id: int = 0
    decoder: str = "sutskever"  # sutskever | bahdanau | luong
    cell: str = "lstm"  # lstm | gru | rnn
    emb_dim: int = 256
    hidden_dim: int = 512
    layers: int = 2
    dropout: float = 0.3
    bidirectional: bool = False  # encoder reads both ways; final states bridged to the decoder
    reverse_source: bool = False  # Sutskever's trick: feed the source backwards
    attention: str = "additive"  # score for bahdanau / luong: additive | concat | dot | general | scaled_dot
    attn_dim: int = 256
    input_feeding: bool = True  # luong: feed h~ of the previous step into the RNN
    share_embeddings: bool = False  # one table for source and target (needs a joint vocabulary)
    tie_output: bool = False  # output layer = target embedding, through a hidden -> emb projection
    forget_bias: float = 0.0  # LSTM forget-gate bias at initialisation (1.0: Jozefowicz et al. 2015)
    max_len: int = 256


def reverse_padded(tokens: Tensor, pad_id: int) -> Tensor:
    """Reverse each row's tokens, leaving the right padding in place: (B, S) -> (B, S)."""
    lengths = tokens.ne(pad_id).sum(1, keepdim=True)  # (B, 1)
    pos = torch.arange(tokens.size(1), device=tokens.device)[None]
    index = torch.where(pos < lengths, lengths - 1 - pos, pos)
    return tokens.gather(1, index)


def _check(cfg: RNNSeq2SeqConfig) -> None:
    if cfg.cell not in RNN_CELLS:
        raise ValueError(f"unknown cell {cfg.cell!r}; choose one of {', '.join(RNN_CELLS)}")
    if cfg.decoder not in DECODERS:
        raise ValueError(f"unknown decoder {cfg.decoder!r}; choose one of {', '.join(DECODERS)}")
    if cfg.layers < 1 or cfg.hidden_dim < 1 or cfg.emb_dim < 1:
        raise ValueError("layers, hidden_dim and emb_dim must be at least 1")
    if not 0.0 <= cfg.dropout < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {cfg.dropout}")
    check_vocab(cfg, "src_vocab_size", "tgt_vocab_size")


class RecurrentEncoder(nn.Module):
    """Token ids (B, S) -> outputs (B, S, H * directions) and the decoder's initial state (B, L, H)."""

    def __init__(self, cfg: RNNSeq2SeqConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.embed = nn.Embedding(cfg.src_vocab_size, cfg.emb_dim, padding_idx=cfg.pad_id)
        self.drop = Dropout(cfg.dropout)
        self.rnn = RNN_CELLS[cfg.cell](
            cfg.emb_dim, cfg.hidden_dim, cfg.layers, batch_first=True,
            dropout=cfg.dropout if cfg.layers > 1 else 0.0, bidirectional=cfg.bidirectional,
        )
        # both directions' final states -> one decoder state (Bahdanau: s0 = tanh(W h))
        self.bridge = nn.Linear(2 * cfg.hidden_dim, cfg.hidden_dim) if cfg.bidirectional else None

    def _to_decoder(self, h: Tensor) -> Tensor:  # (L * dirs, B, H) -> (B, L, H)
        if self.bridge is None:
            return h.transpose(0, 1)
        layers, b = self.cfg.layers, h.size(1)
        h = h.view(layers, 2, b, -1).permute(2, 0, 1, 3).reshape(b, layers, -1)  # (B, L, 2H)
        return torch.tanh(self.bridge(h))

    def forward(self, src: Tensor) -> tuple[Tensor, Any]:
        lengths = src.ne(self.cfg.pad_id).sum(1).clamp(min=1).cpu()
        packed = nn.utils.rnn.pack_padded_sequence(
            self.drop(self.embed(src)), lengths, batch_first=True, enforce_sorted=False
        )
        out, final = self.rnn(packed)
        out, _ = nn.utils.rnn.pad_packed_sequence(out, batch_first=True, total_length=src.size(1))
        if isinstance(final, tuple):  # LSTM: (h, c)
            return out, tuple(self._to_decoder(x) for x in final)
        return out, self._to_decoder(final)


class RecurrentDecoder(nn.Module):
    """One decoding step at a time. ``step`` maps the embedded previous token (B, E) and the
    state to an output vector (B, H) and the attention weights (B, S) or None."""

    def __init__(self, cfg: RNNSeq2SeqConfig, input_dim: int) -> None:
        super().__init__()
        self.cfg = cfg
        self.rnn = RNN_CELLS[cfg.cell](input_dim, cfg.hidden_dim, cfg.layers, batch_first=True,
                                       dropout=cfg.dropout if cfg.layers > 1 else 0.0)

    def run_rnn(self, x: Tensor, state: dict[str, Any]) -> Tensor:
        """x (B, T, I) through the RNN from ``state["rnn"]`` (B, L, H); updates the state, returns (B, T, H)."""
        hidden = state["rnn"]
        as_torch = tuple(h.transpose(0, 1).contiguous() for h in hidden) if isinstance(hidden, tuple) else hidden.transpose(0, 1).contiguous()
        out, new = self.rnn(x, as_torch)
        state["rnn"] = tuple(h.transpose(0, 1) for h in new) if isinstance(new, tuple) else new.transpose(0, 1)
        return out

    @staticmethod
    def top(state: dict[str, Any]) -> Tensor:
        """The top layer's hidden state (B, H)."""
        hidden = state["rnn"]
        return (hidden[0] if isinstance(hidden, tuple) else hidden)[:, -1]

    def init_state(self, enc: dict[str, Any]) -> dict[str, Any]:
        return {"rnn": enc["final"]}

    def step(self, emb: Tensor, enc: dict[str, Any], state: dict[str, Any]) -> tuple[Tensor, Tensor | None]:
        raise NotImplementedError

    def sequence(self, emb: Tensor, enc: dict[str, Any], state: dict[str, Any]) -> tuple[Tensor, Tensor | None]:
        """Teacher forcing over emb (B, T, E): outputs (B, T, H) and weights (B, T, S) or None."""
        outs, weights = [], []
        for t in range(emb.size(1)):
            out, w = self.step(emb[:, t], enc, state)
            outs.append(out)
            weights.append(w)
        return torch.stack(outs, 1), (torch.stack(weights, 1) if weights[0] is not None else None)


class SutskeverDecoder(RecurrentDecoder):
    """The context is the encoder's final state only; the whole target runs through the RNN at once."""

    def __init__(self, cfg: RNNSeq2SeqConfig, memory_dim: int) -> None:
        super().__init__(cfg, cfg.emb_dim)

    def step(self, emb: Tensor, enc: dict[str, Any], state: dict[str, Any]) -> tuple[Tensor, None]:
        return self.run_rnn(emb[:, None], state)[:, 0], None

    def sequence(self, emb: Tensor, enc: dict[str, Any], state: dict[str, Any]) -> tuple[Tensor, None]:
        return self.run_rnn(emb, state), None


class BahdanauDecoder(RecurrentDecoder):
    """s_{t-1} attends over the source; the RNN reads [y_{t-1}; c_t]; the output combines [s_t; c_t; y_{t-1}]."""

    def __init__(self, cfg: RNNSeq2SeqConfig, memory_dim: int) -> None:
        super().__init__(cfg, cfg.emb_dim + memory_dim)
        self.attn = source_attention(cfg.attention, cfg.hidden_dim, memory_dim, cfg.attn_dim)
        self.combine = nn.Linear(cfg.hidden_dim + memory_dim + cfg.emb_dim, cfg.hidden_dim)

    def step(self, emb: Tensor, enc: dict[str, Any], state: dict[str, Any]) -> tuple[Tensor, Tensor]:
        ctx, w = self.attn(self.top(state)[:, None], enc["keys"], enc["memory"], enc["src_pad_mask"])
        ctx = ctx[:, 0]  # (B, Cm)
        h = self.run_rnn(torch.cat([emb, ctx], -1)[:, None], state)[:, 0]  # (B, H)
        return torch.tanh(self.combine(torch.cat([h, ctx, emb], -1))), w[:, 0]


class LuongDecoder(RecurrentDecoder):
    """The RNN reads [y_{t-1}; h~_{t-1}]; h_t attends; h~_t = tanh(Wc [c_t; h_t]) predicts y_t."""

    def __init__(self, cfg: RNNSeq2SeqConfig, memory_dim: int) -> None:
        super().__init__(cfg, cfg.emb_dim + (cfg.hidden_dim if cfg.input_feeding else 0))
        self.attn = source_attention(cfg.attention, cfg.hidden_dim, memory_dim, cfg.attn_dim)
        self.w_c = nn.Linear(memory_dim + cfg.hidden_dim, cfg.hidden_dim, bias=False)

    def init_state(self, enc: dict[str, Any]) -> dict[str, Any]:
        state = super().init_state(enc)
        if self.cfg.input_feeding:
            b = enc["memory"].size(0)
            state["feed"] = enc["memory"].new_zeros(b, self.cfg.hidden_dim)
        return state

    def step(self, emb: Tensor, enc: dict[str, Any], state: dict[str, Any]) -> tuple[Tensor, Tensor]:
        x = torch.cat([emb, state["feed"]], -1) if self.cfg.input_feeding else emb
        h = self.run_rnn(x[:, None], state)  # (B, 1, H)
        ctx, w = self.attn(h, enc["keys"], enc["memory"], enc["src_pad_mask"])
        out = torch.tanh(self.w_c(torch.cat([ctx, h], -1)))[:, 0]  # (B, H)
        if self.cfg.input_feeding:
            state["feed"] = out
        return out, w[:, 0]


DECODERS: dict[str, type[RecurrentDecoder]] = {
    "sutskever": SutskeverDecoder,
    "bahdanau": BahdanauDecoder,
    "luong": LuongDecoder,
}


class RNNSeq2Seq(EncoderDecoder):
    def __init__(self, config: RNNSeq2SeqConfig) -> None:
        super().__init__()
        _check(config)
        self.config = c = config
        self.encoder = RecurrentEncoder(c)
        memory_dim = c.hidden_dim * (2 if c.bidirectional else 1)
        if c.share_embeddings and c.src_vocab_size != c.tgt_vocab_size:
            raise ValueError("share_embeddings needs src_vocab_size == tgt_vocab_size (a joint vocabulary)")
        self.tgt_embed = (
            self.encoder.embed if c.share_embeddings else nn.Embedding(c.tgt_vocab_size, c.emb_dim, padding_idx=c.pad_id)
        )
        self.decoder = DECODERS[c.decoder](c, memory_dim)
        self.drop = Dropout(c.dropout)
        self.out_hidden = nn.Linear(c.hidden_dim, c.emb_dim) if c.tie_output else nn.Identity()
        self.out_proj = nn.Linear(c.emb_dim if c.tie_output else c.hidden_dim, c.tgt_vocab_size)
        self.has_attention = c.decoder != "sutskever"
        self.reset_parameters()
        if c.tie_output:
            self.out_proj.weight = self.tgt_embed.weight

    def reset_parameters(self) -> None:
        for p in self.parameters():
            nn.init.uniform_(p, -0.08, 0.08)  # Sutskever et al. 2014, section 3.4
        if self.config.forget_bias:  # the gates of nn.LSTM's biases are ordered input, forget, cell, output
            for rnn in (m for m in self.modules() if isinstance(m, nn.LSTM)):
                for name, bias in rnn.named_parameters():
                    if name.startswith("bias_ih"):
                        with torch.no_grad():
                            bias.chunk(4)[1].fill_(self.config.forget_bias)
                            getattr(rnn, name.replace("ih", "hh")).chunk(4)[1].zero_()
        for emb in {self.encoder.embed, self.tgt_embed}:
            with torch.no_grad():
                emb.weight[self.config.pad_id].zero_()

    def encode(self, src: Tensor) -> dict[str, Any]:
        if self.config.reverse_source:
            src = reverse_padded(src, self.config.pad_id)
        memory, final = self.encoder(src)  # (B, S, Cm)
        attn = getattr(self.decoder, "attn", None)
        return {
            "memory": memory,
            "keys": attn.precompute(memory) if attn is not None else memory,  # once per sentence
            "src_pad_mask": src.eq(self.config.pad_id),
            "final": final,
        }

    def init_state(self, enc: dict[str, Any]) -> dict[str, Any]:
        return self.decoder.init_state(enc)

    def decode(self, tgt_in: Tensor, enc: dict[str, Any], state: dict[str, Any] | None = None) -> tuple[Tensor, Tensor | None]:
        """tgt_in (B, T) -> logits (B, T, V) and attention weights (B, T, S) or None."""
        state = self.init_state(enc) if state is None else state
        out, weights = self.decoder.sequence(self.drop(self.tgt_embed(tgt_in)), enc, state)
        return self.out_proj(self.out_hidden(self.drop(out))), weights

    def forward(self, src: Tensor, tgt_in: Tensor) -> Tensor:
        return self.decode(tgt_in, self.encode(src))[0]

    def decode_step(self, tokens: Tensor, enc: dict[str, Any], state: dict[str, Any]) -> Tensor:
        return self.decode(tokens, enc, state)[0][:, -1]

    def attention_maps(self, src: Tensor, tgt_in: Tensor) -> dict[str, Tensor]:
        if not self.has_attention:
            return super().attention_maps(src, tgt_in)
        enc = self.encode(src)
        _, weights = self.decode(tgt_in, enc)
        if self.config.reverse_source:  # show the weights against the source as written
            weights = reverse_padded_weights(weights, enc["src_pad_mask"])
        return {f"{self.config.decoder} ({self.config.attention})": weights[:, None]}  # (B, 1, T, S)


def reverse_padded_weights(weights: Tensor, pad_mask: Tensor) -> Tensor:
    """Undo :func:`reverse_padded` on the source axis of weights (B, T, S)."""
    lengths = (~pad_mask).sum(1, keepdim=True)  # (B, 1)
    pos = torch.arange(weights.size(-1), device=weights.device)[None]
    index = torch.where(pos < lengths, lengths - 1 - pos, pos)  # (B, S)
    return weights.gather(2, index[:, None].expand_as(weights))


# --- registered sizes --------------------------------------------------------------


@register_model(task="translation", config=RNNSeq2SeqConfig, paper="Sutskever et al. 2014, Sequence to Sequence Learning")
def seq2seq_lstm(**kw: Any) -> RNNSeq2Seq:
    """Deep (2-layer) LSTM encoder-decoder, 512 units, source reversed."""
    defaults = dict(decoder="sutskever", reverse_source=True, layers=2, hidden_dim=512, emb_dim=256)
    return RNNSeq2Seq(make_config(RNNSeq2SeqConfig, defaults, kw))


@register_model(task="translation", config=RNNSeq2SeqConfig, paper="Bahdanau et al. 2015, Jointly Learning to Align and Translate")
def seq2seq_bahdanau(**kw: Any) -> RNNSeq2Seq:
    """Bidirectional GRU encoder, additive attention before each decoder step."""
    defaults = dict(decoder="bahdanau", cell="gru", bidirectional=True, layers=1, hidden_dim=512, emb_dim=256, attention="additive")
    return RNNSeq2Seq(make_config(RNNSeq2SeqConfig, defaults, kw))


@register_model(task="translation", config=RNNSeq2SeqConfig, paper="Luong et al. 2015, Effective Approaches to Attention-based NMT")
def seq2seq_luong(**kw: Any) -> RNNSeq2Seq:
    """2-layer LSTM (unidirectional encoder, as in the paper), global 'general' attention after each step, input feeding."""
    defaults = dict(decoder="luong", cell="lstm", bidirectional=False, layers=2, hidden_dim=512, emb_dim=256, attention="general")
    return RNNSeq2Seq(make_config(RNNSeq2SeqConfig, defaults, kw))


register_pretrained(
    Pretrained(
        name="seq2seq_lstm.multi30k",
        hub_id="zoo-models/seq2seq_lstm.multi30k",
        sha256="73a981bb1949046dd065e70468196ffe41cf9b3a3c4914df625e7c98352d5bd3",
        params=9_543_744,
        metrics={"sacrebleu/greedy": 19.1, "bleu_lc/greedy": 19.23, "sacrebleu/beam4": 21.0, "bleu_lc/beam4": 21.13,
                 "ppl": 14.5},
        recipe="configs/seq2seq_lstm.multi30k.yaml",
        data=MULTI30K_DE_EN,
        license=ZOO_LICENSE,
        description="Sutskever-style 2x512 LSTM encoder-decoder, source reversed; test sacreBLEU 19.10 greedy / 21.00 beam 4",
    )
)


register_pretrained(
    Pretrained(
        name="seq2seq_bahdanau.multi30k",
        hub_id="zoo-models/seq2seq_bahdanau.multi30k",
        sha256="dce0a499c4ae746084b9cf56528b11087dfd87b1848e511a9a982c4f5e71799e",
        params=9_144_896,
        metrics={"sacrebleu/greedy": 37.01, "bleu_lc/greedy": 37.26, "sacrebleu/beam4": 38.22, "bleu_lc/beam4": 38.47,
                 "ppl": 7.75},
        recipe="configs/seq2seq_bahdanau.multi30k.yaml",
        data=MULTI30K_DE_EN,
        license=ZOO_LICENSE,
        description="Bahdanau attention: bidirectional GRU encoder, additive attention; test sacreBLEU 37.01 greedy / 38.22 beam 4",
    )
)


register_pretrained(
    Pretrained(
        name="seq2seq_luong.multi30k",
        hub_id="zoo-models/seq2seq_luong.multi30k",
        sha256="f6903a416f89b6a8cd0c72d16252c2d601cea616287eacb9e7a97776c4d94a0e",
        params=9_324_608,
        metrics={"sacrebleu/greedy": 37.24, "bleu_lc/greedy": 37.47, "sacrebleu/beam4": 38.79, "bleu_lc/beam4": 39.01,
                 "ppl": 6.96},
        recipe="configs/seq2seq_luong.multi30k.yaml",
        data=MULTI30K_DE_EN,
        license=ZOO_LICENSE,
        description="Luong global attention ('general'), 2x448 LSTMs, input feeding; test sacreBLEU 37.24 greedy / 38.79 beam 4",
    )
)
