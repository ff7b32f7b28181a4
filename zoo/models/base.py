"""What every network in ``zoo.models`` shares: a config dataclass and, for
encoder-decoders, the three methods that shared decoding calls."""

from __future__ import annotations

import dataclasses
from typing import Any, TypeVar

from torch import Tensor, nn

C = TypeVar("C")


def make_config(config_cls: type[C], defaults: dict[str, Any], overrides: dict[str, Any]) -> C:
    """``config_cls(**defaults, **overrides)`` with a clear error for a misspelt argument."""
    names = {f.name for f in dataclasses.fields(config_cls)}
    unknown = sorted(set(overrides) - names)
    if unknown:
        raise TypeError(
            f"{config_cls.__name__} has no argument(s) {', '.join(unknown)}; valid ones: {', '.join(sorted(names))}"
        )
    return config_cls(**{**defaults, **overrides})


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

    def init_state(self, batch_size: int, device: Any = None) -> dict[str, Any]:
        raise NotImplementedError

    def step(self, tokens: Tensor, state: dict[str, Any]) -> Tensor:
        raise NotImplementedError
