"""Pure torch building blocks shared by the models: attention, positions, decoding."""

from zoo.nn.attention import KVCache, MultiHeadAttention, causal_mask
from zoo.nn.local import Local1DPattern, Local2DPattern, LocalSelfAttention
from zoo.nn.relative import RelativeSelfAttention
from zoo.nn.decoding import beam_search, greedy_search, reorder
from zoo.nn.positional import SinusoidalPositions

__all__ = [
    "KVCache",
    "MultiHeadAttention",
    "RelativeSelfAttention",
    "LocalSelfAttention",
    "Local1DPattern",
    "Local2DPattern",
    "causal_mask",
    "SinusoidalPositions",
    "greedy_search",
    "beam_search",
    "reorder",
]
