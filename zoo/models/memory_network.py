"""End-to-end memory networks: Sukhbaatar, Szlam, Weston & Fergus 2015, "End-To-End Memory
Networks" (arXiv 1503.08895).

A story is written into a memory, one slot a sentence; a question is embedded as the state
``u``; each of K hops reads the memory with soft attention and adds what it read to the
state; the last state is scored against the vocabulary:

    m_i = sum_j l_j * A x_ij + T_A(i)          input memory of hop k (section 2.1, 4.1)
    c_i = sum_j l_j * C x_ij + T_C(i)          output memory of hop k
    p_i = softmax_i(u . m_i)                   attention over the slots
    u  <- u + sum_i p_i c_i                    (layer-wise tying: H u + sum_i p_i c_i)
    answer = softmax(W u)

``l_j`` is the position encoding (``encoding="position"``, section 4.1:
l_kj = (1 - j/J) - (k/d)(1 - 2j/J), for word j of a sentence of J words and embedding
dimension k of d; ``sentence_length`` > 0 sets one J for every sentence and question, as
the authors' code does with the longest sentence's length), the authors' code's form of it
(``"position_centred"``: l_kj = 1 + 4 (k - (d+1)/2)(j - (J+1)/2) / (dJ), centred on 1 and
about twice the paper's weights) or 1 (``"bow"``, a bag of words); ``T_A``, ``T_C`` are learned temporal
encodings of the slot, slot 0 the most recent sentence. Two ways of tying the weights
(section 2.2): ``adjacent`` (A of hop k+1 is C of hop k, the answer matrix W^T is the last
C and the question embedding B is the first A: K + 1 matrices in all) and ``layerwise``
(one A and one C for every hop, separate B and W, and a linear map H of the state between
hops). Every embedding is drawn from N(0, 0.1); the padding word's row is zero and stays
zero (the lookups never train it, and its answer score is -inf, so the output layer never
does either). ``linear=True`` drops the softmax of every hop (the paper's *linear start*).

Shapes: B batch, M memory slots, J words a sentence, Jq words a question, d the embedding
width, V the vocabulary. A story is ``(B, M, J)`` word ids with slot 0 the most recent
sentence; slots of padding only hold no memory.

The language-model form of section 5 (:class:`MemN2NLM`) reads the last ``memory_size``
words one a slot, from a constant query of 0.1, with a ReLU on half of the state's units
and layer-wise tying.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from zoo.models.base import CausalLM, check_at_least, check_vocab, make_config
from zoo.nn.source_attention import DotAttention
from zoo.registry import BABI, BABI_LICENSE, PTB, PTB_LICENSE, Pretrained, register_model, register_pretrained

ENCODINGS = ("position", "position_centred", "bow")
TYINGS = ("adjacent", "layerwise")
_PAPER = "Sukhbaatar et al. 2015, End-To-End Memory Networks"


@dataclass
class MemN2NConfig:
    vocab_size: int = 200
    pad_id: int = 0
    dim: int = 50  # d, the width of every embedding
    hops: int = 3  # K
    memory_size: int = 50  # slots: the most recent sentences a story keeps
    encoding: str = "position"  # position | position_centred | bow: how a sentence's words add up to its vector
    temporal: bool = True  # learned temporal encodings T_A, T_C of the slots
    tying: str = "adjacent"  # adjacent | layerwise
    init_std: float = 0.1
    sentence_length: int = 0  # J of the position encoding: 0, each sentence's own length; > 0, this one for all
    read_empty: bool = False  # the softmax also covers the empty slots up to memory_size (score 0, read 0)


def _positions(lengths: Tensor, width: int, dim: int) -> tuple[Tensor, Tensor, Tensor]:
    """J (..., 1, 1) the sentence lengths, j (width, 1) the words and k (1, dim) the dimensions, from 1."""
    J = lengths.clamp(min=1).to(torch.float32)[..., None, None]
    j = torch.arange(1, width + 1, dtype=torch.float32, device=lengths.device)[:, None]
    k = torch.arange(1, dim + 1, dtype=torch.float32, device=lengths.device)[None, :]
    return J, j, k


def position_encoding(lengths: Tensor, width: int, dim: int) -> Tensor:
    """l_kj of section 4.1 for sentences of ``lengths`` (...) words: weights (..., width, dim).

    l_kj = (1 - j/J) - (k/d)(1 - 2j/J), j = 1..J the word, k = 1..d the dimension, J the
    sentence's own length. Positions past a sentence's end get weights too; they multiply
    the padding word's zero embedding.
    """
    J, j, k = _positions(lengths, width, dim)
    return (1 - j / J) - (k / dim) * (1 - 2 * j / J)


def centred_position_encoding(lengths: Tensor, width: int, dim: int) -> Tensor:
    """The authors' code's position weights (..., width, dim): 1 + 4 (k - (d+1)/2)(j - (J+1)/2) / (dJ).

    Centred on 1 where the paper's l_kj is centred on 1/2, and otherwise about twice it.
    """
    J, j, k = _positions(lengths, width, dim)
    return 1 + 4 * (k - (dim + 1) / 2) * (j - (J + 1) / 2) / (dim * J)


POSITION_WEIGHTS = {"position": position_encoding, "position_centred": centred_position_encoding}


class SentenceEncoder(nn.Module):
    """Word ids (..., J) -> one vector a sentence (..., d): the (position-weighted) sum of the word embeddings.

    ``length`` 0 weighs each sentence's words by its own length; ``length`` > 0 by that one
    length for every sentence (none may be longer).
    """

    def __init__(self, encoding: str, pad_id: int, length: int = 0) -> None:
        super().__init__()
        self.pad_id, self.length = pad_id, length
        self.weights = POSITION_WEIGHTS.get(encoding)  # None: a bag of words

    def forward(self, embed: nn.Embedding, words: Tensor) -> Tensor:
        x = embed(words)  # (..., J, d)
        if self.weights is not None:
            lengths = words.ne(self.pad_id).sum(-1)
            if self.length:
                longest = int(lengths.max()) if lengths.numel() else 0
                if longest > self.length:
                    raise ValueError(f"a sentence of {longest} words is longer than sentence_length={self.length}; "
                                     f"set sentence_length to at least {longest}, or to 0 for each sentence's own length")
                lengths = torch.full_like(lengths, self.length)
            x = x * self.weights(lengths, words.size(-1), x.size(-1)).to(x.dtype)
        return x.sum(-2)


def _embedding(vocab_size: int, dim: int, pad_id: int, std: float) -> nn.Embedding:
    emb = nn.Embedding(vocab_size, dim, padding_idx=pad_id)
    nn.init.normal_(emb.weight, 0.0, std)
    with torch.no_grad():
        emb.weight[pad_id].zero_()
    return emb


def _never_padding(logits: Tensor, pad_id: int) -> Tensor:
    """``logits`` with the padding word's column at -inf: never predicted, and no gradient to its row."""
    return logits.index_fill(-1, torch.tensor([pad_id], device=logits.device), float("-inf"))


