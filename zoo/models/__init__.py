"""Plain ``nn.Module`` networks, one file per family; importing registers their sizes.

Nothing here imports Lightning.
"""

from zoo.models import convs2s  # noqa: F401  (registers convs2s_*)
from zoo.models import image_transformer  # noqa: F401  (registers image_transformer_*)
from zoo.models import memory_network  # noqa: F401  (registers memn2n*)
from zoo.models import music_transformer  # noqa: F401  (registers music_transformer_*)
from zoo.models import ngram  # noqa: F401  (registers ngram)
from zoo.models import rnn_lm  # noqa: F401  (registers rnn_lm*)
from zoo.models import rnn_seq2seq  # noqa: F401  (registers seq2seq_*)
from zoo.models import transformer  # noqa: F401  (registers transformer_*)
from zoo.models.base import CausalLM, EncoderDecoder

__all__ = ["CausalLM", "EncoderDecoder"]
