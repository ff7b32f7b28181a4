"""Recurrent language models: vanilla RNN (Elman 1990), GRU (Cho et al. 2014), LSTM
(Hochreiter & Schmidhuber 1997), as regularised by Zaremba, Sutskever, Vinyals 2014
(dropout between layers, not on the recurrence) and with tied input/output embeddings
(Press & Wolf 2017; Inan et al. 2017).

The state (B, L, H) may be carried from one batch to the next for truncated
back-propagation through time over long streams.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from zoo.nn.dropout import Dropout
from zoo.models.base import CausalLM, check_at_least, check_vocab, make_config
from zoo.registry import MULTI30K_EN, PTB, PTB_LICENSE, ZOO_LICENSE, Pretrained, register_model, register_pretrained

CELLS = {"lstm": nn.LSTM, "gru": nn.GRU, "rnn": nn.RNN}


@dataclass
class RNNLMConfig:
    vocab_size: int = 8000
    pad_id: int = 0
    cell: str = "lstm"  # lstm | gru | rnn
    emb_dim: int = 512
    hidden_dim: int = 512
    layers: int = 2
    dropout: float = 0.5
    tie_embeddings: bool = True  # output layer = input embedding (projects H -> E when they differ)
    max_len: int = 100_000  # recurrent: no position limit; this only bounds sampling


class RNNLM(CausalLM):
    def __init__(self, config: RNNLMConfig) -> None:
        super().__init__()
        if config.cell not in CELLS:
            raise ValueError(f"unknown cell {config.cell!r}; choose one of {', '.join(CELLS)}")
        if not 0.0 <= config.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {config.dropout}")
        check_vocab(config, "vocab_size")
        check_at_least(config, "layers", "emb_dim", "hidden_dim")
        self.config = c = config
        self.embed = nn.Embedding(c.vocab_size, c.emb_dim, padding_idx=c.pad_id)
        self.drop = Dropout(c.dropout)
        self.rnn = CELLS[c.cell](c.emb_dim, c.hidden_dim, c.layers, batch_first=True, dropout=c.dropout if c.layers > 1 else 0.0)
        tied_proj = c.tie_embeddings and c.hidden_dim != c.emb_dim
        self.proj = nn.Linear(c.hidden_dim, c.emb_dim) if tied_proj else None
        self.out = nn.Linear(c.emb_dim if c.tie_embeddings else c.hidden_dim, c.vocab_size)
        nn.init.uniform_(self.embed.weight, -0.1, 0.1)
        if c.tie_embeddings:
            self.out.weight = self.embed.weight

    def forward(self, tokens: Tensor, state: Any = None) -> tuple[Tensor, Any]:
        """tokens (B, T) -> logits (B, T, V) and the final state (for the next chunk of a stream)."""
        h, state = self.rnn(self.drop(self.embed(tokens)), state)  # (B, T, H)
        h = self.drop(h)
        if self.proj is not None:
            h = self.proj(h)
        return self.out(h), state

    @staticmethod
    def detach_state(state: Any) -> Any:
        """Cut the graph between stream chunks (truncated BPTT)."""
        if state is None:
            return None
        return tuple(s.detach() for s in state) if isinstance(state, tuple) else state.detach()

    def init_state(self, batch_size: int, device: Any = None) -> dict[str, Any]:
        return {"rnn": None}

    def step(self, tokens: Tensor, state: dict[str, Any]) -> Tensor:
        logits, state["rnn"] = self(tokens, state["rnn"])
        return logits[:, -1]


@register_model(task="lm", config=RNNLMConfig, paper="Zaremba et al. 2014, Recurrent Neural Network Regularization")
def rnn_lm(**kw: Any) -> RNNLM:
    """2-layer LSTM LM, 512 units, tied embeddings, dropout 0.5 (cell: lstm | gru | rnn)."""
    return RNNLM(make_config(RNNLMConfig, {}, kw))


@register_model(task="lm", config=RNNLMConfig, paper="Elman 1990, Finding Structure in Time")
def rnn_lm_elman(**kw: Any) -> RNNLM:
    """A vanilla (tanh) RNN LM: the baseline the gated cells improved on."""
    return RNNLM(make_config(RNNLMConfig, dict(cell="rnn", layers=1), kw))


register_pretrained(
    Pretrained(
        name="rnn_lm.multi30k_en",
        hub_id="zoo-models/rnn_lm.multi30k_en",
        sha256="6c434eb33c2e747e3bd319671bc3262d27dbea0290ebfa794d2aabd9aa1d1ce2",
        params=8_306_496,
        metrics={"ppl": 37.61},
        recipe="configs/rnn_lm.multi30k_en.yaml",
        data=MULTI30K_EN,
        license=ZOO_LICENSE,
        description="2-layer LSTM LM of Multi30k English; test_2016_flickr perplexity 37.61 (n-gram: 49.08)",
    )
)

register_pretrained(
    Pretrained(
        name="rnn_lm.ptb",
        hub_id="zoo-models/rnn_lm.ptb",
        sha256="220f7f42c2a96cc4327bf749abbe0b422fe5a02dfb15bb8295d897b3165cb1b4",
        params=9_333_522,
        metrics={"val_ppl": 82.51, "ppl": 79.14},
        recipe="configs/rnn_lm.ptb.yaml",
        data=PTB,
        license=PTB_LICENSE,
        description="2-layer LSTM LM of Penn Treebank (words), Zaremba et al. 2014's medium recipe at 512 units, "
                    "tied; all 39 epochs: test perplexity 79.14 over 82,430 tokens (Zaremba medium: 82.7; ngram.ptb: 141.06)",
    )
)