def _temporal(slots: int, dim: int, std: float) -> nn.Parameter:
    return nn.Parameter(torch.randn(slots, dim) * std)


class MemN2N(nn.Module):
    """The memory network of section 2 for question answering.

    ``embed`` holds the word embeddings and ``temporal`` the slot encodings; which of them
    plays A, C, B and W at each hop is the tying's: :meth:`A`, :meth:`C`, :meth:`T_A`,
    :meth:`T_C`, :attr:`B` and :meth:`answer_weight` name them.
    """

    def __init__(self, config: MemN2NConfig) -> None:
        super().__init__()
        c = self.config = config
        if c.encoding not in ENCODINGS:
            raise ValueError(f"unknown encoding {c.encoding!r}; choose one of {', '.join(ENCODINGS)}")
        if c.tying not in TYINGS:
            raise ValueError(f"unknown tying {c.tying!r}; choose one of {', '.join(TYINGS)}")
        check_vocab(c, "vocab_size")
        check_at_least(c, "dim", "hops", "memory_size")
        check_at_least(c, "sentence_length", minimum=0)
        n = c.hops + 1 if c.tying == "adjacent" else 3  # adjacent: E_0..E_K; layerwise: B, A, C
        self.embed = nn.ModuleList(_embedding(c.vocab_size, c.dim, c.pad_id, c.init_std) for _ in range(n))
        slots = c.hops + 1 if c.tying == "adjacent" else 2
        self.temporal = nn.ParameterList(_temporal(c.memory_size, c.dim, c.init_std) for _ in range(slots)) \
            if c.temporal else None
        if c.tying == "layerwise":
            self.H = nn.Linear(c.dim, c.dim, bias=False)
            self.out = nn.Linear(c.dim, c.vocab_size, bias=False)
            nn.init.normal_(self.H.weight, 0.0, c.init_std)
            nn.init.normal_(self.out.weight, 0.0, c.init_std)
            with torch.no_grad():
                self.out.weight[c.pad_id].zero_()  # never trained: the padding word's score is -inf
        else:
            self.H = self.out = None
        self.sentence = SentenceEncoder(c.encoding, c.pad_id, c.sentence_length)
        self.attention = DotAttention(c.dim, c.dim)  # p = softmax(u . m), o = sum p c

    def config_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self.config)

    # -- the roles of the shared matrices -----------------------------------------------
    def _in(self, k: int) -> int:  # index of hop k's input memory (A_k, T_A^k); hops count from 0
        return k if self.config.tying == "adjacent" else 1

    def _out(self, k: int) -> int:  # index of hop k's output memory (C_k, T_C^k)
        return k + 1 if self.config.tying == "adjacent" else 2

    def A(self, k: int) -> nn.Embedding:
        return self.embed[self._in(k)]

    def C(self, k: int) -> nn.Embedding:
        return self.embed[self._out(k)]

    def _time(self, index: int) -> int:  # the temporal encoding that goes with embedding ``index``
        return index if self.config.tying == "adjacent" else index - 1

    def T_A(self, k: int) -> nn.Parameter | None:
        return None if self.temporal is None else self.temporal[self._time(self._in(k))]

    def T_C(self, k: int) -> nn.Parameter | None:
        return None if self.temporal is None else self.temporal[self._time(self._out(k))]

    @property
    def B(self) -> nn.Embedding:
        return self.embed[0]

    def answer_weight(self) -> Tensor:
        """W (V, d): the last C's embedding (adjacent), or a matrix of its own (layer-wise)."""
        return self.C(self.config.hops - 1).weight if self.out is None else self.out.weight

    # -- forward ----------------------------------------------------------------------
    def memory(self, index: int, story: Tensor, time: Tensor) -> Tensor:
        """Embedding ``index``'s memory vectors of a story (B, M, J) at slot times (B, M): (B, M, d)."""
        m = self.sentence(self.embed[index], story)
        if self.temporal is not None:
            m = m + self.temporal[self._time(index)][time]
        return m

    def forward(self, story: Tensor, query: Tensor, time: Tensor | None = None,
                linear: bool = False) -> tuple[Tensor, Tensor]:
        """story (B, M, J) and query (B, Jq) word ids -> answer logits (B, V) and attention (B, K, M).

        Slot 0 of the story is its most recent sentence; only the first ``memory_size`` slots
        are read. ``time`` (B, M) gives each slot's temporal index (by default its slot;
        training with random noise spreads them out), clipped to ``memory_size - 1``.
        ``linear`` drops the softmax of every hop (linear start): the attention is then
        the raw scores, zero on empty slots. The padding word's logit is -inf.

        With ``read_empty`` the memory always has ``memory_size`` slots and the softmax
        covers the empty ones too, as the authors' code does: their memory vectors are zero
        (no temporal encoding), so each scores 0 and reads nothing, and the attention on the
        real slots can add up to less than 1.
        """
        c = self.config
        story = story[:, : c.memory_size]
        if time is None:
            time = torch.arange(story.size(1), device=story.device).expand(story.size(0), -1)
        time = time[:, : story.size(1)].clamp(max=c.memory_size - 1)
        if c.read_empty and story.size(1) < c.memory_size:
            story = F.pad(story, (0, 0, 0, c.memory_size - story.size(1)), value=c.pad_id)
            time = F.pad(time, (0, c.memory_size - time.size(1)))
        pad = story.eq(c.pad_id).all(-1)  # (B, M) slots that hold no memory
        if not c.read_empty:
            pad = pad & ~pad.all(-1, keepdim=True)  # an empty story reads its empty slots rather than nothing
        u = self.sentence(self.B, query)  # (B, d)
        memories: dict[int, Tensor] = {}  # each embedding's memory, computed once (adjacent: C_k is A_k+1)

        def mem(index: int) -> Tensor:
            if index not in memories:
                m = self.memory(index, story, time)
                memories[index] = m.masked_fill(pad[..., None], 0.0) if c.read_empty else m
            return memories[index]

        weights = []
        for k in range(c.hops):
            m, cm = mem(self._in(k)), mem(self._out(k))  # (B, M, d)
            if linear:
                p = self.attention.score(u[:, None], m).masked_fill(pad[:, None], 0.0)  # (B, 1, M)
                o = p @ cm
            else:
                o, p = self.attention(u[:, None], m, cm, None if c.read_empty else pad)
            u = (u if self.H is None else self.H(u)) + o[:, 0]
            weights.append(p[:, 0])
        logits = F.linear(u, self.answer_weight())  # (B, V)
        return _never_padding(logits, c.pad_id), \
            torch.stack(weights, 1)


