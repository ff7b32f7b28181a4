"""What every network in ``zoo.models`` shares: a config dataclass and, for
encoder-decoders, the three methods that shared decoding calls."""

from __future__ import annotations

import dataclasses
import numbers
import types
import typing
from typing import Any, TypeVar

import torch
from torch import Tensor, nn

C = TypeVar("C")


def check_types(owner: str, hints: dict[str, Any], values: dict[str, Any]) -> None:
    """One-line TypeError for a value of the wrong plain type (int, float, bool, str, or None where allowed).

    Only plain annotations are checked; anything richer (tuples, dicts) is left to its user.
    A float accepts an int; an int does not accept a bool or a float.
    """
    for name, value in values.items():
        hint = hints.get(name)
        args = typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, types.UnionType) else (hint,)
        if value is None and type(None) in args:
            continue
        plain = [a for a in args if a in _PLAIN]
        if not plain or len(plain) != len([a for a in args if a is not type(None)]):
            continue  # not a plain annotation: not ours to check
        if any(_PLAIN[a](value) for a in plain):
            continue
        want = " or ".join(_NAMES[a] for a in plain)
        hint_yaml = " (YAML reads 1e-4 as text: write 1.0e-4)" if float in plain and _numeric(value) else ""
        raise TypeError(f"{owner}: {name} must be {want}, got {value!r} ({type(value).__name__}){hint_yaml}")


_PLAIN: dict[Any, Any] = {  # numbers.* so that numpy's integers and floats pass too
    int: lambda v: isinstance(v, numbers.Integral) and not isinstance(v, bool),
    float: lambda v: isinstance(v, numbers.Real) and not isinstance(v, bool),
    bool: lambda v: isinstance(v, bool),
    str: lambda v: isinstance(v, str),
}
_NAMES = {int: "a whole number", float: "a number", bool: "true or false", str: "a string"}


def _numeric(value: Any) -> bool:
    """Whether ``value`` is a string that reads as a number (``"1e-4"``, which YAML leaves as text)."""
    if not isinstance(value, str):
        return False
    try:
        float(value)
    except ValueError:
        return False
    return True


def make_config(config_cls: type[C], defaults: dict[str, Any], overrides: dict[str, Any]) -> C:
    """``config_cls(**defaults, **overrides)`` with a clear error for a misspelt argument or a wrong type."""
    names = {f.name for f in dataclasses.fields(config_cls)}
    unknown = sorted(set(overrides) - names)
    if unknown:
        raise TypeError(
            f"{config_cls.__name__} has no argument(s) {', '.join(unknown)}; valid ones: {', '.join(sorted(names))}"
        )
    check_types(config_cls.__name__, typing.get_type_hints(config_cls), overrides)
    return config_cls(**{**defaults, **overrides})


# -- impossible settings: one line each, before torch meets them ----------------------
def check_at_least(config: Any, *names: str, minimum: int = 1) -> None:
    """Each of ``names`` in ``config`` must be at least ``minimum``."""
    for name in names:
        value = getattr(config, name)
        if value < minimum:
            raise ValueError(f"{name} must be at least {minimum}, got {value}")


