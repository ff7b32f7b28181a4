"""Pure torch building blocks shared by the models: attention, positions, decoding."""

from zoo.nn.attention import KVCache, MultiHeadAttention, causal_mask
from zoo.nn.decoding import beam_search, greedy_search, reorder
from zoo.nn.positional import SinusoidalPositions

__all__ = [
    "KVCache",
    "MultiHeadAttention",
    "causal_mask",
    "SinusoidalPositions",
    "greedy_search",
    "beam_search",
    "reorder",
]
