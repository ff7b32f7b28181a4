"""Metrics, computed the same way for every model and every table.

* ``TokenNLL``: mean negative log-likelihood per target token over an evaluation (a
  torchmetrics ``Metric``, so it sums correctly across batches and processes);
  exp of it is the perplexity. Every task, neural or counted, feeds it the log-probability
  of each target token.

* ``sacrebleu``: cased BLEU on detokenised output against the raw references with the
  13a tokeniser: the number to quote.
* ``bleu_lc``: lowercased BLEU on 13a-tokenised text, the closest match to the
  Multi30k figures usually published (computed on lowercased, tokenised text).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor
from torchmetrics import Metric


class TokenNLL(Metric):
    """Mean negative log-likelihood per token; ``perplexity()`` is exp of it."""

    full_state_update = False
    higher_is_better = False

    def __init__(self) -> None:
        super().__init__()
        self.add_state("total", torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, logprobs: Tensor, mask: Tensor) -> None:
        """logprobs (B, T) of the targets; mask (B, T) True at real (non-padding) targets."""
        self.total += -(logprobs.double() * mask).sum()
        self.count += mask.sum()

    def compute(self) -> Tensor:
        return (self.total / self.count.clamp(min=1)).float()


def bleu(hypotheses: Sequence[str], references: Sequence[str], lowercase: bool = False) -> float:
    import sacrebleu

    if len(hypotheses) != len(references):
        raise ValueError(f"{len(hypotheses)} hypotheses but {len(references)} references")
    return sacrebleu.corpus_bleu(list(hypotheses), [list(references)], tokenize="13a", lowercase=lowercase).score


def translation_scores(hypotheses: Sequence[str], references: Sequence[str]) -> dict[str, float]:
    """Both BLEU figures, rounded to two decimals."""
    return {
        "sacrebleu": round(bleu(hypotheses, references), 2),
        "bleu_lc": round(bleu(hypotheses, references, lowercase=True), 2),
    }