def check_whole(name: str, value: Any, minimum: int = 1, note: str = "") -> None:
    """An argument that counts something (beam size, new tokens) must be a whole number >= ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ValueError(f"{name} must be a whole number of {minimum} or more{note}, got {value!r}")


def check_dropout(config: Any, *names: str) -> None:
    """Each of ``names`` (dropout probabilities) must lie in [0, 1)."""
    for name in names:
        value = getattr(config, name)
        if not 0.0 <= value < 1.0:
            raise ValueError(f"{name} must be in [0, 1), got {value}")


def check_vocab(config: Any, *names: str) -> None:
    """Vocabulary sizes ``names`` must be at least 1 and ``pad_id`` an id inside each of them."""
    check_at_least(config, *names)
    pad = getattr(config, "pad_id", None)
    for name in names:
        size = getattr(config, name)
        if pad is not None and not 0 <= pad < size:
            raise ValueError(f"pad_id={pad} is not an id of a vocabulary of {size} tokens ({name}); use an id in 0..{size - 1}")


def check_token_ids(ids: Any, vocab_size: int, what: str = "token ids") -> None:
    """``ids`` must be an integer tensor (B, T) of ids in ``0 .. vocab_size - 1``.

    One min/max over the tensor (a device sync on a GPU): call it from public inference
    entry points, not from the training loop.
    """
    if not isinstance(ids, Tensor):
        raise TypeError(f"{what} must be a torch tensor of token ids (B, T), got {type(ids).__name__}")
    if ids.dtype.is_floating_point or ids.dtype.is_complex or ids.dtype == torch.bool:
        raise TypeError(f"{what} must be integer token ids, got a {ids.dtype} tensor; encode text with the model's tokenizer")
    if ids.dim() != 2:
        hint = "; add a batch axis with ids[None]" if ids.dim() == 1 else ""
        raise ValueError(f"{what} must be (batch, length), got shape {tuple(ids.shape)}{hint}")
    if ids.numel() == 0:
        raise ValueError(f"{what} are empty (shape {tuple(ids.shape)}); give at least one token")
    lo, hi = torch.stack(torch.aminmax(ids)).tolist()
    if lo < 0 or hi >= vocab_size:
        bad = lo if lo < 0 else hi
        raise ValueError(
            f"{what} hold id {bad}, outside the model's vocabulary 0..{vocab_size - 1}; "
            "encode text with the model's own tokenizer (model.tokenizers)"
        )


class EncoderDecoder(nn.Module):
    """Base of the sequence-to-sequence networks.

    ``forward(src, tgt_in)`` maps source (B, S) and shifted target (B, T) token ids to
    logits (B, T, V) for training; :mod:`zoo.nn.decoding` drives ``encode``,
    ``init_state`` and ``decode_step`` for generation.
    """

    config: Any
    has_attention: bool = False  # whether attention_maps can show what the decoder looked at

    def config_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self.config)

    @property
    def max_positions(self) -> int:
        return self.config.max_len

    def encode(self, src: Tensor) -> dict[str, Any]:
        raise NotImplementedError

    def init_state(self, enc: dict[str, Any]) -> dict[str, Any]:
        raise NotImplementedError

    def decode_step(self, tokens: Tensor, enc: dict[str, Any], state: dict[str, Any]) -> Tensor:
        raise NotImplementedError

    def attention_maps(self, src: Tensor, tgt_in: Tensor) -> dict[str, Tensor]:
        """Named source-attention weights (B, heads, T, S) when teacher-forcing ``tgt_in``."""
        raise ValueError(f"{type(self).__name__} has no attention over the source to show; pick a model with attention (zoo list)")


class CausalLM(nn.Module):
    """Base of the language models: next-token scores for a sequence, and a stepping API.

    ``score(tokens, targets)`` gives log P(target_t | tokens_<=t) as (B, T): the one number
    every LM's perplexity is computed from, neural or counted. Generation calls
    ``init_state(batch_size)`` and then ``step(tokens (B, 1), state) -> logits (B, V)``.
    """

    config: Any
    counts_only: bool = False  # True for count-based models (no optimiser)

    def config_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self.config)

    @property
    def max_positions(self) -> int:
        return self.config.max_len

    def score(self, tokens: Tensor, targets: Tensor) -> Tensor:
        logits = self(tokens)
        logits = logits[0] if isinstance(logits, tuple) else logits
        return logits.float().log_softmax(-1).gather(-1, targets[..., None]).squeeze(-1)

    def score_stream(self, tokens: Tensor, targets: Tensor, state: Any = None) -> tuple[Tensor, Any]:
        """``score`` of one chunk of a stream after the ``state`` the chunk before it left (None
        at the start), and the state for the next chunk. A recurrent net (one whose forward
        returns ``(logits, state)``) carries its state; any other scores each chunk alone."""
        out = self(tokens) if state is None else self(tokens, state)
        logits, state = out if isinstance(out, tuple) else (out, None)
        return logits.float().log_softmax(-1).gather(-1, targets[..., None]).squeeze(-1), state

    def init_state(self, batch_size: int, device: Any = None) -> dict[str, Any]:
        raise NotImplementedError

    def step(self, tokens: Tensor, state: dict[str, Any]) -> Tensor:
        raise NotImplementedError