# -- the language model of section 5 -----------------------------------------------------
@dataclass
class MemN2NLMConfig:
    vocab_size: int = 10_000
    pad_id: int = 0
    dim: int = 150  # d
    hops: int = 6  # K
    memory_size: int = 100  # the last words read, one a slot
    relu_units: int = 75  # units of the state put through a ReLU after each hop (the paper: half of d)
    query: float = 0.1  # the constant query of every position
    init_std: float = 0.05
    dropout: float = 0.0  # on the embedded words and on the last state (not in the paper)
    tie_output: bool = False  # W = C: the output layer scores words with the output memory's embedding (not in the paper)
    max_len: int = 100_000  # no position limit; this only bounds sampling


class MemN2NLM(CausalLM):
    """Section 5: a word-level language model reading its own recent past.

    Position t attends over the ``memory_size`` words before and including it (slot 0 the
    word itself), each embedded alone with its temporal encoding; the state starts as the
    constant 0.1 in every unit, and after each hop u <- H u + o with a ReLU on the first
    ``relu_units`` units. Layer-wise tying (one A, one C, one H for every hop); the output
    layer W is its own, or with ``tie_output`` the output embedding C itself (as adjacent
    tying's W^T = C_K in section 2; the paper's LM keeps them apart). ``dropout`` (0 in the
    paper) drops units of the embedded words and of the state read by W.
    tokens (B, T) -> logits (B, T, V).
    """

    def __init__(self, config: MemN2NLMConfig) -> None:
        super().__init__()
        c = self.config = config
        check_vocab(c, "vocab_size")
        check_at_least(c, "dim", "hops", "memory_size")
        if not 0 <= c.relu_units <= c.dim:
            raise ValueError(f"relu_units must be between 0 and dim={c.dim}, got {c.relu_units}")
        if not 0.0 <= c.dropout < 1.0:
            raise ValueError(f"dropout is a probability in [0, 1), got {c.dropout}")
        self.A = _embedding(c.vocab_size, c.dim, c.pad_id, c.init_std)
        self.C = _embedding(c.vocab_size, c.dim, c.pad_id, c.init_std)
        self.T_A = _temporal(c.memory_size, c.dim, c.init_std)
        self.T_C = _temporal(c.memory_size, c.dim, c.init_std)
        self.drop = nn.Dropout(c.dropout)
        self.H = nn.Linear(c.dim, c.dim, bias=False)
        self.out = None if c.tie_output else nn.Linear(c.dim, c.vocab_size, bias=False)
        nn.init.normal_(self.H.weight, 0.0, c.init_std)
        if self.out is not None:
            nn.init.normal_(self.out.weight, 0.0, c.init_std)

    def output_weight(self) -> Tensor:
        """W (V, d): the output layer's own, or C's with ``tie_output``."""
        return self.C.weight if self.out is None else self.out.weight

    def forward(self, tokens: Tensor, history: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """tokens (B, T) -> logits (B, T, V) and the last ``memory_size - 1`` tokens (the next chunk's history).

        ``history`` (B, N) are the tokens before this chunk (a stream read in chunks); none, or
        fewer than ``memory_size - 1``: padding before them.

        Every word of the chunk and its history is embedded once, (B, L, d) with L = N - 1 + T.
        Position t reads the band seq[t .. t + N - 1] of that sequence, so a hop scores the
        state against all L embeddings in one product (B, T, L) and takes the band as a
        strided view (B, T, N), oldest slot first; the read is the band's weights scattered
        back to (B, T, L) times the output embeddings. No (B, T, N, d) tensor is built.
        """
        c = self.config
        b, t = tokens.shape
        n, keep = c.memory_size, c.memory_size - 1
        if history is None:
            history = tokens.new_full((b, 0), c.pad_id)
        history = history[:, max(history.size(1) - keep, 0):] if keep else history[:, :0]
        if history.size(1) < keep:
            history = F.pad(history, (keep - history.size(1), 0), value=c.pad_id)
        seq = torch.cat([history, tokens], 1)  # (B, L)
        length = seq.size(1)
        band = dict(size=(b, t, n), stride=(t * length, length + 1, 1))  # [b, t, j] = [b, t, t + j] of (B, T, L)
        pad = seq.eq(c.pad_id).unfold(1, n, 1).clone()  # (B, T, N), oldest slot first
        pad[..., -1] = False  # the word itself is always read (a padding position's output is ignored)
        m, cm = self.drop(self.A(seq)), self.drop(self.C(seq))  # (B, L, d)
        keys, t_a, t_c = m.transpose(1, 2), self.T_A.flip(0).T, self.T_C.flip(0)  # temporal: oldest slot first
        u = m.new_full((b, t, c.dim), c.query)
        for _ in range(c.hops):
            scores = (u @ keys).as_strided(**band) + u @ t_a  # (B, T, N)
            p = scores.masked_fill(pad, float("-inf")).float().softmax(-1).to(u.dtype)
            spread = torch.as_strided_scatter(p.new_zeros(b, t, length), p, **band)  # (B, T, L)
            u = self.H(u) + spread @ cm + p @ t_c
            if c.relu_units:
                u = torch.cat([F.relu(u[..., : c.relu_units]), u[..., c.relu_units :]], -1)
        logits = F.linear(self.drop(u), self.output_weight())
        if self.out is None:  # C's padding row stays zero
            logits = _never_padding(logits, c.pad_id)
        return logits, seq[:, length - keep:]

    @staticmethod
    def detach_state(state: Any) -> Any:
        return state  # token ids: nothing to cut

    def init_state(self, batch_size: int, device: Any = None) -> dict[str, Any]:
        return {"history": None}

    def step(self, tokens: Tensor, state: dict[str, Any]) -> Tensor:
        logits, state["history"] = self(tokens, state["history"])
        return logits[:, -1]


# -- registered sizes ---------------------------------------------------------------------
@register_model(task="qa", config=MemN2NConfig, paper=_PAPER)
def memn2n(**kw: Any) -> MemN2N:
    """3 hops, d=50, position encoding, temporal encoding, adjacent tying: the paper's joint bAbI model."""
    return MemN2N(make_config(MemN2NConfig, {}, kw))


@register_model(task="qa", config=MemN2NConfig, paper=_PAPER)
def memn2n_tiny(**kw: Any) -> MemN2N:
    """2 hops, d=8, 10 slots: for tests and smoke runs."""
    return MemN2N(make_config(MemN2NConfig, dict(dim=8, hops=2, memory_size=10), kw))


@register_model(task="lm", config=MemN2NLMConfig, paper=_PAPER)
def memn2n_lm(**kw: Any) -> MemN2NLM:
    """Section 5's Penn Treebank model: 6 hops, d=150, 100 words of memory, ReLU on half the units."""
    return MemN2NLM(make_config(MemN2NLMConfig, {}, kw))


register_pretrained(
    Pretrained(
        name="memn2n.babi",
        hub_id="zoo-models/memn2n.babi",
        sha256="6293047bb0a0fe861286ad783f5d8cbfa1fecbcd90afec32811848bdc8a52e87",
        params=45_800,
        metrics={"mean_error": 12.1, "failed_tasks": 8, "error/task_1": 0.0, "error/task_2": 13.2,
                 "error/task_3": 27.3, "error/task_4": 1.6, "error/task_5": 11.0, "error/task_6": 2.2,
                 "error/task_7": 16.7, "error/task_8": 9.3, "error/task_9": 1.6, "error/task_10": 4.2,
                 "error/task_11": 1.2, "error/task_12": 0.0, "error/task_13": 0.2, "error/task_14": 4.0,
                 "error/task_15": 0.2, "error/task_16": 3.1, "error/task_17": 45.4, "error/task_18": 9.7,
                 "error/task_19": 91.2, "error/task_20": 0.0},
        recipe="configs/memn2n.babi.yaml",
        data=BABI,
        license=BABI_LICENSE,
        description="MemN2N, 3 hops, PE LS RN, joint on the 20 bAbI tasks (1k), trained as the authors' code "
                    "trains it (softmax over the empty slots too, its position weights, 30 epochs of linear "
                    "start); mean test error 12.1%, 8 tasks failed (paper: 12.4%, 11)",
    )
)


register_pretrained(
    Pretrained(
        name="memn2n_lm.ptb",
        hub_id="zoo-models/memn2n_lm.ptb",
        sha256="a66b5a1336610bac2b7f8e79b14b3dad23a87f07b66b6a7a6a2796f763d6290e",
        params=6_211_200,
        metrics={"val_ppl": 117.19, "ppl": 108.45},
        recipe="configs/memn2n_lm.ptb.yaml",
        data=PTB,
        license=PTB_LICENSE,
        description="MemN2N language model of Penn Treebank (words): 7 hops, d=300, the last 200 words, output "
                    "layer tied to C; AdamW, dropout 0.4, 24 epochs: test perplexity 108.45 over 82,430 tokens "
                    "(paper: 111)",
    )
)
